"""B3 poll economy: polls per task and detection delay for tasks of 20 to 60 s.

One fake provider (tasks of 20-60 s, visible after 0.5 s, no submit limit) serves, in two
phases:

1. warm-up: a session runs 20 tasks to completion, so it has seen 20 durations; at the same
   time a fresh (cold) session runs 100 tasks: the cold figures;
2. measurement: the warm session runs 100 tasks; at the same time, in another process,
   three hand-written fixed-interval pollers run 100 tasks each (30 s: the provider's
   advice; 0.5 s: Replicate's default; 0.1 s: fal's default).

When callbacks are available (B5), a session with a ``CallbackReceiver`` runs the same two
phases alongside. Every session uses the default :class:`midvary.PollPolicy`.

Detection delay = the moment ``await handle`` returned (this process's ``time.time()``)
minus the task's ``completeTime`` (the fake's ``time.time()`` of the finish; both processes
share the clock). The fake's own figure (its first answer showing the task final) is shown
beside it. Polls per task are counted by the fake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import aiohttp

import midvary

from . import b5_callbacks
from ._harness import (
    HEADER,
    PARENT,
    BaselineClient,
    FakeServer,
    Figures,
    Report,
    Sample,
    completed_wall,
    dumps,
    fake_server,
    fixed,
    mean,
    median,
    run_tasks,
    session_options,
)

TASKS = 100
WARMUP = 20
DURATION = (20.0, 60.0)
INTERVALS = (30.0, 0.5, 0.1)
TARGET_POLLS = 5.0
TARGET_DELAY = 3.5


def _session(fake: FakeServer, **options: Any) -> midvary.Session:
    return midvary.Session(
        api_key=fake.api_key, base_url=fake.base_url, **session_options(submit_rate=None, **options)
    )


# -- the fixed-interval pollers, in a child process -----------------------------------------


async def _fixed_pollers(base_url: str, api_key: str, count: int) -> dict[str, list[Any]]:
    async def poller(interval: float) -> list[Any]:
        async with aiohttp.ClientSession() as http:
            client = BaselineClient(http, base_url, api_key)

            async def job(number: int) -> list[Any]:
                task_id = await client.submit(PARENT, number % 4)
                assert task_id is not None
                data = await client.wait(task_id, fixed(interval))
                return [task_id, time.time() - completed_wall(data)]

            return list(await asyncio.gather(*(job(n) for n in range(count))))

    results = await asyncio.gather(*(poller(interval) for interval in INTERVALS))
    return {str(interval): result for interval, result in zip(INTERVALS, results, strict=True)}


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.b3_poll_economy")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--tasks", type=int, default=TASKS)
    args = parser.parse_args(argv)
    print(dumps(asyncio.run(_fixed_pollers(args.base_url, args.api_key, args.tasks))))
    return 0


async def _run_fixed_pollers(fake: FakeServer) -> dict[str, list[Sample]]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.b3_poll_economy",
        "--base-url",
        fake.base_url,
        "--api-key",
        fake.api_key,
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"fixed-interval pollers failed: {done.stderr.strip()[-2000:]}")
    raw: dict[str, list[list[Any]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        interval: [Sample(task_id=task_id, delay=delay) for task_id, delay in items]
        for interval, items in raw.items()
    }


# -- the run ----------------------------------------------------------------------------------


async def run(*, tasks: int = TASKS, warmup: int = WARMUP) -> tuple[Report, Report]:
    """Run B3 (and B5 alongside, when callbacks exist); return both reports."""
    report = Report(name="B3", title="poll economy: tasks of 20-60 s, default PollPolicy")
    callbacks = b5_callbacks.Participant.create()
    args = ["--duration", str(DURATION[0]), str(DURATION[1]), "--no-submit-limit"]
    args += ["--callback-hmac-key", b5_callbacks.HMAC_KEY]
    started = time.perf_counter()
    async with fake_server(*args) as fake:
        if callbacks is not None:
            await callbacks.start(fake)
        try:
            async with _session(fake) as warm, _session(fake) as cold:
                # Phase 1: the warm-up, with the cold run (and the callbacks' warm-up) alongside.
                cold_run = asyncio.create_task(run_tasks(cold, tasks))
                phase_one: list[Awaitable[object]] = [run_tasks(warm, warmup)]
                if callbacks is not None:
                    phase_one.append(callbacks.run(warmup))
                await asyncio.gather(*phase_one)
                learned = time.perf_counter() - started
                # Phase 2: the measurement, with the fixed pollers (and callbacks) alongside.
                phase_two: list[Awaitable[Any]] = [
                    run_tasks(warm, tasks),
                    _run_fixed_pollers(fake),
                    cold_run,
                ]
                if callbacks is not None:
                    phase_two.append(callbacks.run(tasks))
                results = await asyncio.gather(*phase_two)
        finally:
            if callbacks is not None:
                await callbacks.stop()
        stats = await fake.stats()
    elapsed = time.perf_counter() - started

    warm_samples: list[Sample] = results[0]
    fixed_samples: dict[str, list[Sample]] = results[1]
    cold_samples: list[Sample] = results[2]
    warm_figures = Figures.of("midvary, warm (20 seen)", warm_samples, stats)
    rows = [
        warm_figures,
        Figures.of(f"midvary, cold (fresh session, {tasks} at once)", cold_samples, stats),
    ]
    rows += [
        Figures.of(f"fixed {float(interval):g} s (hand-written)", samples, stats)
        for interval, samples in fixed_samples.items()
    ]
    callback_figures = None
    if callbacks is not None:
        callback_figures = Figures.of("midvary + CallbackReceiver", results[3], stats)
        rows.append(callback_figures)

    report.say(
        f"{tasks} tasks of {DURATION[0]:g}-{DURATION[1]:g} s per client; the warm session "
        f"had seen {warmup} tasks finish ({learned:.0f} s); {elapsed:.0f} s in all. Delay: "
        "task finished -> `await` returned."
    )
    report.say("")
    report.say(HEADER)
    for figures in rows:
        report.say(figures.row())
    polls = mean(warm_figures.polls)
    delay = median(s.delay for s in warm_figures.samples)
    report.check(
        "polls per task (warm)", f"<= {TARGET_POLLS:g}", f"{polls:.2f}", polls <= TARGET_POLLS
    )
    report.check(
        "median detection delay (warm)",
        f"<= {TARGET_DELAY:g} s",
        f"{delay:.2f} s",
        delay <= TARGET_DELAY,
    )
    cold_figures = rows[1]
    cold_delay = median(s.delay for s in cold_figures.samples)
    report.check(
        "cold: polls per task, median delay",
        "(reported)",
        f"{mean(cold_figures.polls):.2f}, {cold_delay:.2f} s",
        None,
    )
    return report, b5_callbacks.report(callback_figures)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
