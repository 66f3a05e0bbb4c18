"""B6 one limit for the fleet: K worker processes on one account, 160 jobs, 20 per 2 s.

K = 1, 2, 4, 8 worker processes (``b6_worker``) share the jobs, each told the account's
limit (``submit_rate=(20, 2.0)``); the fake provider (its own process) allows 20 accepted
submissions per sliding 2 s and answers 429 beyond. With one shared ``RedisStore`` (and a
``SQLiteStore`` up to K = 4) the limit is one window for all of them; without a store each
process keeps its own window, which is the problem issue 11 describes. The makespan is from
the first to the last acceptance (every worker starts at one agreed wall-clock moment);
the limit alone forces (160 / 20 - 1) x 2 = 14 s.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ._harness import FakeServer, Report, fake_server

JOBS = 160
LIMIT = (20, 2.0)
TARGET_RATIO = 1.15
TARGET_429_SHARE = 0.02
ROOT = Path(__file__).resolve().parents[1]


def minimum() -> float:
    """Seconds the provider's limit forces between the first and the last acceptance."""
    return (math.ceil(JOBS / LIMIT[0]) - 1) * LIMIT[1]


async def _fleet(fake: FakeServer, where: str, k: int) -> tuple[float, int, int]:
    """Run the 160 jobs on ``k`` processes; (makespan s, 429s, POSTs)."""
    before = await fake.stats()
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "MIDVARY_BASE_URL": fake.base_url,
        "MIDVARY_API_KEY": fake.api_key,
        "B6_RUN": run,
        "B6_NAMESPACE": f"b6-{run}",
    }
    start_at = time.time() + 2.0 + 0.4 * k  # every process imported and connected by then
    share = [JOBS // k + (1 if i < JOBS % k else 0) for i in range(k)]
    firsts = [sum(share[:i]) for i in range(k)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.b6_worker",
            where,
            str(first),
            str(count),
            str(start_at),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for first, count in zip(firsts, share, strict=True)
    ]
    accepted: list[float] = []
    for proc in procs:
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"B6 worker failed: {err.decode()[-2000:]}")
        accepted += json.loads(out)
    after = await fake.stats()
    limited = after["rate_limited"] - before["rate_limited"]
    posts = after["requests"].get("submit", 0) - before["requests"].get("submit", 0)
    await asyncio.sleep(LIMIT[1] + 0.5)  # the next run starts with an empty window
    return max(accepted) - min(accepted), limited, posts


async def run(redis_url: str | None) -> Report:
    """Run B6 (``redis_url``: a running server for the RedisStore rows, or ``None``)."""
    report = Report(name="B6", title="one limit for K processes: 160 jobs, 20 per 2 s")
    count, window = LIMIT
    low = minimum()
    rows: list[tuple[str, int, float, int, int]] = []
    plan: list[tuple[str, int]] = [("RedisStore", k) for k in (1, 2, 4, 8) if redis_url]
    plan += [("SQLiteStore", k) for k in (1, 2, 4)]
    plan += [("no store", k) for k in (4, 8)]
    args = ("--submit-limit", str(count), str(window), "--duration", "1", "2")
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="midvary-b6-") as tmp:
        async with fake_server(*args) as fake:
            for name, k in plan:
                if name == "RedisStore":
                    assert redis_url is not None
                    where = redis_url
                elif name == "SQLiteStore":
                    where = str(Path(tmp) / f"b6-{k}.sqlite")
                else:
                    where = "-"
                makespan, limited, posts = await _fleet(fake, where, k)
                rows.append((name, k, makespan, limited, posts))
                print(f"  {name} K={k}: {makespan:.2f} s, {limited} 429s", flush=True)
    report.say(
        f"{JOBS} jobs shared by K worker processes (each its own interpreter, event loop and "
        f"Session told the limit), provider limit {count} per {window:g} s (HTTP 429 beyond), "
        f"tasks 1-2 s; limit-bound minimum {low:g} s from the first to the last acceptance. "
        f"The runs took {time.perf_counter() - clock:.0f} s in all."
    )
    report.say("")
    report.say("| store | K | makespan s | / minimum | 429s | 429s / submissions | POSTs |")
    report.say("|---|---|---|---|---|---|---|")
    for name, k, makespan, limited, posts in rows:
        report.say(
            f"| {name} | {k} | {makespan:.2f} | {makespan / low:.3f} | {limited} | "
            f"{limited / JOBS:.1%} | {posts} |"
        )
    if not redis_url:
        report.say("")
        report.say("No Redis server was found: the RedisStore rows are missing.")
    stored = [row for row in rows if row[0] != "no store"]
    worst = max(stored, key=lambda row: row[2])
    most = max(stored, key=lambda row: row[3])
    report.check(
        "makespan / minimum, every K, with a store",
        f"<= {TARGET_RATIO:g}x",
        f"worst {worst[2] / low:.3f}x ({worst[0]}, K={worst[1]})",
        worst[2] / low <= TARGET_RATIO,
    )
    report.check(
        "429s / submissions, every K, with a store",
        f"<= {TARGET_429_SHARE:.0%}",
        f"worst {most[3] / JOBS:.1%} ({most[0]}, K={most[1]})",
        most[3] / JOBS <= TARGET_429_SHARE,
    )
    baseline = [row for row in rows if row[0] == "no store"]
    report.check(
        "without a store (baseline), K=4 and 8",
        "(reported)",
        ", ".join(f"K={k}: {m / low:.2f}x, {lim} 429s" for _n, k, m, lim, _p in baseline),
        None,
    )
    return report
