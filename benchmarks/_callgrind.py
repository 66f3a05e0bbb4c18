"""Instruction counts per task under callgrind, for the ``b*_callgrind`` benchmarks.

A client runs in a child ``python -m <module> --client NAME --tasks N ...`` under
``valgrind --tool=callgrind``, once for ``SMALL`` and once for ``LARGE`` tasks; the
difference divided by ``LARGE - SMALL`` is its count per task, with interpreter start-up,
imports and warm-up cancelled out.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SMALL = 200
LARGE = 1_200


def arguments(clients: Sequence[str], *, in_flight: int) -> argparse.ArgumentParser:
    """The command line both ways: measure (no ``--client``), or be one measured child."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=clients)
    parser.add_argument("--tasks", type=int, default=SMALL, help="tasks (jobs) to run")
    parser.add_argument("--base-url")
    parser.add_argument("--api-key")
    parser.add_argument("--in-flight", type=int, default=in_flight, help="tasks at once")
    parser.add_argument("--only", choices=clients, help="measure one client only")
    return parser


def require_valgrind() -> None:
    """Exit with a message if valgrind is not installed."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")


def instructions(out_file: Path) -> int:
    """The total instructions of a callgrind output file."""
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out_file}")


def _count(module: str, client: str, tasks: int, args: Sequence[str], workdir: Path) -> int:
    out_file = workdir / f"callgrind.{client}.{tasks}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        module,
        "--client",
        client,
        "--tasks",
        str(tasks),
        *args,
    ]
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603 - our own interpreter
    return instructions(out_file)


async def per_task(module: str, client: str, args: Sequence[str], workdir: Path) -> float:
    """Instructions per task of ``client`` (``module``'s child, given ``args`` too)."""
    small, large = [
        await asyncio.to_thread(_count, module, client, tasks, args, workdir)
        for tasks in (SMALL, LARGE)
    ]
    count = (large - small) / (LARGE - SMALL)
    print(f"{client}: {count / 1000:.1f} k instructions per task")
    return count
