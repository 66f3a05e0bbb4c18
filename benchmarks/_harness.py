"""What every benchmark shares: the fake-server process, the baseline client, and meters.

The fake provider always runs in a separate process (``python -m midvary.testing._serve``),
so the CPU time and memory measured in this process are the client's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs

import midvary

VARY_PATH: Final = "/api/v1/mj/generateVary"
RECORD_PATH: Final = "/api/v1/mj/record-info"
#: Any id with this prefix is a finished parent task on the fake.
PARENT: Final = "parent-bench"
_READY_TIMEOUT = 30.0


# -- the fake provider in its own process -------------------------------------------------


@attrs.frozen(kw_only=True)
class FakeServer:
    """A running fake-server process and the addresses it printed."""

    process: subprocess.Popen[str]
    base_url: str
    api_key: str
    stats_url: str

    async def stats(self) -> dict[str, Any]:
        """The fake's figures (``GET /_fake/stats``); call it outside measured spans."""
        async with aiohttp.ClientSession() as http, http.get(self.stats_url) as response:
            response.raise_for_status()
            figures: dict[str, Any] = await response.json()
            return figures

    async def update(self, **changes: Any) -> dict[str, Any]:
        """Change the fake's settings at run time (``POST /_fake/settings``)."""
        url = f"{self.base_url}/_fake/settings"
        async with aiohttp.ClientSession() as http, http.post(url, json=changes) as response:
            answer: dict[str, Any] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"the fake refused settings {changes}: {answer}")
            return answer


@contextlib.asynccontextmanager
async def fake_server(*args: str) -> AsyncIterator[FakeServer]:
    """Start ``python -m midvary.testing._serve --port 0 *args``; stop it (SIGTERM) on exit."""
    command = [sys.executable, "-m", "midvary.testing._serve", "--port", "0", *args]
    # Popen returns at once; the banner is read in a thread.
    process = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter and module
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        values = await asyncio.wait_for(asyncio.to_thread(_read_banner, process), _READY_TIMEOUT)
        yield FakeServer(
            process=process,
            base_url=values["base_url"],
            api_key=values["api_key"],
            stats_url=values["stats_url"],
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.communicate, timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _read_banner(process: subprocess.Popen[str]) -> dict[str, str]:
    assert process.stdout is not None
    values: dict[str, str] = {}
    for line in process.stdout:
        key, _, value = line.strip().partition(" ")
        if key == "ready":
            return values
        values[key] = value
    error = process.stderr.read() if process.stderr is not None else ""
    raise RuntimeError(f"the fake server exited before it was ready: {error.strip()}")


def session_options(**options: Any) -> dict[str, Any]:
    """``Session`` keyword arguments; ``submit_rate`` only where this midvary has it.

    Benchmarks that want no client-side submit limit pass ``submit_rate=None``; before the
    fan-out landed there was no limiter, which is the same thing.
    """
    accepted = inspect.signature(midvary.Session).parameters
    return {name: value for name, value in options.items() if name in accepted}


def has_feature(name: str) -> bool:
    """Whether this midvary has a public name (or a ``Session`` method) called ``name``."""
    return hasattr(midvary, name) or hasattr(midvary.Session, name)


# -- the hand-written baseline ------------------------------------------------------------


class BaselineClient:
    """What a careful user writes by hand with aiohttp: the same POST and GET, no library.

    It checks the envelope's code and the task's ``successFlag`` and nothing more (no
    retries, no typed models), which is the least a working client does.
    """

    def __init__(self, http: Any, base_url: str, api_key: str) -> None:
        self._http = http
        self._submit_url = f"{base_url}{VARY_PATH}"
        self._record_url = f"{base_url}{RECORD_PATH}"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.requests = 0

    async def _envelope(self, method: str, url: str, **options: Any) -> dict[str, Any]:
        async with self._http.request(method, url, headers=self._headers, **options) as answer:
            envelope: dict[str, Any] = await answer.json(content_type=None)
        return envelope

    async def submit(self, parent: str, index: int) -> str | None:
        """POST one vary; the task id, or ``None`` when rate limited (429)."""
        self.requests += 1
        body = {"taskId": parent, "imageIndex": index}
        envelope = await self._envelope("POST", self._submit_url, json=body)
        if envelope["code"] == 429:
            return None
        if envelope["code"] != 200:
            raise RuntimeError(f"submit failed: {envelope}")
        task_id: str = envelope["data"]["taskId"]
        return task_id

    async def record(self, task_id: str) -> dict[str, Any] | None:
        """GET one record; ``None`` while the task is not visible yet."""
        self.requests += 1
        envelope = await self._envelope("GET", self._record_url, params={"taskId": task_id})
        if envelope["code"] in (404, 422):
            return None
        if envelope["code"] != 200:
            raise RuntimeError(f"record-info failed: {envelope}")
        data: dict[str, Any] = envelope["data"]
        return data

    async def wait(self, task_id: str, delays: Callable[[int], float]) -> dict[str, Any]:
        """Poll until the task is final; ``delays(n)`` is the sleep before poll ``n`` (1-based)."""
        attempt = 1
        while True:
            await asyncio.sleep(delays(attempt))
            data = await self.record(task_id)
            if data is not None and data["successFlag"] != 0:
                return data
            attempt += 1


class HttpxClient(BaselineClient):
    """:class:`BaselineClient`'s same calls hand-written on httpx (the ``bench`` extra).

    httpx is the HTTP stack of the fal, Replicate and OpenAI SDKs; B1 compares midvary with
    it as with raw aiohttp: the same requests, checks and schedule.
    """

    async def _envelope(self, method: str, url: str, **options: Any) -> dict[str, Any]:
        answer = await self._http.request(method, url, headers=self._headers, **options)
        envelope: dict[str, Any] = answer.json()
        return envelope


def fixed(interval: float) -> Callable[[int], float]:
    """A fixed-interval schedule for :meth:`BaselineClient.wait`."""
    return lambda _attempt: interval


def completed_wall(record: midvary.TaskRecord | dict[str, Any]) -> float:
    """The task's finish time in Unix seconds, from its ``completeTime``."""
    if isinstance(record, midvary.TaskRecord):
        assert record.completed_at is not None
        return record.completed_at.timestamp()
    value = record["completeTime"]
    if isinstance(value, int | float):
        return float(value) / 1000
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


# -- meters -------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (``getrusage(RUSAGE_SELF)``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    """This process's resident set size now, from ``/proc/self/status`` (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


class LagMonitor:
    """Event-loop lag: a ticker sleeps ``interval`` seconds and records the oversleep."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        #: ``(when, lag)``: ``time.perf_counter()`` at each wake-up, and its lag in seconds.
        self.ticks: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self.ticks.append((now, max(0.0, now - started - self.interval)))

    def lags(self, start: float = -math.inf, end: float = math.inf) -> list[float]:
        """The lags, in seconds, of the wake-ups between ``start`` and ``end``."""
        return [lag for when, lag in self.ticks if start <= when < end]

    def start(self) -> None:
        """Start ticking (from inside the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class GcMonitor:
    """Garbage-collector pauses: ``(generation, seconds)`` of each collection while installed."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self) -> GcMonitor:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def run_concurrently(
    count: int, concurrency: int, job: Callable[[int], Awaitable[object]]
) -> None:
    """Run ``job(0) .. job(count - 1)`` with at most ``concurrency`` in flight."""
    jobs = iter(range(count))

    async def worker() -> None:
        for number in jobs:
            await job(number)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(count, concurrency)):
            group.create_task(worker())


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    """The median, NaN when empty."""
    items = list(values)
    return statistics.median(items) if items else math.nan


def mean(values: Iterable[float]) -> float:
    """The mean, NaN when empty."""
    items = list(values)
    return statistics.fmean(items) if items else math.nan


# -- detection figures (B3, B5) -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Sample:
    """One task as a client saw it: its id and seconds from finish to resolution."""

    task_id: str
    delay: float


@attrs.frozen(kw_only=True)
class Figures:
    """One client's tasks, with the fake's figures for them."""

    name: str
    samples: list[Sample]
    polls: list[int]
    fake_delays: list[float]

    @classmethod
    def of(cls, name: str, samples: list[Sample], stats: dict[str, Any]) -> Figures:
        """Join a client's samples with the fake's per-task figures."""
        polls = [int(stats["polls"].get(s.task_id, 0)) for s in samples]
        delays = [float(stats["detection_delays"][s.task_id]) for s in samples]
        return cls(name=name, samples=samples, polls=polls, fake_delays=delays)

    def row(self) -> str:
        """A Markdown table row."""
        delays = [s.delay for s in self.samples]
        return (
            f"| {self.name} | {len(self.samples)} | {mean(self.polls):.2f} | "
            f"{max(self.polls)} | {_seconds(median(delays))} | "
            f"{_seconds(quantile(delays, 0.9))} | {_seconds(max(delays))} | "
            f"{_seconds(median(self.fake_delays))} |"
        )


def _seconds(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


#: The header of :meth:`Figures.row` tables.
HEADER = (
    "| client | tasks | polls/task | max polls | delay median s | p90 s | max s | "
    "fake's delay median s |\n|---|---|---|---|---|---|---|---|"
)


async def run_tasks(session: midvary.Session, count: int) -> list[Sample]:
    """Submit ``count`` tasks at once and await each; the detection delay of each."""

    async def job(number: int) -> Sample:
        handle = await session.vary(PARENT, number % 4)
        record = await handle
        return Sample(task_id=handle.task_id, delay=time.time() - completed_wall(record))

    return list(await asyncio.gather(*(job(n) for n in range(count))))


# -- results ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Check:
    """One target and what was measured against it."""

    benchmark: str
    figure: str
    target: str
    measured: str
    ok: bool | None  # None: a figure without a target, or not measured


@attrs.define(kw_only=True)
class Report:
    """What one benchmark produced: checks against targets, and free-form detail lines."""

    name: str
    title: str
    checks: list[Check] = attrs.field(factory=list)
    details: list[str] = attrs.field(factory=list)
    available: bool = True

    def check(self, figure: str, target: str, measured: str, ok: bool | None) -> None:
        """Add one target line."""
        self.checks.append(
            Check(benchmark=self.name, figure=figure, target=target, measured=measured, ok=ok)
        )

    def say(self, line: str = "") -> None:
        """Add a detail line and print it at once (benchmarks run for minutes)."""
        self.details.append(line)
        print(line, flush=True)


def machine() -> dict[str, str]:
    """The facts about this machine that the figures depend on."""
    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "midvary": midvary.__version__,
        "aiohttp": aiohttp.__version__,
    }


def dumps(data: object) -> str:
    """Compact JSON for child-process answers."""
    return json.dumps(data, separators=(",", ":"))


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A real Redis server (with AOF) in ``workdir`` for B6/B7; ``None`` when none is found."""
    from tests.store.redis_server import RedisServer, find_server  # noqa: PLC0415

    binary = find_server()
    if binary is None:
        yield None
        return
    directory = workdir / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
