"""Every Python block of the README and the docs passes ``mypy --strict``: one mypy run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The README and every page of the documentation site.
PAGES = (README, *sorted((ROOT / "docs").rglob("*.md")))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: What the README's fragments take from the code around them, typed as a user's code
#: would have it (a FastAPI app and its request and response, a store, a URL...).
PRELUDE = """\
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import arq
import midvary

F = TypeVar("F", bound=Callable[..., Any])


class URL(Protocol):
    path: str


class Request(Protocol):
    headers: Mapping[str, str]
    url: URL

    async def body(self) -> bytes: ...


class Response:
    def __init__(self, status_code: int) -> None: ...


class App(Protocol):
    def post(self, path: str) -> Callable[[F], F]: ...


app: App
receiver: midvary.CallbackReceiver
session: midvary.Session
store: midvary.RedisStore
parents: list[str]
more_requests: list[midvary.VaryRequest]
jobs: list[tuple[str, int]]
url: str
PUBLIC: str
tasks: Any  # what midvary.celery.register(app) returned, in another module
"""

#: Modules a README block imports that the dev environment does not install.
NOT_INSTALLED = ("prometheus_client", "opentelemetry.exporter.prometheus", "django")
#: Modules a README block imports that are installed without type information.
UNTYPED = ("celery",)


def readme_blocks() -> list[tuple[str, int, str]]:
    """``(page, line, code)`` of every Python block of the README and the docs."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT).as_posix()
        blocks += [
            (name, text.count("\n", 0, match.start()) + 2, match.group(1))
            for match in BLOCK.finditer(text)
        ]
    return blocks


def test_every_python_block_of_the_readme_passes_mypy_strict(tmp_path: Path) -> None:
    """Each block, as the body of a coroutine of its own (so it may await), type-checks.

    An error is reported at its README line.
    """
    blocks = readme_blocks()
    assert len(blocks) >= 10  # the Quickstart, callbacks, fan-out, stores, arq, testing...
    lines = PRELUDE.splitlines()
    where: dict[int, str] = {}  # generated line -> page:line
    for number, (page, page_line, code) in enumerate(blocks):
        lines += ["", "", f"async def block_{number}() -> None:"]
        for offset, text in enumerate(code.splitlines()):
            lines.append(f"    {text}" if text else "")
            where[len(lines)] = f"{page}:{page_line + offset}"
    source = tmp_path / "readme_blocks.py"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\n"
        + "".join(
            f"\n[mypy-{name}]\nignore_missing_imports = True\n\n"
            f"[mypy-{name}.*]\nignore_missing_imports = True\n"
            for name in (*NOT_INSTALLED, *UNTYPED)
        ),
        encoding="utf-8",
    )
    result = subprocess.run(  # noqa: S603 - this interpreter's mypy, on a file of our own
        [
            sys.executable, "-m", "mypy", "--config-file", str(config),
            # A cache of its own, kept between runs (a cold run takes several times longer).
            "--cache-dir", str(README.parent / ".mypy_cache" / "readme"),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    report = re.sub(
        rf"{re.escape(str(source))}:(\d+):",
        lambda match: f"{where.get(int(match.group(1)), '?')}:",
        result.stdout + result.stderr,
    )
    assert result.returncode == 0, report
