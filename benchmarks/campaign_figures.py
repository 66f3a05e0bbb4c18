"""Reliability campaign figures: jobs, faults, retries, duplicates, lost, uncertain, wall time.

Run with ``.venv/bin/python -m benchmarks.campaign_figures`` (about two minutes on 2 cores;
``--quick`` runs the sizes of ``make test`` in a few seconds). It runs the seeded scenarios
of ``tests/campaigns/scenarios.py`` that the campaign tests assert on (the large sizes are
the ``make test-slow`` ones) and prints one table row per run. It asserts nothing.

Columns: ``billed`` is tasks the fake provider created; ``lost`` counts jobs without an
outcome and billed tasks no outcome accounts for; ``faults injected`` lists the fake's
faults by kind, its 455 (maintenance) and 429 answers, and submit answers it lost on
purpose; ``poll retries`` are polls the client retried after a transient failure (as its
retry module logs them); ``429 waits`` and ``limiter waits`` are the fan-out's
``RATE_LIMITED`` events after a 429 and from the client's own limiter.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.campaigns import scenarios
from tests.campaigns.scenarios import Figures


async def run(*, quick: bool) -> list[Figures]:
    """Run every campaign that has figures; the large sizes unless ``quick``."""
    big = not quick
    rows: list[Figures] = []
    jobs = 1000 if big else 100
    concurrency = 64 if big else 32
    # Maintenance windows as (share of the tasks created when it opens, seconds open).
    windows = [(0.2, 1.0), (0.6, 1.0)] if big else [(0.2, 0.2), (0.6, 0.2)]
    for collect in ("submit_all", "submit_many"):
        polls = await scenarios.faulted_polls(
            jobs,
            seed=11 if big else 1,
            concurrency=concurrency,
            maintenance=windows,
            collect=collect,
        )
        rows.append(polls)
    for rate in (None, (10, 0.1)):
        storm = await scenarios.submit_storm(
            jobs, seed=12 if big else 2, concurrency=concurrency, session_rate=rate
        )
        rows.append(storm.figures)
    for seed in (1, 2, 3) if big else (5,):
        with tempfile.TemporaryDirectory() as folder:
            crash = await scenarios.crash_resume(
                30 if big else 12, seed=seed, kills=3 if big else 1, workdir=Path(folder)
            )
        crash.figures.campaign += f" seed {seed}"
        rows.append(crash.figures)
    cancel = await scenarios.cancelled_fan_out(200, seed=6, concurrency=24, after=40)
    rows.append(cancel.figures)
    slow, _outcomes = await scenarios.slow_post_in_batch(12, slow=5)
    rows.append(slow)
    return rows


def table(rows: Sequence[Figures]) -> str:
    """The figures as a Markdown table."""
    data = [row.row() for row in rows]
    header = list(data[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in data]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the campaigns and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sizes of `make test`")
    args = parser.parse_args(argv)
    # The fan-out's warnings (task ids of abandoned jobs) are expected here; keep the table clean.
    logging.getLogger("midvary").setLevel(logging.ERROR)
    rows = asyncio.run(run(quick=args.quick))
    print(table(rows))


if __name__ == "__main__":
    main()
