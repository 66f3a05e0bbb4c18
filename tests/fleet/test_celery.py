"""midvary.celery in one process: registration, each job's result dict, Celery's retry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import attrs
import pytest
from celery import Celery

import midvary
import midvary.celery
from midvary.testing import FAST_POLL, FAST_RETRY, FakeProvider, FakeSettings

from ..store.redis_server import RedisServer
from ..sync_support import FakeThread


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """A fake provider in its own thread (the tasks block, as Celery's do)."""
    served = FakeThread(
        FakeSettings(task_duration=(0.05, 0.1), invisible_for=0.0, submit_limit=None)
    )
    try:
        yield served.fake
    finally:
        served.close()


@pytest.fixture
def tasks(
    fake: FakeProvider,
    redis_session_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    namespace: str,
) -> Iterator[midvary.celery.MidvaryTasks]:
    """The tasks on an app run eagerly; this process's session is closed afterwards."""
    del namespace
    monkeypatch.setenv("MIDVARY_API_KEY", fake.api_key)
    monkeypatch.setenv("MIDVARY_BASE_URL", fake.base_url)
    monkeypatch.setenv("MIDVARY_STORE_URL", redis_session_server.url)
    monkeypatch.setenv("MIDVARY_SUBMIT_RATE", "none")
    app = Celery("test", broker="memory://", backend="cache+memory://")
    registered = midvary.celery.register(app, max_retries=1)
    session = midvary.celery.session()
    session.poll = FAST_POLL
    session.retry = FAST_RETRY
    try:
        yield registered
    finally:
        midvary.celery.close_session()
        app.close()


def test_register_checks_its_arguments() -> None:
    """A wrong app, prefix or retry count is refused, naming what is allowed."""
    with pytest.raises(TypeError, match=r"celery\.Celery"):
        midvary.celery.register("app")  # type: ignore[arg-type]
    app = Celery("test", broker="memory://")
    with pytest.raises(ValueError, match="prefix"):
        midvary.celery.register(app, prefix="")
    with pytest.raises(ValueError, match="max_retries"):
        midvary.celery.register(app, max_retries=-1)
    tasks = midvary.celery.register(app, prefix="mj")
    assert tasks.vary.name == "mj.vary"
    assert tasks.vary.acks_late
    assert tasks.vary.reject_on_worker_lost
    assert {"mj.vary", "mj.generate", "mj.upscale", "mj.extend"} <= set(app.tasks)


def test_each_kind_returns_the_arq_result_and_a_rerun_bills_nothing(
    tasks: midvary.celery.MidvaryTasks, fake: FakeProvider, namespace: str
) -> None:
    """Every kind returns the arq jobs' dict; run again with its key, a job re-attaches."""
    grid = tasks.generate.apply(("a fox",), {"key": f"{namespace}/g", "aspect_ratio": "1:1"})
    first = grid.get()
    assert first["state"] == "succeeded"
    assert set(first) == {"state", "key", "task_id", "image_urls", "paths", "error"}
    parent = first["task_id"]
    varied = tasks.vary.apply((parent, 1), {"key": f"{namespace}/v"}).get()
    upscaled = tasks.upscale.apply((parent, 2), {"key": f"{namespace}/u"}).get()
    assert varied["state"] == upscaled["state"] == "succeeded"
    assert varied["image_urls"] == list(fake.task(varied["task_id"]).result_urls)
    again = tasks.vary.apply((parent, 1), {"key": f"{namespace}/v"}).get()
    assert again["task_id"] == varied["task_id"]
    video_options = {"task_type": "mj_video", "file_urls": ["https://img.test/in.png"]}
    video = tasks.generate.apply(
        ("a fox running",), {"key": f"{namespace}/video", **video_options}
    ).get()
    longer = tasks.extend.apply(
        (video["task_id"], 0), {"key": f"{namespace}/ext", "prompt": "more"}
    ).get()
    assert video["state"] == longer["state"] == "succeeded"
    assert fake.task(longer["task_id"]).task_type == "mj_video_extend_manual"
    assert fake.stats.tasks_created == 5


def test_a_failed_task_and_bad_input_complete_the_job(
    tasks: midvary.celery.MidvaryTasks, fake: FakeProvider, namespace: str
) -> None:
    """A failed task is "failed" with its id; an invalid index is "failed" with nothing sent."""
    fake.update(failure_rate=1.0)
    failed = tasks.vary.apply(("parent-1", 0), {"key": f"{namespace}/f"}).get()
    assert failed["state"] == "failed"
    assert failed["task_id"] is not None
    assert "TaskFailedError" in failed["error"]
    invalid = tasks.vary.apply(("parent-1", 9), {"key": f"{namespace}/i"}).get()
    assert invalid["state"] == "failed"
    assert "image_index" in invalid["error"]
    assert fake.stats.tasks_created == 1


def test_transient_trouble_goes_through_celery_retry(
    tasks: midvary.celery.MidvaryTasks,
    fake: FakeProvider,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Maintenance past the retry budget: Celery retries with a growing countdown, then fails."""
    fake.update(maintenance=((0.0, 1e6),))
    # The session's retry budget runs out after 0.2 s of maintenance rather than 5 s.
    midvary.celery.session().retry = attrs.evolve(FAST_RETRY, outage_budget=0.2)
    with caplog.at_level(logging.WARNING, logger="midvary.celery"):
        result = tasks.vary.apply(("parent-1", 0), {"key": f"{namespace}/m"})
    assert result.failed()
    # Celery stores the error by its type's name and its text.
    assert isinstance(result.result, midvary.MidvaryError)
    assert "maintenance" in str(result.result)
    # The run and its max_retries=1 retry each asked Celery to retry: 5 s, then 10 s.
    countdowns = [
        r.getMessage().rpartition(" in ")[2] for r in caplog.records if r.name == "midvary.celery"
    ]
    assert countdowns == ["5s", "10s"]
    assert fake.stats.tasks_created == 0


def test_one_session_per_process_shared_by_threads(
    tasks: midvary.celery.MidvaryTasks, namespace: str
) -> None:
    """The threads pool's tasks share the process's one session; close ends it."""
    del tasks, namespace
    seen: list[midvary.SyncSession] = []
    threads = [
        threading.Thread(target=lambda: seen.append(midvary.celery.session())) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s) for s in seen}) == 1
    midvary.celery.close_session()
    assert seen[0].closed
