"""B1 overhead: client CPU seconds per task, midvary against a hand-written aiohttp client.

2,000 tasks that are finished the moment they are created (duration 0, visible at once), 64
in flight, so the work is the requests themselves: one submission and one poll per task for
both clients (midvary with a fixed first-poll delay and no learning; the baseline sleeps
the same interval).

The rounds come in pairs, one round of each client, back to back so that both see about the
same load on a shared machine; the order inside a pair alternates (baseline first, then
midvary first) so that neither client always runs in the other's wake. Before each round
the garbage collector empties the heap, outside the measured span: a full collection caused
by the previous round's garbage is not charged to the next round. The verdict is the median
of the pairs' ratios; their spread is reported beside it.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import time
from collections.abc import Awaitable, Callable

import aiohttp
import attrs

import midvary

from ._harness import (
    PARENT,
    BaselineClient,
    FakeServer,
    Report,
    cpu_seconds,
    fake_server,
    fixed,
    median,
    quantile,
    run_concurrently,
    session_options,
)
from ._profile import by_library, top_functions

TASKS = 2_000
CONCURRENCY = 64
#: Pairs of rounds (one round of each client per pair).
ROUNDS = 15
WARMUP_TASKS = 200
PROFILE_TASKS = 1_000
#: Seconds from submission to the (only) poll, for both clients.
INTERVAL = 0.01
TARGET_RATIO = 1.10  # issue 10


@attrs.frozen(kw_only=True)
class Round:
    """One client's run of ``tasks`` tasks."""

    client: str
    tasks: int
    cpu: float
    wall: float
    requests: int

    @property
    def cpu_per_task(self) -> float:
        """CPU seconds per task."""
        return self.cpu / self.tasks


Job = Callable[[int], Awaitable[object]]


def _policy() -> midvary.PollPolicy:
    return midvary.PollPolicy(initial_delay=INTERVAL, jitter=0.0, target_delay=None)


async def _midvary_round(fake: FakeServer, tasks: int, profiler: cProfile.Profile | None) -> Round:
    options = session_options(poll=_policy(), submit_rate=None)
    before = await fake.stats()
    gc.collect()
    cpu, wall = cpu_seconds(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    async with midvary.Session(api_key=fake.api_key, base_url=fake.base_url, **options) as session:

        async def job(number: int) -> None:
            handle = await session.vary(PARENT, number % 4)
            await handle

        await run_concurrently(tasks, CONCURRENCY, job)
    if profiler is not None:
        profiler.disable()
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    after = await fake.stats()
    return Round(
        client="midvary", tasks=tasks, cpu=cpu, wall=wall, requests=_requests(before, after)
    )


async def _baseline_round(fake: FakeServer, tasks: int, profiler: cProfile.Profile | None) -> Round:
    before = await fake.stats()
    gc.collect()
    cpu, wall = cpu_seconds(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    timeout = aiohttp.ClientTimeout(total=30.0, connect=10.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        client = BaselineClient(http, fake.base_url, fake.api_key)

        async def job(number: int) -> None:
            task_id = await client.submit(PARENT, number % 4)
            assert task_id is not None
            await client.wait(task_id, fixed(INTERVAL))

        await run_concurrently(tasks, CONCURRENCY, job)
    if profiler is not None:
        profiler.disable()
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    after = await fake.stats()
    return Round(
        client="baseline", tasks=tasks, cpu=cpu, wall=wall, requests=_requests(before, after)
    )


def _requests(before: dict[str, object], after: dict[str, object]) -> int:
    def count(figures: dict[str, object]) -> int:
        requests = figures["requests"]
        assert isinstance(requests, dict)
        return int(requests.get("submit", 0)) + int(requests.get("record-info", 0))

    return count(after) - count(before)


async def run(*, profile: bool = True) -> Report:
    """Run B1 and return its report."""
    report = Report(name="B1", title="overhead: client CPU per task")
    args = ("--duration", "0", "0", "--invisible-for", "0", "--no-submit-limit")
    async with fake_server(*args) as fake:
        # Warm both (imports, first connections, the fake's caches) before measuring.
        await _baseline_round(fake, WARMUP_TASKS, None)
        await _midvary_round(fake, WARMUP_TASKS, None)
        pairs: list[tuple[Round, Round]] = []
        for number in range(ROUNDS):
            # Which client goes first alternates: neither always runs in the other's wake.
            if number % 2 == 0:
                base_round = await _baseline_round(fake, TASKS, None)
                ours_round = await _midvary_round(fake, TASKS, None)
            else:
                ours_round = await _midvary_round(fake, TASKS, None)
                base_round = await _baseline_round(fake, TASKS, None)
            pairs.append((base_round, ours_round))
        profiles: dict[str, cProfile.Profile] = {}
        if profile:
            for client, round_ in (("baseline", _baseline_round), ("midvary", _midvary_round)):
                profiles[client] = cProfile.Profile()
                await round_(fake, PROFILE_TASKS, profiles[client])

    report.say(
        f"{TASKS} tasks finished at creation, {CONCURRENCY} in flight, poll {INTERVAL} s "
        f"after submission; {ROUNDS} pairs of rounds (after a warm-up), one round of each "
        "client per pair, the order alternating; a full garbage collection before each round, "
        "outside the measured span. CPU is user + system time of this process (getrusage); "
        "the fake runs in another process."
    )
    report.say("")
    report.say(
        "| pair | first | baseline CPU ms/task | midvary CPU ms/task | ratio | wall s "
        "(baseline, midvary) | requests/task |"
    )
    report.say("|---|---|---|---|---|---|---|")
    for number, (base_round, ours_round) in enumerate(pairs):
        report.say(
            f"| {number + 1} | {'baseline' if number % 2 == 0 else 'midvary'} | "
            f"{base_round.cpu_per_task * 1000:.3f} | {ours_round.cpu_per_task * 1000:.3f} | "
            f"{ours_round.cpu_per_task / base_round.cpu_per_task:.2f} | "
            f"{base_round.wall:.2f}, {ours_round.wall:.2f} | "
            f"{base_round.requests / base_round.tasks:.2f}, "
            f"{ours_round.requests / ours_round.tasks:.2f} |"
        )
    base = median(b.cpu_per_task for b, _ in pairs)
    ours = median(o.cpu_per_task for _, o in pairs)
    base_requests = median(b.requests / b.tasks for b, _ in pairs)
    our_requests = median(o.requests / o.tasks for _, o in pairs)
    ratios = sorted(o.cpu_per_task / b.cpu_per_task for b, o in pairs)
    ratio = median(ratios)
    low, high = quantile(ratios, 0.25), quantile(ratios, 0.75)
    report.say("")
    report.say(
        f"Median of the {ROUNDS} paired ratios: {ratio:.2f} (middle half {low:.2f}-{high:.2f}, "
        f"all {ratios[0]:.2f}-{ratios[-1]:.2f}). Median CPU per task: midvary "
        f"{ours * 1000:.3f} ms, baseline {base * 1000:.3f} ms (ratio of medians "
        f"{ours / base:.2f}); lowest of each: "
        f"{min(o.cpu_per_task for _, o in pairs) * 1000:.3f} vs "
        f"{min(b.cpu_per_task for b, _ in pairs) * 1000:.3f} ms. Requests per task: midvary "
        f"{our_requests:.2f}, baseline {base_requests:.2f}, so CPU per request compares the "
        "same way."
    )
    if low <= TARGET_RATIO <= high:
        report.say(
            f"The middle half of the paired ratios spans the target ({TARGET_RATIO:.2f}): on "
            "this machine the verdict is within the noise."
        )
    report.check(
        "CPU per task, midvary / baseline (median of paired rounds)",
        f"<= {TARGET_RATIO:.2f}x",
        f"{ratio:.2f}x (middle half {low:.2f}-{high:.2f}; {ours * 1000:.2f} vs "
        f"{base * 1000:.2f} ms/task)",
        ratio <= TARGET_RATIO,
    )
    report.check(
        "requests per task (midvary, baseline)",
        "equal",
        f"{our_requests:.2f}, {base_requests:.2f}",
        abs(our_requests - base_requests) < 0.01,
    )
    if profiles:
        _profile_report(report, profiles)
    return report


def _profile_report(report: Report, profiles: dict[str, cProfile.Profile]) -> None:
    report.say("")
    report.say(
        f"cProfile of one round of {PROFILE_TASKS} tasks per client (profiling inflates "
        "every figure; compare shares). Own time per library; a C function's time is "
        "charged to the library that called it:"
    )
    report.say("")
    tables = {client: by_library(profiler) for client, profiler in profiles.items()}
    names = sorted(
        set().union(*tables.values()),
        key=lambda name: -max(table.get(name, 0.0) for table in tables.values()),
    )
    report.say("| library | baseline ms/task | midvary ms/task | midvary extra ms/task |")
    report.say("|---|---|---|---|")
    for name in names:
        base = tables["baseline"].get(name, 0.0) * 1000 / PROFILE_TASKS
        ours = tables["midvary"].get(name, 0.0) * 1000 / PROFILE_TASKS
        report.say(f"| {name} | {base:.3f} | {ours:.3f} | {ours - base:+.3f} |")
    base_total = sum(tables["baseline"].values()) * 1000 / PROFILE_TASKS
    our_total = sum(tables["midvary"].values()) * 1000 / PROFILE_TASKS
    report.say(
        f"| **total** | {base_total:.3f} | {our_total:.3f} | {our_total - base_total:+.3f} |"
    )
    report.say("")
    report.say("midvary's run, heaviest functions of midvary and the libraries only it uses:")
    report.say("")
    report.say("| function | calls | own ms/task | cumulative ms/task |")
    report.say("|---|---|---|---|")
    only_ours = {"midvary", "tenacity", "attrs", "cattrs", "logging", "typing", "enum", "datetime"}
    for where, calls, own, cum in top_functions(profiles["midvary"], libraries=only_ours, limit=25):
        report.say(
            f"| `{where}` | {calls} | {own * 1000 / PROFILE_TASKS:.4f} | "
            f"{cum * 1000 / PROFILE_TASKS:.4f} |"
        )


if __name__ == "__main__":
    asyncio.run(run())
