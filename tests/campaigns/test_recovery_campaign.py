"""Campaign R13: lost answers recovered by callback, with a worker SIGKILLed.

Real worker processes (``keyed_worker``) run keyed jobs on a shared Redis store, each
serving a :class:`midvary.CallbackReceiver` behind a load balancer in this process (it
sends each callback to a live worker picked at random, the next one if that one is gone).
The fake provider loses 10% of its answers after creating the task, and calls every task
back. One worker is SIGKILLed at a seeded point of the run's progress and its unfinished
jobs are re-delivered to a new worker with the same keys (what a queue does).

Every lost answer whose task the provider created must be recovered: by the worker that
lost it, or, for the victim's, by the re-delivered job (the victim's token is in the store,
findable from its key, and a live worker kept the task the callback named). A job may end
uncertain only if the provider created no task for it (a POST cut before it arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import attrs
import pytest
from aiohttp import web

from midvary.testing import FakeProvider, FakeSettings

from ..store.redis_server import RedisServer
from .test_shared_store import Worker, _start

#: Seconds a callback token lives in the campaign: past a task's end, its callback, a
#: replica's bind wait (5 s) and a retry; a POST cut before it arrived waits this long.
TOKEN_TTL = 20.0

R13_SETTINGS = FakeSettings(
    task_duration=(0.2, 0.6),
    invisible_for=0.01,
    submit_limit=None,
    latency=(0.02, 0.25),
    drop_submit_answer_rate=0.1,
    callback_retry_delays=(0.5, 1.0, 2.0, 4.0),
)


@pytest.fixture
def fake_settings() -> FakeSettings:
    """10% of answers lost, slow enough answers that the kill lands on POSTs in flight."""
    return R13_SETTINGS


@attrs.frozen(kw_only=True)
class R13Figures:
    """What one R13 run measured."""

    jobs: int
    replicas: int
    kills: int
    done: int
    recovered: int
    lost_answers: int
    uncertain: int
    uncertain_created: int
    billed: int
    duplicates: int
    failed: int


class Balancer:
    """A load balancer in front of the workers' receivers: a random live one per callback."""

    def __init__(self, rng: random.Random) -> None:
        self.workers: list[Worker] = []
        self.http: aiohttp.ClientSession | None = None
        self._rng = rng

    def _ports(self) -> list[int]:
        ports = [
            int(str(line["port"]))
            for worker in self.workers
            if worker.process.returncode is None and not worker.killed
            for line in worker.lines
            if "port" in line
        ]
        self._rng.shuffle(ports)
        return ports

    async def forward(self, request: web.Request) -> web.Response:
        """Pass one callback on to a live worker; its answer, or 503 when none is up."""
        assert self.http is not None
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        for port in self._ports():
            url = f"http://127.0.0.1:{port}{request.path}"
            try:
                async with self.http.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    return web.Response(status=answer.status)
            except aiohttp.ClientConnectionError:
                continue  # that worker is gone: the next one
        return web.Response(status=503)


@contextlib.asynccontextmanager
async def balancing(rng: random.Random) -> AsyncIterator[tuple[Balancer, str]]:
    """A balancer serving on a free port; yield it and its public callback URL."""
    balancer = Balancer(rng)
    app = web.Application()
    app.router.add_post("/midvary/callback/{token}", balancer.forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        balancer.http = http
        try:
            yield balancer, f"http://127.0.0.1:{port}/midvary/callback"
        finally:
            await runner.cleanup()


async def recovery_run(
    fake: FakeProvider, redis_url: str, *, jobs: int, replicas: int, seed: int
) -> R13Figures:
    """Run ``jobs`` keyed jobs on ``replicas`` workers, SIGKILL one, re-deliver; figures."""
    rng = random.Random(seed)
    all_jobs = [f"job-{i}=parent-{i // 4}:{i % 4}" for i in range(jobs)]
    progress = asyncio.Event()
    async with balancing(rng) as (balancer, public_url):
        env = {
            **os.environ,
            "MIDVARY_BASE_URL": fake.base_url,
            "MIDVARY_API_KEY": fake.api_key,
            "MIDVARY_TEST_NAMESPACE": f"r13-{uuid.uuid4().hex[:8]}",
            "MIDVARY_TEST_LEASE": "1.0",
            "MIDVARY_TEST_CALLBACK_URL": public_url,
            "MIDVARY_TEST_TOKEN_TTL": str(TOKEN_TTL),
        }
        share = -(-len(all_jobs) // replicas)
        live = [
            await _start(redis_url, all_jobs[n : n + share], env, progress)
            for n in range(0, len(all_jobs), share)
        ]
        balancer.workers.extend(live)
        point = rng.randrange(2, max(3, jobs * 3 // 4))

        def sent() -> int:
            return sum(1 for w in balancer.workers for line in w.lines if "sending" in line)

        def victims() -> list[Worker]:  # running, with jobs not finished yet
            return [
                w
                for w in live
                if w.process.returncode is None
                and any(w.key_of(j) not in w.finished_keys() for j in w.jobs)
            ]

        kills = 0
        while sent() < point and victims():
            progress.clear()
            await progress.wait()
        if running := victims():
            victim = rng.choice(running)
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
            assert victim.reader is not None
            await victim.reader
            victim.killed = True
            kills += 1
            live.remove(victim)
            left = [j for j in victim.jobs if victim.key_of(j) not in victim.finished_keys()]
            if left:  # the queue re-delivers the unfinished jobs, with the same keys
                again = await _start(redis_url, left, env, progress)
                live.append(again)
                balancer.workers.append(again)
        for worker in live:
            await asyncio.wait_for(worker.process.wait(), timeout=180)
            assert worker.reader is not None
            await worker.reader
            assert worker.process.returncode == 0, worker.stderr[-3000:]
    outcomes: dict[object, dict[str, object]] = {}
    for worker in balancer.workers:
        for line in worker.lines:
            if "done" in line:
                outcomes[line["done"]] = line
    assert set(outcomes) == {job.partition("=")[0] for job in all_jobs}
    created = {(task.parent_task_id, task.image_index) for task in fake.tasks.values()}
    targets = {
        key: (parent, int(index))
        for key, _, target in (job.partition("=") for job in all_jobs)
        for parent, _, index in [target.rpartition(":")]
    }
    uncertain = [key for key, line in outcomes.items() if line["uncertain"]]
    stats = fake.stats
    return R13Figures(
        jobs=jobs,
        replicas=replicas,
        kills=kills,
        done=sum(1 for line in outcomes.values() if line["error"] is None),
        recovered=sum(1 for line in outcomes.values() if line["recovered"]),
        lost_answers=stats.dropped_submit_answers,
        uncertain=len(uncertain),
        uncertain_created=sum(1 for key in uncertain if targets[str(key)] in created),
        billed=stats.tasks_created,
        duplicates=stats.duplicate_submissions,
        failed=sum(1 for line in outcomes.values() if line["error"] and not line["uncertain"]),
    )


def assert_recovered(figures: R13Figures) -> None:
    """Every created task's job succeeded (lost answers recovered); nothing billed twice."""
    assert figures.kills == 1, figures
    assert figures.lost_answers > 0, figures
    assert figures.recovered >= figures.lost_answers, figures
    assert figures.uncertain_created == 0, figures
    assert figures.duplicates == 0, figures
    assert figures.failed == 0, figures
    assert figures.done + figures.uncertain == figures.jobs, figures
    assert figures.billed == figures.done, figures


@pytest.mark.timeout(300)
@pytest.mark.parametrize("replicas", [1, 2])
async def test_r13_lost_answers_are_recovered(
    fake_provider: FakeProvider, redis_session_server: RedisServer, replicas: int
) -> None:
    """R13 (reduced): 80 keyed jobs, 10% answers lost, one SIGKILL: all created recovered.

    80, not fewer: the fake draws each loss (seeded, but in the order requests arrive), and
    the run must lose some (none of 80 at 10%: 0.02%).
    """
    figures = await recovery_run(
        fake_provider, redis_session_server.url, jobs=80, replicas=replicas, seed=13
    )
    assert_recovered(figures)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_r13_full(
    fake_provider: FakeProvider, redis_session_server: RedisServer, replicas: int, seed: int
) -> None:
    """R13 (full): 200 keyed jobs, 10% answers lost, one SIGKILL: all created recovered."""
    figures = await recovery_run(
        fake_provider, redis_session_server.url, jobs=200, replicas=replicas, seed=seed
    )
    assert_recovered(figures)
