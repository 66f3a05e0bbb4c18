"""midvary.arq: settings arq can subclass, the environment, and each job outcome."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from arq import Retry
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job
from arq.worker import create_worker, get_kwargs

import midvary
from midvary.arq import (
    WorkerConfig,
    WorkerSettings,
    extend,
    generate,
    session_of,
    shutdown,
    startup,
    upscale,
    vary,
)
from midvary.testing import FakeProvider, FakeSettings

from ..conditions import until
from ..store.redis_server import RedisServer, free_port


class Short(WorkerSettings):
    """Changes only the job timeout, as arq users do."""

    job_timeout = 7.0


async def own_job(ctx: dict[str, Any]) -> str:
    """A job of the user's own."""
    return session_of(ctx).base_url


class Own(Short):
    """Changes the functions too (a grandchild of WorkerSettings)."""

    functions = [own_job]  # noqa: RUF012 - arq's settings are plain class attributes


def test_a_subclass_keeps_every_inherited_setting() -> None:
    """Arq reads only the class's own __dict__: the subclass still has functions and hooks."""
    kwargs = get_kwargs(Short)
    assert kwargs["job_timeout"] == 7.0
    assert kwargs["on_startup"] is startup
    assert kwargs["on_shutdown"] is shutdown
    assert [f.name for f in kwargs["functions"]] == ["generate", "vary", "upscale", "extend"]
    assert kwargs["redis_settings"] is WorkerSettings.redis_settings
    own = get_kwargs(Own)
    assert own["functions"] == [own_job]
    assert own["job_timeout"] == 7.0
    assert own["on_startup"] is startup


async def test_arq_builds_a_worker_from_a_subclass() -> None:
    """Arq's own create_worker takes the subclass: the vary job and the timeout are there."""
    worker = create_worker(Short, burst=True)
    try:
        assert set(worker.functions) == {"generate", "vary", "upscale", "extend"}
        assert worker.job_timeout_s == 7.0
        assert worker.on_startup is startup
    finally:
        await worker.close()


def test_config_from_the_environment() -> None:
    """MIDVARY_* variables become the config; the store is arq's Redis unless told otherwise."""
    config = WorkerConfig.from_env({
        "MIDVARY_REDIS_URL": "redis://:secret@h:6379/2",
        "MIDVARY_SUBMIT_RATE": "20/2",
        "MIDVARY_DOWNLOAD_DIR": "out",
        "MIDVARY_CLAIM_LEASE": "5",
    })  # fmt: skip
    assert config.store_url == "redis://:secret@h:6379/2"
    assert config.submit_rate == (20, 2.0)
    assert config.download == Path("out")
    assert config.claim_lease == 5.0
    assert "secret" not in repr(config)
    other = WorkerConfig.from_env(
        {"MIDVARY_REDIS_URL": "redis://a", "MIDVARY_STORE_URL": "redis://b"}
    )
    assert other.store_url == "redis://b"
    assert WorkerConfig.from_env({"MIDVARY_SUBMIT_RATE": "none"}).submit_rate is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MIDVARY_SUBMIT_RATE", "20 per 10"),
        ("MIDVARY_SUBMIT_RATE", "0/10"),
        ("MIDVARY_CLAIM_LEASE", "-1"),
        ("MIDVARY_CALLBACK_LISTEN", "8080"),
    ],
)
def test_a_bad_variable_is_named(name: str, value: str) -> None:
    """A malformed variable is a ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        WorkerConfig.from_env({name: value})


@pytest.fixture
async def worker_ctx(
    redis_session_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    namespace: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[dict[str, Any], FakeProvider]]:
    """A started worker context (as arq's on_startup makes it) against an in-process fake.

    Indirectly parametrized with ``True``, the worker serves a callback receiver.
    """
    del namespace
    if getattr(request, "param", False):
        port = free_port()
        monkeypatch.setenv("MIDVARY_CALLBACK_URL", f"http://127.0.0.1:{port}/midvary/callback")
        monkeypatch.setenv("MIDVARY_CALLBACK_LISTEN", f"127.0.0.1:{port}")
    fake = FakeProvider(
        settings=FakeSettings(task_duration=(0.05, 0.1), invisible_for=0.0, submit_limit=None)
    )
    await fake.start()
    monkeypatch.setenv("MIDVARY_API_KEY", fake.api_key)
    monkeypatch.setenv("MIDVARY_BASE_URL", fake.base_url)
    monkeypatch.setenv("MIDVARY_STORE_URL", redis_session_server.url)
    monkeypatch.setenv("MIDVARY_SUBMIT_RATE", "none")
    ctx: dict[str, Any] = {"job_try": 1}
    await startup(ctx)
    session_of(ctx).poll = midvary.testing.FAST_POLL
    try:
        yield ctx, fake
    finally:
        await shutdown(ctx)
        await fake.close()


async def test_vary_succeeds_and_a_rerun_reattaches(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str, tmp_path: Path
) -> None:
    """The job submits, waits and downloads; run again with its key, it bills nothing more."""
    ctx, fake = worker_ctx
    key = f"{namespace}/ok"
    first = await vary(ctx, "parent-1", 0, key=key, download=str(tmp_path))
    assert first["state"] == "succeeded"
    assert first["image_urls"] == list(fake.task(first["task_id"]).result_urls)
    assert first["paths"]
    assert sorted(first["paths"]) == sorted(str(path) for path in tmp_path.iterdir())  # noqa: ASYNC240
    again = await vary(ctx, "parent-1", 0, key=key, download=False)
    assert again["task_id"] == first["task_id"]
    assert again["paths"] == []
    assert fake.stats.tasks_created == 1


async def test_a_failed_task_and_a_lost_answer_complete_the_job(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str
) -> None:
    """A failed task is "failed" with its id; a lost POST answer is "uncertain", never re-sent."""
    ctx, fake = worker_ctx
    fake.settings = attrs.evolve(fake.settings, failure_rate=1.0)
    failed = await vary(ctx, "parent-1", 1, key=f"{namespace}/failed")
    assert failed["state"] == "failed"
    assert failed["task_id"] is not None
    assert "TaskFailedError" in failed["error"]
    fake.settings = attrs.evolve(fake.settings, failure_rate=0.0, drop_submit_answer_rate=1.0)
    lost = await vary(ctx, "parent-1", 2, key=f"{namespace}/lost")
    assert lost["state"] == "uncertain"
    assert lost["task_id"] is None
    again = await vary(ctx, "parent-1", 2, key=f"{namespace}/lost")
    assert again["state"] == "uncertain"
    assert fake.stats.tasks_created == 2  # the failed task and the one lost answer


@pytest.mark.parametrize("worker_ctx", [True], indirect=True)
async def test_with_a_receiver_a_lost_answer_is_recovered(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str
) -> None:
    """A lost POST answer: the job waits for the task's callback and succeeds; a re-run too."""
    ctx, fake = worker_ctx
    fake.settings = attrs.evolve(fake.settings, drop_submit_answer_rate=1.0)
    key = f"{namespace}/recovered"
    lost = await vary(ctx, "parent-1", 2, key=key)
    (task_id,) = fake.tasks
    assert lost["state"] == "succeeded"
    assert lost["task_id"] == task_id
    assert lost["image_urls"] == list(fake.task(task_id).result_urls)
    again = await vary(ctx, "parent-1", 2, key=key)  # a re-delivery re-attaches by key
    assert (again["state"], again["task_id"]) == ("succeeded", task_id)
    assert fake.stats.tasks_created == 1


async def test_a_store_outage_asks_arq_to_retry(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str
) -> None:
    """The store unreachable before the POST: arq.Retry with a delay, and nothing sent."""
    ctx, fake = worker_ctx
    store = ctx["midvary"].store
    await store.close()
    with pytest.raises(Retry) as caught:
        await vary(ctx, "parent-1", 3, key=f"{namespace}/outage")
    assert (caught.value.defer_score or 0) > 0
    assert fake.stats.tasks_created == 0


async def test_every_kind_is_a_keyed_job_with_the_same_result(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str
) -> None:
    """The generate (a video), upscale and extend jobs: the same result dict, each sent once."""
    ctx, fake = worker_ctx
    video = await generate(
        ctx,
        "waves",
        key=f"{namespace}/gen",
        task_type="mj_video",
        file_urls=["https://img.test/in.png"],
        video_batch_size=2,
    )
    big = await upscale(ctx, "parent-1", 3, key=f"{namespace}/up")
    longer = await extend(ctx, video["task_id"], 1, key=f"{namespace}/ext", prompt="more")
    results = [video, big, longer]
    assert [result["state"] for result in results] == ["succeeded"] * 3
    assert all(set(result) == set(big) for result in results)
    assert [fake.task(result["task_id"]).kind for result in results] == [
        "generate",
        "upscale",
        "extend",
    ]
    assert fake.task(longer["task_id"]).task_type == "mj_video_extend_manual"
    assert [len(result["image_urls"]) for result in results] == [2, 1, 1]
    again = await extend(ctx, video["task_id"], 1, key=f"{namespace}/ext", prompt="more")
    assert again["task_id"] == longer["task_id"]  # re-run: re-attached by key, nothing sent
    assert fake.stats.tasks_created == 3


async def test_an_invalid_job_fails_with_nothing_sent(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str
) -> None:
    """A bad argument of any kind completes the job "failed", naming it; no request."""
    ctx, fake = worker_ctx
    results = [
        await generate(ctx, "a fox", key=f"{namespace}/g", aspect_ratio="4:5"),
        await generate(ctx, "a fox", key=f"{namespace}/h", colour="red"),
        await upscale(ctx, "parent-1", 4, key=f"{namespace}/u"),
        await extend(ctx, "parent-1", 0, key=f"{namespace}/e", task_type="mj_video_extend_manual"),
    ]
    assert [result["state"] for result in results] == ["failed"] * 4
    assert "aspect_ratio" in results[0]["error"]
    assert "colour" in results[1]["error"]
    assert "0, 1, 2 or 3" in results[2]["error"]
    assert "prompt is required" in results[3]["error"]
    assert sum(fake.stats.requests.values()) == 0


async def test_the_readme_snippet_when_the_job_id_is_enqueued_again(
    redis_session_server: RedisServer, monkeypatch: pytest.MonkeyPatch, namespace: str
) -> None:
    """A real arq worker runs the job; enqueued again, arq answers None and Job() has it."""
    async with FakeProvider(
        settings=FakeSettings(task_duration=(0.05, 0.1), invisible_for=0.0, submit_limit=None)
    ) as fake:
        monkeypatch.setenv("MIDVARY_API_KEY", fake.api_key)
        monkeypatch.setenv("MIDVARY_BASE_URL", fake.base_url)
        monkeypatch.setenv("MIDVARY_STORE_URL", redis_session_server.url)
        monkeypatch.setenv("MIDVARY_SUBMIT_RATE", "none")
        redis = RedisSettings.from_dsn(redis_session_server.url)
        queue, job_id = f"{namespace}:queue", f"{namespace}/order-42/0"
        pool = await create_pool(redis, default_queue_name=queue)
        try:
            job = await pool.enqueue_job("vary", "parent-1", 0, key=job_id, _job_id=job_id)
            assert job is not None
            worker = create_worker(
                WorkerSettings, redis_settings=redis, queue_name=queue, burst=True,
                handle_signals=False, poll_delay=0.01,
            )  # fmt: skip
            try:
                await worker.main()  # burst: runs what is queued, then returns
            finally:
                with warnings.catch_warnings():
                    # arq's Worker.close() calls redis-py's deprecated close(): arq's to fix.
                    warnings.filterwarnings(
                        "ignore", "Call to deprecated close", DeprecationWarning
                    )
                    await worker.close()
            # The README's way: the same job id again is None; Job(job_id, pool) has it.
            again = await pool.enqueue_job("vary", "parent-1", 0, key=job_id, _job_id=job_id)
            assert again is None
            result = await Job(job_id, pool, _queue_name=queue).result(timeout=10)
        finally:
            await pool.aclose()
    assert result["state"] == "succeeded"
    assert result["task_id"] == next(iter(fake.tasks))
    assert fake.stats.tasks_created == 1


async def test_jobs_wait_for_credits_instead_of_failing(
    worker_ctx: tuple[dict[str, Any], FakeProvider], namespace: str
) -> None:
    """Credits at 0: the jobs wait (one credits check at a time), then succeed after a top-up."""
    ctx, fake = worker_ctx
    fake.update(credits=0)
    jobs = asyncio.gather(
        *(vary(ctx, "parent-1", n, key=f"{namespace}/wait-{n}") for n in range(3))
    )
    await until(lambda: fake.stats.requests["credit"] >= 2)  # the gate is checking
    refused = fake.stats.codes[402]
    assert 1 <= refused <= 3  # the first POSTs, in flight together; then nothing is sent
    fake.update(credits=10)
    results = await jobs
    assert [result["state"] for result in results] == ["succeeded"] * 3
    assert fake.stats.tasks_created == 3
    assert fake.stats.codes[402] == refused
    assert fake.credits_left == 7
