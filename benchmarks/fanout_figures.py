"""Fan-out figures: throughput and 429s under a submit limit, and memory for 10,000 requests.

Run with ``.venv/bin/python -m benchmarks.fanout_figures`` (about three minutes on 2 cores).
It reports figures; it asserts nothing.

1. Throughput: 200 jobs against the fake provider limited to 20 submissions per 2 s, with
   the client told the same limit (``submit_rate=(20, 2.0)``), at two concurrencies; then,
   for contrast, a client not told the limit (``submit_rate=None``). Tasks take 1 to 3 s
   (the fake's default), the session polls with the default policy.
2. Memory: peak RSS of a client process that runs N jobs through ``submit_many`` (outcomes
   counted, not kept), with the requests given as a lazy generator and as a ready list.
   The fake provider runs in this (the parent) process, so its memory is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import midvary
from midvary.testing import FakeProvider, FakeSettings

JOBS = 200
LIMIT = (20, 2.0)


def requests(count: int) -> Iterator[midvary.VaryRequest]:
    """``count`` distinct vary requests (4 per parent)."""
    for n in range(count):
        yield midvary.VaryRequest(task_id=f"parent-{n // 4}", image_index=n % 4)


async def throughput(*, concurrency: int, told: bool) -> dict[str, Any]:
    """Run JOBS jobs against a fake limited to LIMIT; return the figures."""
    waits = 0

    def on_event(event: midvary.JobEvent) -> None:
        nonlocal waits
        if event.kind is midvary.JobEventKind.RATE_LIMITED:
            waits += 1

    async with FakeProvider(settings=FakeSettings(submit_limit=LIMIT), seed=1) as fake:
        async with midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            submit_rate=LIMIT if told else None,
            seed=1,
        ) as session:
            started = time.monotonic()
            outcomes = await session.submit_all(
                requests(JOBS), concurrency=concurrency, on_event=on_event
            )
            elapsed = time.monotonic() - started
        return {
            "client submit_rate": f"{LIMIT[0]} per {LIMIT[1]:g} s" if told else "None (not told)",
            "concurrency": concurrency,
            "jobs": JOBS,
            "succeeded": sum(o.ok for o in outcomes),
            "failed": sum(not o.ok for o in outcomes),
            "seconds": round(elapsed, 2),
            "jobs/s": round(JOBS / elapsed, 2),
            "429s sent by the fake": fake.stats.rate_limited,
            "rate-limited waits (events)": waits,
            "submit POSTs": fake.stats.requests["submit"],
            "duplicates": fake.stats.duplicate_submissions,
        }


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def child(count: int, source: str, base_url: str, api_key: str) -> dict[str, Any]:
    """In the child process: run ``count`` jobs and report peak RSS."""
    poll = midvary.PollPolicy(initial_delay=0.02, max_delay=0.05, jitter=0.0, target_delay=None)
    async with midvary.Session(
        api_key=api_key, base_url=base_url, poll=poll, submit_rate=None
    ) as session:
        items: Any = requests(count) if source == "generator" else list(requests(count))
        baseline = _peak_rss_mib()
        started = time.monotonic()
        done = failed = 0
        async with session.submit_many(items, concurrency=64) as outcomes:
            async for outcome in outcomes:
                done += outcome.ok
                failed += not outcome.ok
        elapsed = time.monotonic() - started
    return {
        "requests": count,
        "input": source,
        "succeeded": done,
        "failed": failed,
        "seconds": round(elapsed, 1),
        "RSS before the run (MiB)": round(baseline, 1),
        "peak RSS (MiB)": round(_peak_rss_mib(), 1),
    }


async def memory(count: int, source: str) -> dict[str, Any]:
    """Host a fake provider and run the client in a child process; return its figures."""
    settings = FakeSettings(task_duration=(0.01, 0.05), invisible_for=0.0, submit_limit=None)
    async with FakeProvider(settings=settings, seed=2) as fake:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.fanout_figures",
            "--child",
            str(count),
            source,
            fake.base_url,
            fake.api_key,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


def show(title: str, rows: list[dict[str, Any]]) -> None:
    """Print one table of figures."""
    print(f"\n## {title}\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


async def main() -> None:
    """Measure and print every figure."""
    rows = [
        await throughput(concurrency=100, told=True),
        await throughput(concurrency=16, told=True),
        await throughput(concurrency=100, told=False),
    ]
    show(f"{JOBS} jobs, fake limit {LIMIT[0]} submissions per {LIMIT[1]:g} s", rows)
    show(
        "Peak RSS of the client process",
        [
            await memory(1_000, "generator"),
            await memory(10_000, "generator"),
            await memory(10_000, "list"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4, metavar=("N", "SOURCE", "BASE_URL", "API_KEY"))
    arguments = parser.parse_args()
    if arguments.child:
        n, src, url, key = arguments.child
        print(json.dumps(asyncio.run(child(int(n), src, url, key))))
    else:
        asyncio.run(main())
