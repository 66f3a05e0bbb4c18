"""B1 overhead: client CPU seconds per task, midvary against a hand-written aiohttp client.

2,000 tasks that are finished the moment they are created (duration 0, visible at once), 64
in flight, so the work is the requests themselves: one submission and one poll per task for
both clients (midvary with a fixed first-poll delay and no learning; the baseline sleeps
the same interval). Rounds alternate between the two clients; the medians are compared.
"""

from __future__ import annotations

import asyncio
import cProfile
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
    run_concurrently,
    session_options,
)
from ._profile import by_library, top_functions

TASKS = 2_000
CONCURRENCY = 64
ROUNDS = 9
WARMUP_TASKS = 200
PROFILE_TASKS = 1_000
#: Seconds from submission to the (only) poll, for both clients.
INTERVAL = 0.01
TARGET_RATIO = 1.15


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
        rounds: list[Round] = []
        for _ in range(ROUNDS):
            rounds.append(await _baseline_round(fake, TASKS, None))
            rounds.append(await _midvary_round(fake, TASKS, None))
        profiles: dict[str, cProfile.Profile] = {}
        if profile:
            for client, round_ in (("baseline", _baseline_round), ("midvary", _midvary_round)):
                profiles[client] = cProfile.Profile()
                await round_(fake, PROFILE_TASKS, profiles[client])

    report.say(
        f"{TASKS} tasks finished at creation, {CONCURRENCY} in flight, poll {INTERVAL} s "
        f"after submission; {ROUNDS} alternating rounds per client (after a warm-up). CPU is "
        "user + system time of this process (getrusage); the fake runs in another process."
    )
    report.say("")
    report.say("| round | client | CPU s | CPU ms/task | wall s | requests/task |")
    report.say("|---|---|---|---|---|---|")
    for number, item in enumerate(rounds):
        report.say(
            f"| {number // 2 + 1} | {item.client} | {item.cpu:.2f} | "
            f"{item.cpu_per_task * 1000:.3f} | {item.wall:.2f} | {item.requests / item.tasks:.2f} |"
        )
    base = median(r.cpu_per_task for r in rounds if r.client == "baseline")
    ours = median(r.cpu_per_task for r in rounds if r.client == "midvary")
    base_requests = median(r.requests / r.tasks for r in rounds if r.client == "baseline")
    our_requests = median(r.requests / r.tasks for r in rounds if r.client == "midvary")
    ratio = ours / base
    # Each midvary round against the baseline round just before it, to show the noise of a
    # shared machine: neighbours see about the same load.
    paired = sorted(
        ours_round.cpu_per_task / base_round.cpu_per_task
        for base_round, ours_round in zip(rounds[::2], rounds[1::2], strict=True)
    )
    report.say("")
    report.say(
        f"median CPU per task: midvary {ours * 1000:.3f} ms, baseline {base * 1000:.3f} ms, "
        f"ratio {ratio:.2f} (the {ROUNDS} paired rounds: median {median(paired):.2f}, "
        f"range {paired[0]:.2f}-{paired[-1]:.2f}; lowest CPU per task of each client: "
        f"{min(r.cpu_per_task for r in rounds if r.client == 'midvary') * 1000:.3f} vs "
        f"{min(r.cpu_per_task for r in rounds if r.client == 'baseline') * 1000:.3f} ms). "
        f"Requests per task: midvary {our_requests:.2f}, baseline {base_requests:.2f}, so CPU "
        "per request compares the same way."
    )
    report.check(
        "CPU per task, midvary / baseline",
        f"<= {TARGET_RATIO:.2f}x",
        f"{ratio:.2f}x ({ours * 1000:.2f} vs {base * 1000:.2f} ms/task)",
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
