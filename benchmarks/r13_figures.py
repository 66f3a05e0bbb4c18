"""Campaign R13's figures: lost answers recovered by callback, one worker SIGKILLed.

Run with ``.venv/bin/python -m benchmarks.r13_figures`` (``--quick``: the sizes of
``make test``). It runs ``tests/campaigns/test_recovery_campaign.recovery_run`` (keyed
workers on a real Redis store, each with a receiver behind a load balancer; 10% of answers
lost; one SIGKILL, its unfinished jobs re-delivered) for one and two replicas and prints one
table row per run. It asserts nothing.

Columns: ``lost answers`` are submissions the fake created and then dropped the answer of;
``recovered`` the jobs whose outcome says so (the victim's lost or cut answers included);
``uncertain (created)`` the uncertain jobs for which the provider did create a task (the
figure that must be 0); ``dup`` tasks billed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from midvary.testing import FakeProvider
from tests.campaigns.test_recovery_campaign import R13_SETTINGS, recovery_run

from ._harness import redis_server

HEADER = (
    "| campaign | jobs | replicas | kills | ok | recovered | lost answers | uncertain "
    "| uncertain (created) | failed | dup | billed | wall s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


async def run(redis_url: str, *, quick: bool) -> list[str]:
    """Run R13 at each size and replica count; one table row each."""
    rows: list[str] = []
    jobs = 80 if quick else 200
    for replicas in (1, 2):
        for seed in (13,) if quick else (1, 2, 3):
            async with FakeProvider(settings=R13_SETTINGS) as fake:
                started = time.monotonic()
                f = await recovery_run(fake, redis_url, jobs=jobs, replicas=replicas, seed=seed)
                wall = time.monotonic() - started
            rows.append(
                f"| R13 seed {seed} | {f.jobs} | {f.replicas} | {f.kills} | {f.done} "
                f"| {f.recovered} | {f.lost_answers} | {f.uncertain} | {f.uncertain_created} "
                f"| {f.failed} | {f.duplicates} | {f.billed} | {wall:.1f} |"
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Print the R13 table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sizes of make test")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, redis_server(Path(folder)) as url:
        if url is None:
            raise SystemExit("no redis-server found")
        rows = asyncio.run(run(url, quick=args.quick))
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
