"""B1 overhead: client CPU per task, midvary beside the same calls hand-written on aiohttp, httpx.

2,000 tasks that are finished the moment they are created (duration 0, visible at once), 64
in flight, so the work is the requests themselves: one submission and one poll per task for
every client (midvary with a fixed first-poll delay and no learning; the hand-written
clients sleep the same interval). The hand-written clients are
:class:`~benchmarks._harness.BaselineClient` on aiohttp (what midvary is built on) and
:class:`~benchmarks._harness.HttpxClient`, the same code on httpx (the stack of the fal,
Replicate and OpenAI SDKs; the ``bench`` extra installs it).

It is a side-by-side guard, not an absolute target: the three clients run in one process,
in rounds of one round each, back to back so that all see about the same load on a shared
machine; the order inside a round rotates so that no client always runs in another's wake.
Before each client's round the garbage collector empties the heap, outside the measured
span. The verdicts are the medians of the rounds' ratios.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

import aiohttp
import attrs
import httpx

import midvary
from midvary import _telemetry

from ._harness import (
    PARENT,
    BaselineClient,
    FakeServer,
    HttpxClient,
    Report,
    cpu_seconds,
    fake_server,
    fixed,
    median,
    run_concurrently,
    session_options,
)

TASKS = 2_000
CONCURRENCY = 64
#: Rounds (one run of each client per round).
ROUNDS = 7
WARMUP_TASKS = 200
#: Seconds from submission to the (only) poll, for every client.
INTERVAL = 0.01
#: midvary's CPU per task at most this many times hand-written aiohttp's (issue 18).
MAX_OVER_AIOHTTP = 1.5
#: ... and at most this share of the same calls hand-written on httpx (issue 18).
MAX_OVER_HTTPX = 0.25
CLIENTS = ("aiohttp", "midvary", "httpx")


@attrs.frozen(kw_only=True)
class Run:
    """One client's run of ``tasks`` tasks; CPU and wall time in seconds."""

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


async def _measured(fake: FakeServer, client: str, tasks: int, jobs: Job) -> Run:
    before = await fake.stats()
    gc.collect()
    cpu, wall = cpu_seconds(), time.perf_counter()
    await run_concurrently(tasks, CONCURRENCY, jobs)
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    after = await fake.stats()
    return Run(client=client, tasks=tasks, cpu=cpu, wall=wall, requests=_requests(before, after))


async def _run(fake: FakeServer, client: str, tasks: int) -> Run:
    """One run of ``client``; its session or HTTP client is opened inside the measured span."""
    if client == "midvary":
        return await _midvary_run(fake, tasks)
    return await _hand_written_run(fake, client, tasks)


async def _midvary_run(fake: FakeServer, tasks: int) -> Run:
    policy = midvary.PollPolicy(initial_delay=INTERVAL, jitter=0.0, target_delay=None)
    options = session_options(poll=policy, submit_rate=None)
    session = midvary.Session(api_key=fake.api_key, base_url=fake.base_url, **options)

    async def job(number: int) -> None:
        handle = await session.vary(PARENT, number % 4)
        await handle

    async with session:
        return await _measured(fake, "midvary", tasks, job)


async def _hand_written_run(fake: FakeServer, client: str, tasks: int) -> Run:
    if client == "aiohttp":
        timeout = aiohttp.ClientTimeout(total=30.0, connect=10.0)
        http: aiohttp.ClientSession | httpx.AsyncClient = aiohttp.ClientSession(timeout=timeout)
        calls = BaselineClient(http, fake.base_url, fake.api_key)
    else:
        # aiohttp's default pool (100 connections) for both, so neither waits for a socket.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), limits=limits)
        calls = HttpxClient(http, fake.base_url, fake.api_key)

    async def job(number: int) -> None:
        task_id = await calls.submit(PARENT, number % 4)
        assert task_id is not None
        await calls.wait(task_id, fixed(INTERVAL))

    async with http:
        return await _measured(fake, client, tasks, job)


def _requests(before: dict[str, object], after: dict[str, object]) -> int:
    def count(figures: dict[str, object]) -> int:
        requests = figures["requests"]
        assert isinstance(requests, dict)
        return int(requests.get("submit", 0)) + int(requests.get("record-info", 0))

    return count(after) - count(before)


async def run() -> Report:
    """Run B1 and return its report."""
    report = Report(name="B1", title="overhead: client CPU per task, side by side")
    args = ("--duration", "0", "0", "--invisible-for", "0", "--no-submit-limit")
    rounds: list[dict[str, Run]] = []
    async with fake_server(*args) as fake:
        for client in CLIENTS:  # imports, first connections, the fake's caches
            await _run(fake, client, WARMUP_TASKS)
        for number in range(ROUNDS):
            # The order rotates: no client always runs in another's wake.
            order = CLIENTS[number % 3 :] + CLIENTS[: number % 3]
            rounds.append({client: await _run(fake, client, TASKS) for client in order})

    report.say(
        f"{TASKS} tasks finished at creation, {CONCURRENCY} in flight, one poll {INTERVAL} s "
        f"after submission; {ROUNDS} rounds (after a warm-up), one run of each client per "
        "round, the order rotating; a full garbage collection before each run, outside the "
        "measured span. CPU is user + system time of this process (getrusage); the fake runs "
        f"in another process. aiohttp {aiohttp.__version__}, httpx {httpx.__version__}. "
        + (
            "The OpenTelemetry API was importable but no SDK was configured, so midvary's "
            "instrumentation made nothing (it waits for a provider to be set)."
            if _telemetry.AVAILABLE
            else "The OpenTelemetry API was not importable (midvary as `pip install midvary` "
            "installs it, without the `otel` extra): its telemetry calls are its own no-ops."
        )
    )
    report.say("")
    report.say(
        "| round | first | aiohttp ms/task | midvary ms/task | httpx ms/task | "
        "midvary / aiohttp | midvary / httpx | requests/task (aiohttp, midvary, httpx) |"
    )
    report.say("|---|---|---|---|---|---|---|---|")
    for number, runs in enumerate(rounds):
        base, ours, other = (runs[client] for client in CLIENTS)
        report.say(
            f"| {number + 1} | {next(iter(runs))} | {base.cpu_per_task * 1000:.3f} | "
            f"{ours.cpu_per_task * 1000:.3f} | {other.cpu_per_task * 1000:.3f} | "
            f"{ours.cpu / base.cpu:.2f} | {ours.cpu / other.cpu:.3f} | "
            + ", ".join(f"{runs[client].requests / runs[client].tasks:.2f}" for client in CLIENTS)
            + " |"
        )
    per_task = {client: median(runs[client].cpu_per_task for runs in rounds) for client in CLIENTS}
    over_aiohttp = sorted(runs["midvary"].cpu / runs["aiohttp"].cpu for runs in rounds)
    over_httpx = sorted(runs["midvary"].cpu / runs["httpx"].cpu for runs in rounds)
    requests = {
        client: median(runs[client].requests / runs[client].tasks for runs in rounds)
        for client in CLIENTS
    }
    report.say("")
    report.say(
        "Median CPU per task: "
        + ", ".join(f"{client} {per_task[client] * 1000:.3f} ms" for client in CLIENTS)
        + f". midvary / aiohttp per round: {over_aiohttp[0]:.2f}-{over_aiohttp[-1]:.2f}; "
        f"midvary / httpx: {over_httpx[0]:.3f}-{over_httpx[-1]:.3f}."
    )
    report.check(
        "CPU per task, midvary / hand-written aiohttp (median of rounds)",
        f"<= {MAX_OVER_AIOHTTP:.2f}x",
        f"{median(over_aiohttp):.2f}x ({per_task['midvary'] * 1000:.3f} vs "
        f"{per_task['aiohttp'] * 1000:.3f} ms/task)",
        median(over_aiohttp) <= MAX_OVER_AIOHTTP,
    )
    report.check(
        "CPU per task, midvary / the same calls hand-written on httpx (median of rounds)",
        f"<= {MAX_OVER_HTTPX:.2f}x",
        f"{median(over_httpx):.3f}x ({per_task['midvary'] * 1000:.3f} vs "
        f"{per_task['httpx'] * 1000:.3f} ms/task)",
        median(over_httpx) <= MAX_OVER_HTTPX,
    )
    report.check(
        "requests per task (aiohttp, midvary, httpx)",
        "equal",
        ", ".join(f"{requests[client]:.2f}" for client in CLIENTS),
        max(requests.values()) - min(requests.values()) < 0.01,
    )
    return report


if __name__ == "__main__":
    asyncio.run(run())
