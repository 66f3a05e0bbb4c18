"""Campaigns R8 and R9: keyed jobs through a shared store, with workers and Redis failing.

R8: an at-least-once runner (what arq, Celery and every queue do) gives keyed jobs to real
worker processes (``keyed_worker``), SIGKILLs workers at seeded moments and re-delivers the
unfinished jobs of each one to a new worker with the same keys. The fake provider runs in
this process, reached by the workers over loopback, and counts what is billed.

R9: Redis stopped and restarted under a running session: with its append-only file nothing
is sent twice and no task id is lost; without it, submissions stop with StoreError.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import attrs
import pytest

import midvary
from midvary.testing import FAST_POLL, FAST_RETRY, FakeProvider, FakeSettings

from ..store.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
WORKER_CONCURRENCY_JOBS = 12


@attrs.define
class Worker:
    """One worker process, the jobs it was given and the lines it printed."""

    process: asyncio.subprocess.Process
    jobs: list[str]
    lines: list[dict[str, object]] = attrs.field(factory=list)
    reader: asyncio.Task[None] | None = None
    killed: bool = False
    stderr: str = ""

    def key_of(self, job: str) -> str:
        """The key of a job ``key=parent:index``."""
        return job.partition("=")[0]

    def finished_keys(self) -> set[object]:
        """Keys whose outcome this worker printed."""
        return {line["done"] for line in self.lines if "done" in line}

    def in_flight(self) -> set[object]:
        """Keys whose POST was sent and no answer seen (SUBMITTING without SUBMITTED)."""
        sending: set[object] = set()
        for line in self.lines:
            if "sending" in line:
                sending.add(line["sending"])
            elif "submitted" in line or "done" in line:
                sending.discard(line.get("submitted", line.get("done")))
        return sending


@attrs.frozen(kw_only=True)
class R8Figures:
    """What one R8 run measured."""

    jobs: int
    kills: int
    workers: int
    done: int
    uncertain: int
    at_risk: int
    billed: int
    duplicates: int
    failed: int


async def _start(
    where: str, jobs: list[str], env: dict[str, str], progress: asyncio.Event
) -> Worker:
    """Start a worker on ``jobs``; ``progress`` is set at each line it prints and at its end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.campaigns.keyed_worker", where, *jobs,
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    worker = Worker(process=process, jobs=jobs)

    async def read() -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        async for raw in process.stdout:
            worker.lines.append(json.loads(raw))
            progress.set()
        worker.stderr = (await errors).decode(errors="replace")
        progress.set()

    worker.reader = asyncio.create_task(read())
    return worker


def _inspector(where: str, namespace: str) -> midvary.SQLiteStore | midvary.RedisStore:
    """The runner's own view of the workers' store (the same as ``keyed_worker``'s)."""
    if where.startswith("redis://"):
        return midvary.RedisStore(where, namespace=namespace)
    return midvary.SQLiteStore(where)


async def _sending(store: midvary.SQLiteStore | midvary.RedisStore, victim: Worker) -> set[object]:
    """The victim's keys the store holds as sending (read before anything takes them over)."""
    keys: set[object] = {victim.key_of(job) for job in victim.jobs}
    return keys & {job.key for job in await store.unfinished() if job.state == "sending"}


async def at_least_once(
    fake: FakeProvider, where: str, *, jobs: int, kills: int, seed: int, namespace: str
) -> R8Figures:
    """Run ``jobs`` keyed jobs on 2 workers, SIGKILL ``kills`` of them, re-deliver; figures.

    The kills come at seeded points of the run's progress (the k-th once that many POSTs
    were started, all before three quarters of the jobs' first POSTs), so each lands while
    the run still has jobs, and likely POSTs, in flight, however fast the machine is.

    In flight at a kill: a key the victim had announced sending (its POST about to leave)
    and not finished, or one the store holds as sending for it. The store marks a key
    sending with its claim (one round trip fewer), a moment before the POST leaves and the
    worker can say so: a kill in that moment leaves the key uncertain, though no POST may
    have left, which is the safe side.
    """
    rng = random.Random(seed)
    env = {
        **os.environ,
        "MIDVARY_BASE_URL": fake.base_url,
        "MIDVARY_API_KEY": fake.api_key,
        "MIDVARY_TEST_NAMESPACE": namespace,
        "MIDVARY_TEST_LEASE": "1.0",
    }
    all_jobs = [f"job-{i}=parent-{i // 4}:{i % 4}" for i in range(jobs)]
    half = len(all_jobs) // 2
    progress = asyncio.Event()
    live = [
        await _start(where, all_jobs[:half], env, progress),
        await _start(where, all_jobs[half:], env, progress),
    ]
    ended: list[Worker] = []
    at_risk: set[object] = set()
    killed = 0
    started = 2
    points = sorted(rng.sample(range(2, max(3, jobs * 3 // 4)), kills))

    def sent() -> int:
        return sum(1 for w in (*live, *ended) for line in w.lines if "sending" in line)

    def victims() -> list[Worker]:  # running, with jobs not finished yet
        return [
            w
            for w in live
            if w.process.returncode is None
            and any(w.key_of(j) not in w.finished_keys() for j in w.jobs)
        ]

    async with _inspector(where, namespace) as inspector:
        for point in points:
            while sent() < point and victims():
                progress.clear()
                await progress.wait()
            running = victims()
            if not running:
                break
            victim = rng.choice(running)
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
            assert victim.reader is not None
            await victim.reader
            victim.killed = True
            killed += 1
            at_risk |= victim.in_flight() | await _sending(inspector, victim)
            live.remove(victim)
            ended.append(victim)
            left = [j for j in victim.jobs if victim.key_of(j) not in victim.finished_keys()]
            if left:  # the queue re-delivers the unfinished jobs, with the same keys
                live.append(await _start(where, left, env, progress))
                started += 1
    for worker in live:
        await asyncio.wait_for(worker.process.wait(), timeout=120)
        assert worker.reader is not None
        await worker.reader
        assert worker.process.returncode == 0, worker.stderr[-3000:]
        ended.append(worker)
    outcomes: dict[object, dict[str, object]] = {}
    for worker in ended:
        for line in worker.lines:
            if "done" in line:
                outcomes[line["done"]] = line
    assert set(outcomes) == {job.partition("=")[0] for job in all_jobs}
    uncertain = {key for key, line in outcomes.items() if line["uncertain"]}
    failed = [line for line in outcomes.values() if line["error"] and not line["uncertain"]]
    stats = fake.stats
    return R8Figures(
        jobs=jobs,
        kills=killed,
        workers=started,
        done=sum(1 for line in outcomes.values() if line["error"] is None),
        uncertain=len(uncertain),
        at_risk=len(uncertain - at_risk),  # uncertain keys that were NOT in flight at a kill
        billed=stats.tasks_created,
        duplicates=stats.duplicate_submissions,
        failed=len(failed),
    )


CAMPAIGN_SETTINGS = FakeSettings(
    task_duration=(0.2, 0.6), invisible_for=0.01, submit_limit=None, latency=(0.02, 0.25)
)


@pytest.fixture
def fake_settings() -> FakeSettings:
    """Slow enough answers that kills land on POSTs in flight."""
    return CAMPAIGN_SETTINGS


@pytest.fixture(params=["sqlite", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The workers' shared store: a SQLite file, or a real Redis server."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.sqlite")
    server: RedisServer = request.getfixturevalue("redis_session_server")
    return server.url


def assert_at_least_once(figures: R8Figures) -> None:
    """0 duplicates billed, every job done or uncertain, uncertain only when in flight."""
    assert figures.kills >= 1, figures
    assert figures.duplicates == 0, figures
    assert figures.failed == 0, figures
    assert figures.done + figures.uncertain == figures.jobs, figures
    assert figures.at_risk == 0, figures
    assert figures.billed <= figures.jobs, figures


@pytest.mark.timeout(240)
async def test_r8_redelivered_jobs_are_billed_once(fake_provider: FakeProvider, where: str) -> None:
    """R8 (reduced): 24 jobs, up to 3 seeded SIGKILLs, re-delivered: no duplicate billed."""
    figures = await at_least_once(
        fake_provider, where, jobs=24, kills=3, seed=8, namespace=f"r8-{uuid.uuid4().hex[:8]}"
    )
    assert_at_least_once(figures)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_r8_full(fake_provider: FakeProvider, where: str, seed: int) -> None:
    """R8 (full): 80 jobs, 3 seeded SIGKILLs, re-delivered: no duplicate billed."""
    figures = await at_least_once(
        fake_provider, where, jobs=80, kills=3, seed=seed, namespace=f"r8-{uuid.uuid4().hex[:8]}"
    )
    assert_at_least_once(figures)
    assert figures.kills == 3


# -- R9 ------------------------------------------------------------------------------------


async def _run_with_outage(
    fake: FakeProvider, server: RedisServer, *, jobs: int, persistent: bool
) -> tuple[list[midvary.JobOutcome], list[midvary.JobOutcome]]:
    """Run keyed jobs paced by a shared rate; stop Redis mid-run, restart it; re-deliver."""
    requests = [
        midvary.VaryRequest(task_id=f"parent-{i // 4}", image_index=i % 4, key=f"r9/{i}")
        for i in range(jobs)
    ]

    async def outage() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start, persistent=persistent)

    store = midvary.RedisStore(server.url, socket_timeout=2.0, claim_lease=1.0)
    async with (
        store,
        midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=FAST_POLL,
            retry=FAST_RETRY,
            submit_rate=(8, 1.0),
            store=store,
        ) as session,
    ):
        first, _ = await asyncio.gather(session.submit_all(requests, concurrency=8), outage())
        # The queue re-delivers what failed (the store was down): same keys.
        again = [o.request for o in first if not o.ok and o.request is not None]
        second = await session.submit_all(again, concurrency=8)
    return first, second


@pytest.mark.timeout(120)
async def test_r9_redis_restarted_with_aof(
    fake_provider: FakeProvider, redis_server: RedisServer
) -> None:
    """R9: Redis stopped and restarted (AOF) mid-run: 0 duplicates, 0 lost task ids."""
    first, second = await _run_with_outage(fake_provider, redis_server, jobs=40, persistent=True)
    failures = [o.error for o in first if not o.ok]
    assert failures, "the outage hit no submission"
    assert all(isinstance(e, midvary.StoreError) for e in failures), failures
    outcomes = [o for o in first if o.ok] + list(second)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    task_ids = {o.task_id for o in outcomes}
    stats = fake_provider.stats
    assert stats.duplicate_submissions == 0
    assert len(task_ids) == 40
    assert stats.tasks_created == 40  # every billed task's id is in an outcome: none lost


@pytest.mark.timeout(120)
async def test_r9_redis_restarted_without_persistence(
    fake_provider: FakeProvider, redis_server: RedisServer
) -> None:
    """R9: Redis restarted without persistence mid-run: submissions stop with StoreError."""
    first, second = await _run_with_outage(fake_provider, redis_server, jobs=40, persistent=False)
    lost = [o for o in [*first, *second] if isinstance(o.error, midvary.StoreError)]
    assert lost
    assert all("lost its data" in str(o.error) for o in second)
    assert len(second) > 0
    assert fake_provider.stats.duplicate_submissions == 0
    assert fake_provider.stats.tasks_created == sum(1 for o in first if o.ok)
