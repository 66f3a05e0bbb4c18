"""B8 arq workers: K = 1, 2, 4, 8 worker processes on one account, and campaign R10's table.

Each run is real processes: a Redis server, the fake provider (``python -m midvary
fake-server``, limit 20 submissions per 2 s, HTTP 429 beyond, tasks of 1-2 s), K ``python -m
arq`` workers on ``midvary.arq.WorkerSettings`` (a subclass with quick queue polls, see
``tests/campaigns/fleet_settings.py``), every worker told the account's limit
(``MIDVARY_SUBMIT_RATE=20/2``), which their shared ``RedisStore`` holds for all of them. The
160 jobs are enqueued through arq at once; the fleet runs 80 jobs at a time in all (each
worker ``ceil(80 / K)``), so K changes how the work is spread, not how much may run.

The makespan is from the first enqueue to the last job's result; its lower bound is what
the limit forces (ceil(160 / 20) - 1 windows of 2 s between the first and the last
acceptance) plus the shortest task (1 s). R10 runs 40 jobs on two workers, one SIGKILLed
three times (seeded) and restarted.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from tests.campaigns.fleet import ArqFigures, arq_campaign
from tests.store.redis_server import RedisServer, find_server

from ._harness import Report

JOBS = 160
LIMIT = (20, 2.0)
DURATION = (1.0, 2.0)
IN_FLIGHT = 80
WORKERS = (1, 2, 4, 8)
TARGET_RATIO = 1.3
TARGET_429_SHARE = 0.02


def lower_bound() -> float:
    """Seconds the limit and the shortest task force from the first enqueue to the last result."""
    count, window = LIMIT
    return (math.ceil(JOBS / count) - 1) * window + DURATION[0]


async def _b8(redis_url: str, workdir: Path) -> list[tuple[int, ArqFigures, int]]:
    count, window = LIMIT
    rows = []
    for k in WORKERS:
        figures = await arq_campaign(
            jobs=JOBS, workers=k, seed=k, redis_url=redis_url, workdir=workdir,
            fake_args=("--duration", *map(str, DURATION), "--submit-limit", *map(str, LIMIT)),
            submit_rate=f"{count}/{window:g}", max_jobs=math.ceil(IN_FLIGHT / k),
            settings="tests.campaigns.fleet_settings.BenchSettings", prefix=f"b8k{k}",
        )  # fmt: skip
        rows.append((k, figures, figures.rate_limited))
    return rows


async def run() -> Report:
    """Run B8 (and R10's figures) and return the report."""
    report = Report(name="B8", title="arq workers: K processes on one account, 20 per 2 s")
    binary = find_server()
    if binary is None:
        report.available = False
        report.say("no Redis server found (see tests/store/redis_server.py)")
        return report
    with tempfile.TemporaryDirectory(prefix="midvary-b8-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(binary, workdir)
        server.start()
        try:
            rows = await _b8(server.url, workdir)
            r10 = await arq_campaign(
                jobs=40, kills=3, seed=1, redis_url=server.url, workdir=workdir,
                fake_args=("--duration", "0.5", "1.5", "--latency", "0.1", "0.4",
                           "--no-submit-limit"),
            )  # fmt: skip
        finally:
            server.stop()
    low = lower_bound()
    report.say(
        f"{JOBS} jobs through arq, provider limit {LIMIT[0]} per {LIMIT[1]:g} s, tasks "
        f"{DURATION[0]:g}-{DURATION[1]:g} s, {IN_FLIGHT} jobs in flight across the fleet; lower "
        f"bound {low:g} s from the first enqueue to the last result"
    )
    report.say("")
    report.say(
        "| K workers | makespan s | / lower bound | 429s | 429s / jobs | billed | duplicates |"
    )
    report.say("|---|---|---|---|---|---|---|")
    worst_ratio, worst_share = 0.0, 0.0
    for k, figures, limited in rows:
        ratio = figures.makespan / low
        worst_ratio, worst_share = max(worst_ratio, ratio), max(worst_share, limited / JOBS)
        report.say(
            f"| {k} | {figures.makespan:.2f} | {ratio:.3f} | {limited} | {limited / JOBS:.1%} | "
            f"{figures.tasks_created} | {figures.duplicates} |"
        )
    report.check(
        "makespan / lower bound, worst K", f"<= {TARGET_RATIO:g}x", f"{worst_ratio:.3f}x",
        worst_ratio <= TARGET_RATIO,
    )  # fmt: skip
    report.check(
        "429s / submissions, worst K", f"<= {TARGET_429_SHARE:.0%}", f"{worst_share:.1%}",
        worst_share <= TARGET_429_SHARE,
    )  # fmt: skip
    states = r10.states()
    report.say("")
    report.say("Campaign R10 (40 jobs, 2 workers, 3 SIGKILLs at seeded moments, each restarted):")
    report.say("")
    report.say(
        "| jobs | kills | with a result | succeeded | uncertain | in flight at a kill | "
        "billed | duplicates | makespan s |"
    )
    report.say("|---|---|---|---|---|---|---|---|---|")
    report.say(
        f"| {r10.jobs} | {r10.kills} | {len(r10.results)} | {states['succeeded']} | "
        f"{states['uncertain']} | {len(r10.in_flight_at_kills)} | {r10.tasks_created} | "
        f"{r10.duplicates} | {r10.makespan:.1f} |"
    )
    report.check("R10 duplicate billed tasks", "0", str(r10.duplicates), r10.duplicates == 0)
    return report
