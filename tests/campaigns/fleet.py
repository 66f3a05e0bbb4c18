"""Real processes for the fleet campaigns: arq workers on one Redis, the fake provider apart.

:func:`arq_campaign` runs campaign R10 (and benchmark B8 uses it without kills): a Redis
server, the fake provider as ``python -m midvary fake-server``, K ``python -m arq`` worker
processes on :class:`ArqSettings`, N ``vary`` jobs enqueued through arq, and optionally a
worker SIGKILLed at seeded moments and restarted each time. It returns the figures: every
job's result, the fake's billing (duplicate submissions), and which jobs were in flight on
each killed worker (read from arq's own log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = "tests.campaigns.fleet_settings.ArqSettings"
# arq's log lines: "  0.01s → <job id>:vary(...)" when a job starts, "←" when it ends.
_STARTED = re.compile(r"→ (?P<job>\S+):vary\(")
_ENDED = re.compile(r"[←↻!] (?P<job>\S+):vary\b")
_READY = 30.0


@attrs.define
class FakeProcess:
    """The fake provider in its own process (``python -m midvary fake-server``)."""

    process: asyncio.subprocess.Process
    values: dict[str, str]

    @property
    def base_url(self) -> str:
        """The fake's API base URL."""
        return self.values["base_url"]

    @property
    def api_key(self) -> str:
        """The fake's (fake) API key."""
        return self.values["api_key"]

    async def maintenance(self, on: bool) -> None:
        """Switch the fake's maintenance on or off (``POST /_fake/maintenance``)."""
        url = f"{self.base_url}/_fake/maintenance"
        async with aiohttp.ClientSession() as http, http.post(url, json={"on": on}) as answer:
            answer.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        """The fake's figures (``GET /_fake/stats``)."""
        async with aiohttp.ClientSession() as http, http.get(self.values["stats_url"]) as answer:
            answer.raise_for_status()
            figures: dict[str, Any] = await answer.json()
            return figures


@contextlib.asynccontextmanager
async def fake_process(*args: str) -> AsyncIterator[FakeProcess]:
    """Start the fake provider's process with ``args``; SIGTERM it on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "midvary", "fake-server", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        values: dict[str, str] = {}
        assert process.stdout is not None
        async with asyncio.timeout(_READY):
            while (line := (await process.stdout.readline()).decode().strip()) != "ready":
                if not line:
                    raise RuntimeError("the fake server exited before it was ready")
                name, _, value = line.partition(" ")
                values[name] = value
        yield FakeProcess(process, values)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()


class WorkerProcess:
    """One worker process slot: started, SIGKILLed, restarted; each life logs apart.

    Each life runs ``command`` in a process group of its own, so that a kill or a stop
    reaches the processes it started (a Celery pool's) too. ``jobs_in_flight`` reads the
    job ids a life started and did not end from its log.
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        workdir: Path,
        command: Sequence[str],
        jobs_in_flight: Callable[[Path], set[str]],
    ) -> None:
        self.name = name
        self.env = dict(env)
        self.workdir = workdir
        self.command = tuple(command)
        self.jobs_in_flight = jobs_in_flight
        self.lives: list[Path] = []
        self.killed: list[Path] = []  # the logs of the lives ended by SIGKILL
        self._process: asyncio.subprocess.Process | None = None
        self._log: Any = None

    async def start(self) -> None:
        """Start a new life of this worker."""
        log = self.workdir / f"{self.name}-{len(self.lives)}.log"
        self.lives.append(log)
        self._log = log.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdout=self._log, stderr=self._log, cwd=ROOT, env=self.env, start_new_session=True,
        )  # fmt: skip

    def running_jobs(self) -> set[str]:
        """Jobs this life has started and not ended, from its log so far."""
        return self.jobs_in_flight(self.lives[-1]) if self.lives else set()

    async def kill(self) -> None:
        """SIGKILL this life's process group (nothing of it runs after this returns)."""
        process, self._process = self._process, None
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        self._log.close()
        self.killed.append(self.lives[-1])

    async def stop(self) -> None:
        """Stop this life gracefully (SIGTERM), then SIGKILL whatever of its group is left."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        self._log.close()


async def stop_all(fleet: Sequence[WorkerProcess]) -> None:
    """Stop every worker at once (a Celery worker's warm shutdown takes seconds)."""
    stopped = await asyncio.gather(*(worker.stop() for worker in fleet), return_exceptions=True)
    for outcome in stopped:
        if isinstance(outcome, BaseException):
            raise outcome


class ArqWorker(WorkerProcess):
    """An arq worker (``python -m arq SETTINGS``); SIGTERM makes arq re-queue its jobs."""

    def __init__(self, name: str, env: Mapping[str, str], workdir: Path, settings: str) -> None:
        super().__init__(name, env, workdir, (sys.executable, "-m", "arq", settings), in_flight)


def in_flight(log: Path) -> set[str]:
    """The job ids a worker's life started and did not end, from arq's log lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    started = {m["job"] for m in _STARTED.finditer(text)}
    ended = Counter(m["job"] for m in _ENDED.finditer(text))
    runs = Counter(m["job"] for m in _STARTED.finditer(text))
    return {job for job in started if runs[job] > ended[job]}


class Outcomes:
    """What every kill campaign's figures have: one result dict per job, and the billing."""

    jobs: int
    results: dict[str, dict[str, Any]]
    missing: dict[str, str]
    in_flight_at_kills: frozenset[str]
    tasks_created: int
    duplicates: int

    def states(self) -> Counter[str]:
        """How many results per state."""
        return Counter(result["state"] for result in self.results.values())

    def uncertain(self) -> set[str]:
        """The job ids whose result is uncertain."""
        return {job for job, result in self.results.items() if result["state"] == "uncertain"}


def assert_billed_once(figures: Outcomes) -> None:
    """Every job has a result, nothing billed twice, uncertain only for jobs hit by a kill."""
    assert figures.missing == {}
    assert len(figures.results) == figures.jobs
    assert figures.duplicates == 0
    assert set(figures.states()) <= {"succeeded", "uncertain"}, figures.states()
    assert figures.uncertain() <= figures.in_flight_at_kills
    succeeded = [r for r in figures.results.values() if r["state"] == "succeeded"]
    task_ids = [r["task_id"] for r in succeeded]
    assert all(task_ids)
    assert len(set(task_ids)) == len(task_ids)
    assert all(r["image_urls"] and r["error"] is None for r in succeeded)
    # Each uncertain key billed at most once (its POST may or may not have been accepted).
    assert len(succeeded) <= figures.tasks_created <= len(succeeded) + len(figures.uncertain())


@attrs.frozen(kw_only=True)
class ArqFigures(Outcomes):
    """What one arq campaign saw.

    Attributes:
        jobs: Jobs enqueued.
        results: Job id -> the job's result dict (jobs without a result are missing).
        missing: Job ids whose ``job.result()`` raised, with the error.
        kills: SIGKILLs done.
        in_flight_at_kills: Job ids running on a worker when it was SIGKILLed.
        tasks_created: Submissions the fake accepted.
        duplicates: Accepted submissions that repeated an earlier one (billed twice).
        rate_limited: HTTP 429 answers of the fake.
        makespan: Seconds from the first enqueue to the last result.
        workers: Worker processes.
        outage_lines: Per worker life (its log's name): the outage warnings it printed,
            ``(started, ended)``.

    """

    jobs: int
    results: dict[str, dict[str, Any]]
    missing: dict[str, str]
    kills: int
    in_flight_at_kills: frozenset[str]
    tasks_created: int
    duplicates: int
    rate_limited: int
    makespan: float
    workers: int
    outage_lines: dict[str, tuple[int, int]] = attrs.field(factory=dict)


async def arq_campaign(
    *,
    jobs: int,
    redis_url: str,
    workdir: Path,
    workers: int = 2,
    kills: int = 0,
    seed: int = 0,
    fake_args: tuple[str, ...] = ("--duration", "0.5", "1.5", "--no-submit-limit"),
    submit_rate: str = "none",
    max_jobs: int = 10,
    settings: str = SETTINGS,
    prefix: str = "r10",
    maintenance: float | None = None,
) -> ArqFigures:
    """Run ``jobs`` vary jobs on ``workers`` arq workers, SIGKILLing one ``kills`` times.

    ``maintenance``: a window of that many seconds (every endpoint answers 455) once a tenth
    of the jobs' tasks exist; ``None`` for none.
    """
    rng = random.Random(seed)
    async with fake_process("--invisible-for", "0", "--seed", str(seed), *fake_args) as fake:
        env = os.environ | {
            "MIDVARY_API_KEY": fake.api_key,
            "MIDVARY_BASE_URL": fake.base_url,
            "MIDVARY_REDIS_URL": redis_url,
            "MIDVARY_SUBMIT_RATE": submit_rate,
            "MIDVARY_CONCURRENCY": str(max_jobs),
            "MIDVARY_CLAIM_LEASE": "2",
            "PYTHONUNBUFFERED": "1",
        }
        fleet = [ArqWorker(f"w{i}", env, workdir, settings) for i in range(workers)]
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            for worker in fleet:
                await worker.start()
            started = time.monotonic()
            enqueued: list[Job] = []
            for i in range(jobs):
                key = f"{prefix}/{i}"
                job = await pool.enqueue_job(
                    "vary", f"parent-{prefix}-{i // 4}", i % 4, key=key, _job_id=key
                )
                assert job is not None, f"job {key} was enqueued before"
                enqueued.append(job)
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                victim = rng.choice(fleet)
                # Kill mid-run, with jobs on it: its log is a file, not an event to wait on.
                while not victim.running_jobs():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                await victim.kill()
                await victim.start()
            window = (
                asyncio.ensure_future(_window(fake, jobs // 10, maintenance))
                if maintenance is not None
                else None
            )
            results, missing = await _collect(enqueued)
            makespan = time.monotonic() - started
            if window is not None:
                await window
        finally:
            await stop_all(fleet)
            await pool.aclose()
        stats = await fake.stats()
    return ArqFigures(
        jobs=jobs,
        results=results,
        missing=missing,
        kills=kills,
        in_flight_at_kills=frozenset(
            job for worker in fleet for log in worker.killed for job in in_flight(log)
        ),
        tasks_created=int(stats["tasks_created"]),
        duplicates=int(stats["duplicate_submissions"]),
        rate_limited=int(stats["rate_limited"]),
        makespan=makespan,
        workers=workers,
        outage_lines={log.name: _outage_lines(log) for worker in fleet for log in worker.lives},
    )


async def _window(fake: FakeProcess, after_tasks: int, seconds: float) -> None:
    """Maintenance for ``seconds`` once ``after_tasks`` tasks exist."""
    async with asyncio.timeout(60):
        while (await fake.stats())["tasks_created"] < after_tasks:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.02)
    await fake.maintenance(True)
    await asyncio.sleep(seconds)  # the window's length
    await fake.maintenance(False)


def _outage_lines(log: Path) -> tuple[int, int]:
    """The outage warnings a worker's life printed: ``(started, ended)``."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("requests paused, next try in"), text.count("is over after")


async def _collect(jobs: list[Job]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    results: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}

    async def one(job: Job) -> None:
        try:
            result = await job.result(timeout=120, poll_delay=0.1)
        except Exception as exc:
            missing[job.job_id] = f"{type(exc).__name__}: {exc}"
        else:
            json.dumps(result)  # the result is JSON-able
            results[job.job_id] = result

    await asyncio.gather(*(one(job) for job in jobs))
    return results, missing
