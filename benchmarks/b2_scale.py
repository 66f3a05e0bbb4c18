"""B2 scale: memory per awaiting handle, and event-loop lag, with 10,000 waits in flight.

10,000 tasks that do not finish during the measurement (an hour long) are created first.
Then, each in a fresh process so that one run's memory cannot hide in another's:

- ``midvary``: re-attaches a handle to each task (``session.task(id)``) and awaits it in
  its own asyncio task, with the default :class:`midvary.PollPolicy`;
- ``baseline``: one hand-written coroutine per task that polls with the same schedule.

RSS (VmRSS) is read over an idle session (one request made) and again once every wait has
had its first answer; the difference over 10,000 is the memory per handle. A ticker that
sleeps 10 ms records how late it wakes (event-loop lag) from the first handle created to
the end of a steady phase of ``STEADY`` seconds. A third run with tracemalloc shows where
midvary's memory goes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

import midvary

from ._harness import (
    PARENT,
    BaselineClient,
    GcMonitor,
    LagMonitor,
    Report,
    dumps,
    fake_server,
    quantile,
    rss_bytes,
    run_concurrently,
    session_options,
)
from ._profile import tracemalloc_by_library, tracemalloc_top

HANDLES = 10_000
#: Handles in the tracemalloc run (live bytes per handle do not depend on the count).
TRACED_HANDLES = 2_000
#: ``PollPolicy.initial_delay`` of the run: a re-attached handle polls at once, then
#: ``1.5 * INITIAL_DELAY`` (+ jitter) later, well after the measurement.
INITIAL_DELAY = 40.0
#: Seconds after the last first answer before RSS is read (stragglers settle).
SETTLE = 1.0
#: Seconds of the idle phase (every wait asleep) measured for lag after that.
IDLE = 4.0
TARGET_KIB = 8.0
TARGET_LAG = 0.050
_SETUP_CONCURRENCY = 64


async def _create_tasks(base_url: str, api_key: str, count: int) -> list[str]:
    ids: list[str] = []
    async with aiohttp.ClientSession() as http:
        client = BaselineClient(http, base_url, api_key)

        async def job(number: int) -> None:
            task_id = await client.submit(PARENT, number % 4)
            assert task_id is not None
            ids.append(task_id)

        await run_concurrently(count, _SETUP_CONCURRENCY, job)
    return ids


# -- the child process: one client's run ----------------------------------------------------


async def _wait_until(condition: Callable[[], bool], *, every: float = 0.05) -> None:
    # Polling a condition is the point: it reads the handles' public state only.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(every)


async def _measure(
    waits: Callable[[], list[asyncio.Task[None]]],
    answered: Callable[[], bool],
    lag: LagMonitor,
    trace: tracemalloc.Snapshot | None,
) -> dict[str, Any]:
    """Start the waits, then read RSS once every wait had its first answer and is asleep."""
    collections = GcMonitor().__enter__()
    started = time.perf_counter()
    tasks = waits()
    await _wait_until(answered)
    burst_end = time.perf_counter()
    await asyncio.sleep(SETTLE)
    collections.__exit__()
    figures: dict[str, Any] = {
        "after": rss_bytes(),
        "first_polls": burst_end - started,
        "gc": collections.pauses,
    }
    if trace is not None:
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size for s in snapshot.statistics("filename"))
        figures["traced"] = grown - sum(s.size for s in trace.statistics("filename"))
        figures["top"] = tracemalloc_top(snapshot, trace, limit=20)
        figures["by_library"] = tracemalloc_by_library(snapshot, trace)
    await asyncio.sleep(IDLE)
    await lag.stop()
    figures["lag_all"] = lag.lags(started)
    figures["lag_burst"] = lag.lags(started, burst_end)
    figures["lag_idle"] = lag.lags(burst_end)
    figures["pending"] = sum(not task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return figures


def _start(trace: bool) -> tuple[int, LagMonitor, tracemalloc.Snapshot | None]:
    gc.collect()
    before = rss_bytes()
    snapshot = None
    if trace:
        tracemalloc.start(1)
        snapshot = tracemalloc.take_snapshot()
    lag = LagMonitor()
    lag.start()
    return before, lag, snapshot


async def _child_midvary(
    base_url: str, api_key: str, ids: list[str], trace: bool
) -> dict[str, Any]:
    poll = midvary.PollPolicy(initial_delay=INITIAL_DELAY)
    options = session_options(poll=poll, submit_rate=None)
    async with midvary.Session(api_key=api_key, base_url=base_url, **options) as session:
        await session.get_task(f"{PARENT}-warm")  # an idle session: connected, imports done
        before, lag, snapshot = _start(trace)
        handles: list[midvary.TaskHandle] = []

        def waits() -> list[asyncio.Task[None]]:
            handles.extend(session.task(task_id) for task_id in ids)
            return [asyncio.create_task(_await(handle)) for handle in handles]

        figures = await _measure(
            waits, lambda: all(h.record is not None for h in handles), lag, snapshot
        )
    figures["before"] = before
    return figures


async def _await(handle: midvary.TaskHandle) -> None:
    await handle


def _baseline_delays(rng: random.Random) -> Callable[[int], float]:
    # A re-attached midvary handle's schedule: at once, then initial * 1.5**(n-1) seconds
    # capped at 8, each with up to 0.5 s of jitter.
    def delay(attempt: int) -> float:
        if attempt <= 1:
            return 0.0
        return min(8.0, INITIAL_DELAY * 1.5 ** (attempt - 1)) + rng.uniform(0, 0.5)

    return delay


async def _child_baseline(base_url: str, api_key: str, ids: list[str]) -> dict[str, Any]:
    rng = random.Random(1)
    async with aiohttp.ClientSession() as http:
        client = BaselineClient(http, base_url, api_key)
        await client.record(f"{PARENT}-warm")
        before, lag, _ = _start(trace=False)
        answered: set[str] = set()

        async def wait(task_id: str) -> None:
            delay = _baseline_delays(rng)
            attempt = 1
            while True:
                await asyncio.sleep(delay(attempt))
                data = await client.record(task_id)
                answered.add(task_id)
                if data is not None and data["successFlag"] != 0:
                    return
                attempt += 1

        def waits() -> list[asyncio.Task[None]]:
            return [asyncio.create_task(wait(task_id)) for task_id in ids]

        figures = await _measure(waits, lambda: len(answered) == len(ids), lag, None)
    figures["before"] = before
    return figures


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.b2_scale")
    parser.add_argument("--child", choices=("midvary", "baseline", "trace"), required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ids", required=True, type=Path)
    args = parser.parse_args(argv)
    ids = json.loads(args.ids.read_text())
    if args.child == "trace":
        ids = ids[:TRACED_HANDLES]
    if args.child == "baseline":
        figures = asyncio.run(_child_baseline(args.base_url, args.api_key, ids))
    else:
        figures = asyncio.run(
            _child_midvary(args.base_url, args.api_key, ids, trace=args.child == "trace")
        )
    print(dumps(figures))
    return 0


async def _in_child(kind: str, base_url: str, api_key: str, ids_file: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.b2_scale",
        "--child",
        kind,
        "--base-url",
        base_url,
        "--api-key",
        api_key,
        "--ids",
        str(ids_file),
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"B2 child {kind} failed: {done.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


# -- the parent: set up, run the children, report -------------------------------------------


async def run(*, profile: bool = True, workdir: Path) -> Report:
    """Run B2 and return its report."""
    report = Report(name="B2", title="scale: 10,000 awaiting handles")
    args = ("--duration", "3600", "3600", "--invisible-for", "0", "--no-submit-limit")
    async with fake_server(*args) as fake:
        started = time.perf_counter()
        ids = await _create_tasks(fake.base_url, fake.api_key, HANDLES)
        setup = time.perf_counter() - started
        ids_file = workdir / "b2-task-ids.json"
        ids_file.write_text(json.dumps(ids))
        runs = {}
        for kind in ("baseline", "midvary", *(("trace",) if profile else ())):
            runs[kind] = await _in_child(kind, fake.base_url, fake.api_key, ids_file)
        ids_file.unlink()

    report.say(
        f"{HANDLES} tasks of an hour created in {setup:.1f} s (not measured). Each client "
        f"then awaits all of them at once, in its own process: a first poll at once (the "
        f"burst), then asleep ~{1.5 * INITIAL_DELAY:g} s (PollPolicy(initial_delay="
        f"{INITIAL_DELAY:g}); the baseline sleeps the same). RSS is read {SETTLE:g} s after "
        f"the last first answer, with every wait asleep; lag is recorded from the first "
        f"wait created to {IDLE:g} s after that."
    )
    report.say("")
    report.say(
        "| client | RSS idle MiB | RSS awaiting MiB | KiB per wait | burst s | "
        "lag p99 ms (all) | burst p50 / p99 / max ms | idle p99 ms |"
    )
    report.say("|---|---|---|---|---|---|---|---|")
    for kind in ("baseline", "midvary"):
        figures = runs[kind]
        burst = figures["lag_burst"]
        report.say(
            f"| {kind} | {figures['before'] / 2**20:.1f} | {figures['after'] / 2**20:.1f} | "
            f"{_per_handle(figures):.2f} | {figures['first_polls']:.2f} | "
            f"{_ms(quantile(figures['lag_all'], 0.99))} | {_ms(quantile(burst, 0.5))} / "
            f"{_ms(quantile(burst, 0.99))} / {_ms(max(burst, default=0.0))} | "
            f"{_ms(quantile(figures['lag_idle'], 0.99))} |"
        )
        if figures["pending"] != HANDLES:
            report.say(f"(!) {kind}: only {figures['pending']} waits were still pending")
    ours, base = runs["midvary"], runs["baseline"]
    p99 = quantile(ours["lag_all"], 0.99)
    report.say("")
    for kind in ("baseline", "midvary"):
        pauses = [seconds for _generation, seconds in runs[kind]["gc"]]
        full = [seconds for generation, seconds in runs[kind]["gc"] if generation == 2]
        report.say(
            f"- {kind}: the garbage collector ran {len(pauses)} times during the burst, "
            f"{sum(pauses) * 1000:.0f} ms in all; {len(full)} full collections, the longest "
            f"{_ms(max(full, default=0.0))} ms"
        )
    report.say("")
    report.say(
        f"The burst is {HANDLES} polls as fast as the client can make them: "
        f"{HANDLES / ours['first_polls']:.0f} polls/s for midvary, "
        f"{HANDLES / base['first_polls']:.0f} for the baseline. With the default PollPolicy "
        f"(max_delay 8 s) {HANDLES} waits keep polling at about {HANDLES / 8:.0f} polls/s."
    )
    report.check(
        "RSS per awaiting handle",
        f"<= {TARGET_KIB:g} KiB",
        f"{_per_handle(ours):.1f} KiB (baseline coroutine {_per_handle(base):.1f} KiB)",
        _per_handle(ours) <= TARGET_KIB,
    )
    report.check(
        "event-loop lag p99 (burst + idle)",
        f"<= {TARGET_LAG * 1000:g} ms",
        f"{_ms(p99)} ms (baseline {_ms(quantile(base['lag_all'], 0.99))} ms)",
        p99 <= TARGET_LAG,
    )
    report.check(
        "event-loop lag p99 / max during the first-poll burst alone",
        "(reported)",
        f"{_ms(quantile(ours['lag_burst'], 0.99))} / {_ms(max(ours['lag_burst']))} ms "
        f"(baseline {_ms(quantile(base['lag_burst'], 0.99))} / "
        f"{_ms(max(base['lag_burst']))} ms)",
        None,
    )
    if "trace" in runs:
        _trace_report(report, runs["trace"])
    return report


def _per_handle(figures: dict[str, Any]) -> float:
    return float(figures["after"] - figures["before"]) / HANDLES / 1024


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _trace_report(report: Report, figures: dict[str, Any]) -> None:
    traced = figures["traced"] / TRACED_HANDLES / 1024
    report.say("")
    report.say(
        f"tracemalloc (a separate midvary run with {TRACED_HANDLES} handles, 1 frame): "
        f"{traced:.2f} KiB of live Python "
        "objects per awaiting handle once every wait had its first answer (RSS adds "
        "allocator overhead and the high-water mark of the first-poll burst). By library:"
    )
    report.say("")
    report.say("| library | KiB per handle |")
    report.say("|---|---|")
    for name, size in figures["by_library"].items():
        if abs(size) / TRACED_HANDLES >= 8:
            report.say(f"| {name} | {size / TRACED_HANDLES / 1024:.3f} |")
    report.say("")
    report.say("Top allocating lines (growth over the idle session):")
    report.say("")
    report.say("| line | KiB per handle | objects per handle |")
    report.say("|---|---|---|")
    for where, size, count in figures["top"]:
        per_handle = size / TRACED_HANDLES / 1024
        report.say(f"| `{where}` | {per_handle:.3f} | {count / TRACED_HANDLES:.2f} |")


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
