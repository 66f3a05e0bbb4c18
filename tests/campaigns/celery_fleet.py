"""Real processes for the Celery kill campaign: Celery workers on a Redis broker, the fake apart.

:func:`celery_campaign` starts the fake provider (``python -m midvary fake-server``), K
``celery worker`` processes (prefork pools) on :mod:`tests.campaigns.celery_app`, sends N
``midvary.vary`` jobs with their key as Celery task id, SIGKILLs a worker (its whole process
group: the pool's processes too) while it runs jobs, and starts it again once the broker
counts the killed worker's messages as lost (Redis ``visibility_timeout``): the restarted
worker's transport delivers them again. It returns every job's result, the fake's billing and
what the workers' logs say was delivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import redis
import redis.asyncio
from celery import Celery

from .fleet import Outcomes, WorkerProcess, fake_process, stop_all

APP = "tests.campaigns.celery_app"
VISIBILITY = 3.0  # seconds: the broker's visibility timeout in the campaign
# Celery's log lines: "Task midvary.vary[<id>] received", "... succeeded in 1.2s: {...}".
_RECEIVED = re.compile(r"Task midvary\.\w+\[(?P<job>[^\]]+)\] received")
_ENDED = re.compile(r"Task midvary\.\w+\[(?P<job>[^\]]+)\] (?:succeeded|retry|raised)")
_RETRIED = re.compile(r"Task midvary\.\w+\[(?P<job>[^\]]+)\] retry")


def _url(base: str, db: int) -> str:
    return base.rsplit("/", 1)[0] + f"/{db}"


def celery_worker(
    name: str, env: Mapping[str, str], workdir: Path, concurrency: int
) -> WorkerProcess:
    """A Celery worker with a prefork pool of ``concurrency`` processes."""
    command = (
        sys.executable, "-m", "celery", "-A", APP, "worker",
        "--loglevel", "INFO", "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", f"{name}@campaign",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    )  # fmt: skip
    return WorkerProcess(name, env, workdir, command, in_flight)


def in_flight(log: Path) -> set[str]:
    """The job ids a worker's life received and did not end, from Celery's log lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    received = Counter(m["job"] for m in _RECEIVED.finditer(text))
    ended = Counter(m["job"] for m in _ENDED.finditer(text))
    return {job for job, count in received.items() if count > ended[job]}


@attrs.frozen(kw_only=True)
class CeleryFigures(Outcomes):
    """What one Celery campaign saw.

    Attributes:
        jobs: Jobs sent.
        results: Job id -> the job's result dict.
        missing: Job ids without a result after 60 s, with their Celery state.
        kills: SIGKILLs done.
        in_flight_at_kills: Job ids a killed worker had received and not ended.
        lost: Job ids the broker lost (popped by a killed worker before it recorded them:
            neither queued nor unacknowledged, no result), sent again with their key.
        deliveries: Job deliveries the workers logged ("received"), retries and
            re-deliveries included.
        redelivered: Job ids delivered again after a kill (received by more than one life).
        retries: Celery retries the workers logged.
        tasks_created: Submissions the fake accepted.
        duplicates: Accepted submissions that repeated an earlier one (billed twice).
        makespan: Seconds from the first job sent to the last result.

    """

    jobs: int
    results: dict[str, dict[str, Any]]
    missing: dict[str, str]
    kills: int
    in_flight_at_kills: frozenset[str]
    lost: frozenset[str]
    deliveries: int
    redelivered: frozenset[str]
    retries: int
    tasks_created: int
    duplicates: int
    makespan: float


async def _lost(broker: str, killed_at: float) -> None:
    """Return once every message delivered before ``killed_at`` is past the visibility timeout.

    kombu's Redis transport keeps unacknowledged deliveries in the ``unacked_index`` sorted
    set, scored by delivery time; a worker starting up restores those older than the
    timeout. Until none delivered before the kill is younger, a restart would leave some.
    """
    client = redis.asyncio.Redis.from_url(broker)
    try:
        # The broker's state is polled: it has no event to wait on.
        while await client.zcount("unacked_index", f"({time.time() - VISIBILITY}", killed_at):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


def _nowhere(broker: redis.Redis, keys: set[str]) -> set[str]:
    """Of ``keys`` (jobs without a result), those neither queued nor held unacknowledged."""
    held = set()
    for raw in [*broker.lrange("celery", 0, -1), *broker.hvals("unacked")]:
        message = json.loads(raw)
        # A queued message is the envelope itself; an unacked one is [envelope, ex, key].
        envelope = message[0] if isinstance(message, list) else message
        held.add(envelope["headers"]["id"])
    return keys - held


def _settle(
    client: Celery, broker_url: str, keys: list[str], resend: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], dict[str, str], set[str]]:
    """Collect every job's result; send again (same key) any job the broker lost.

    A job is lost when it has no result and is neither queued nor held unacknowledged:
    kombu's Redis transport pops a message (BRPOP) before it records it as unacknowledged
    (celery/celery#4354, celery/kombu#305),
    so a worker killed between the two loses it. Sending it again with the same key is what
    a user does (it cannot be billed twice); a job only slow to be recorded, sent again,
    merely re-attaches.
    """
    broker = redis.Redis.from_url(broker_url)
    results: dict[str, dict[str, Any]] = {}
    resent: set[str] = set()
    suspects: set[str] = set()
    deadline = time.monotonic() + 60
    try:
        while len(results) < len(keys) and time.monotonic() < deadline:
            # The backend's metadata, not AsyncResult: its __del__ unsubscribes from a
            # pub/sub channel, which recurses here (celery 5.6 with a Redis backend).
            states = {key: client.backend.get_task_meta(key) for key in keys if key not in results}
            for key, meta in states.items():
                if meta["status"] == "SUCCESS":
                    json.dumps(meta["result"])  # the result is JSON-able
                    results[key] = meta["result"]
            pending = {key for key, meta in states.items() if meta["status"] == "PENDING"}
            # Nowhere twice in a row, 0.2 s apart: a live worker's pop is recorded in micro-
            # seconds, so only a message its killed popper never recorded stays nowhere.
            nowhere = _nowhere(broker, pending - resent)
            for key in nowhere & suspects:
                resend(key)
                resent.add(key)
            suspects = nowhere
            time.sleep(0.2)  # the result backend is polled: there is no event to wait on
    finally:
        broker.close()
    missing = {
        key: client.backend.get_task_meta(key)["status"] for key in keys if key not in results
    }
    return results, missing, resent


async def celery_campaign(
    *,
    jobs: int,
    redis_url: str,
    workdir: Path,
    workers: int = 2,
    concurrency: int = 3,
    kills: int = 1,
    seed: int = 0,
    prefix: str = "c1",
) -> CeleryFigures:
    """Send ``jobs`` vary jobs to ``workers`` Celery workers, SIGKILLing one ``kills`` times."""
    rng = random.Random(seed)
    broker = _url(redis_url, 1)
    fake_args = ("--duration", "0.5", "1.5", "--latency", "0.1", "0.4", "--no-submit-limit")
    async with fake_process("--invisible-for", "0", "--seed", str(seed), *fake_args) as fake:
        env = os.environ | {
            "MIDVARY_API_KEY": fake.api_key,
            "MIDVARY_BASE_URL": fake.base_url,
            "MIDVARY_STORE_URL": redis_url,
            "MIDVARY_SUBMIT_RATE": "none",
            "MIDVARY_CLAIM_LEASE": "2",
            "MIDVARY_TEST_BROKER": broker,
            "MIDVARY_TEST_VISIBILITY": str(VISIBILITY),
            "PYTHONUNBUFFERED": "1",
        }
        fleet = [celery_worker(f"w{i}", env, workdir, concurrency) for i in range(workers)]
        client = Celery("campaign-client", broker=broker, backend=broker)
        in_flight_at_kills: set[str] = set()
        keys = [f"{prefix}/{i}" for i in range(jobs)]
        try:
            for worker in fleet:
                await worker.start()
            started = time.monotonic()

            def send(key: str) -> None:
                i = keys.index(key)
                client.send_task(
                    "midvary.vary",
                    args=(f"parent-{prefix}-{i // 4}", i % 4),
                    kwargs={"key": key, "download": False},
                    task_id=key,
                )

            await asyncio.to_thread(lambda: [send(key) for key in keys])
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                victim = rng.choice(fleet)
                # Kill mid-run, with jobs on it: its log is a file, not an event to wait on.
                while not victim.running_jobs():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                await victim.kill()
                killed_at = time.time()
                in_flight_at_kills |= in_flight(victim.killed[-1])
                await _lost(broker, killed_at)
                await victim.start()
            results, missing, resent = await asyncio.to_thread(_settle, client, broker, keys, send)
            makespan = time.monotonic() - started
        finally:
            await stop_all(fleet)
            client.close()
        stats = await fake.stats()
    logs = [log.read_text(errors="replace") for worker in fleet for log in worker.lives]
    lives_per_job: Counter[str] = Counter()
    for text in logs:
        lives_per_job.update({m["job"] for m in _RECEIVED.finditer(text)})
    return CeleryFigures(
        jobs=jobs,
        results=results,
        missing=missing,
        kills=kills,
        in_flight_at_kills=frozenset(in_flight_at_kills),
        lost=frozenset(resent),
        deliveries=sum(len(_RECEIVED.findall(text)) for text in logs),
        redelivered=frozenset(job for job, lives in lives_per_job.items() if lives > 1),
        retries=sum(len(_RETRIED.findall(text)) for text in logs),
        tasks_created=int(stats["tasks_created"]),
        duplicates=int(stats["duplicate_submissions"]),
        makespan=makespan,
    )
