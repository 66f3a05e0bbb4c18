"""B4 rate limit: 200 jobs against a provider that allows 20 submissions per 2 s.

The client is told the same limit (``Session(submit_rate=(20, 2.0))``) and runs every job
at once (``submit_all(..., concurrency=200)``): the limiter, not the concurrency, paces it.
The limit alone forces 18 s between the first and the last of 200 acceptances (ten
windows of 20), the "limit-bound minimum"; the makespan measured is from the start to the
200th acceptance. The hand-written baseline uses the obvious sliding window (20 send times
in the last 2 s) and waits 1 s after a 429. Tasks take 1-2 s; the time until every result
is in is reported too.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any

import aiohttp

import midvary

from ._harness import (
    PARENT,
    BaselineClient,
    FakeServer,
    Report,
    fake_server,
    fixed,
    has_feature,
    session_options,
)

JOBS = 200
LIMIT = (20, 2.0)
TARGET_RATIO = 1.15
TARGET_429_SHARE = 0.02
#: The baseline's wait after a 429, and its poll interval, in seconds.
BASELINE_BACKOFF = 1.0
BASELINE_POLL = 1.0


def available() -> bool:
    """Whether this midvary has the fan-out and the client-side submit limiter."""
    return has_feature("submit_all") and "submit_rate" in session_options(submit_rate=None)


def minimum() -> float:
    """Seconds the provider's limit forces between the first and the last acceptance."""
    count, window = LIMIT
    return (math.ceil(JOBS / count) - 1) * window


async def _midvary(fake: FakeServer) -> tuple[float, float]:
    accepted: list[float] = []
    events: Any = midvary
    options = session_options(submit_rate=LIMIT)

    def on_event(event: Any) -> None:
        if event.kind is events.JobEventKind.SUBMITTED:
            accepted.append(time.perf_counter())

    requests = [midvary.VaryRequest(task_id=PARENT, image_index=n % 4) for n in range(JOBS)]
    async with midvary.Session(api_key=fake.api_key, base_url=fake.base_url, **options) as session:
        started = time.perf_counter()
        outcomes = await session.submit_all(requests, concurrency=JOBS, on_event=on_event)
        finished = time.perf_counter()
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise RuntimeError(f"B4: {len(failed)} midvary jobs failed, e.g. {failed[0].error!r}")
    return max(accepted) - started, finished - started


async def _baseline(fake: FakeServer) -> tuple[float, float]:
    count, window = LIMIT
    sent: collections.deque[float] = collections.deque()
    gate = asyncio.Lock()
    accepted: list[float] = []

    async def admit() -> None:
        async with gate:
            while True:
                now = time.monotonic()
                while sent and sent[0] <= now - window:
                    sent.popleft()
                if len(sent) < count:
                    sent.append(now)
                    return
                await asyncio.sleep(sent[0] + window - now)

    async with aiohttp.ClientSession() as http:
        client = BaselineClient(http, fake.base_url, fake.api_key)

        async def job(number: int) -> None:
            while True:
                await admit()
                task_id = await client.submit(PARENT, number % 4)
                if task_id is not None:
                    break
                await asyncio.sleep(BASELINE_BACKOFF)
            accepted.append(time.perf_counter())
            await client.wait(task_id, fixed(BASELINE_POLL))

        started = time.perf_counter()
        await asyncio.gather(*(job(n) for n in range(JOBS)))
        finished = time.perf_counter()
    return max(accepted) - started, finished - started


async def run() -> Report:
    """Run B4 and return its report."""
    report = Report(name="B4", title="rate limit: 200 jobs, 20 per 2 s")
    if not available():
        report.available = False
        report.say("not available yet: Session.submit_all / Session(submit_rate=...) not on main")
        for figure, target in (
            ("makespan / limit-bound minimum", f"<= {TARGET_RATIO:g}x"),
            ("429s / submissions", f"<= {TARGET_429_SHARE:.0%}"),
        ):
            report.check(figure, target, "not available yet", None)
        return report
    count, window = LIMIT
    args = ("--submit-limit", str(count), str(window), "--duration", "1", "2")
    rows = []
    async with fake_server(*args) as fake:
        for name, client in (("baseline", _baseline), ("midvary", _midvary)):
            before = await fake.stats()
            makespan, total = await client(fake)
            after = await fake.stats()
            posts = after["requests"].get("submit", 0) - before["requests"].get("submit", 0)
            limited = after["rate_limited"] - before["rate_limited"]
            rows.append((name, makespan, total, posts, limited))
            await asyncio.sleep(window + 0.5)  # the next client starts with an empty window
    low = minimum()
    report.say(
        f"{JOBS} jobs, provider limit {count} per {window:g} s (HTTP 429 beyond), client told "
        f"the same; limit-bound minimum {low:g} s from the first to the last acceptance"
    )
    report.say("")
    report.say(
        "| client | makespan s | / minimum | all results in s | POSTs | 429s | 429s / jobs |"
    )
    report.say("|---|---|---|---|---|---|---|")
    for name, makespan, total, posts, limited in rows:
        report.say(
            f"| {name} | {makespan:.2f} | {makespan / low:.3f} | {total:.2f} | {posts} | "
            f"{limited} | {limited / JOBS:.1%} |"
        )
    _, makespan, _, _, limited = rows[1]
    report.check(
        "makespan / limit-bound minimum",
        f"<= {TARGET_RATIO:g}x",
        f"{makespan / low:.3f}x ({makespan:.1f} s)",
        makespan / low <= TARGET_RATIO,
    )
    report.check(
        "429s / submissions",
        f"<= {TARGET_429_SHARE:.0%}",
        f"{limited / JOBS:.1%} ({limited})",
        limited / JOBS <= TARGET_429_SHARE,
    )
    return report
