"""SyncSession: blocking calls into one Session on a loop thread of its own."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import midvary
from midvary.testing import FAST_POLL, FAST_RETRY, FakeProvider, FakeSettings

from .sync_support import FakeThread

SETTINGS = FakeSettings(task_duration=(0.05, 0.15), invisible_for=0.0, submit_limit=None)
THREAD = "midvary-sync-session"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """A started fake provider in its own thread."""
    served = FakeThread(SETTINGS)
    try:
        yield served.fake
    finally:
        served.close()


def open_session(fake: FakeProvider, **options: object) -> midvary.SyncSession:
    """A SyncSession on ``fake`` with the fast test mode."""
    defaults: dict[str, object] = {"poll": FAST_POLL, "retry": FAST_RETRY, "submit_rate": None}
    return midvary.SyncSession(
        api_key=fake.api_key,
        base_url=fake.base_url,
        **(defaults | options),  # type: ignore[arg-type]
    )


def grid(session: midvary.SyncSession) -> str:
    """The task id of a finished generation, a parent to vary."""
    return session.generate("a fox").wait(timeout=30.0).task_id


def session_threads() -> list[threading.Thread]:
    """The SyncSession loop threads alive now."""
    return [t for t in threading.enumerate() if t.name == THREAD]


def test_the_workflow_blocks_and_the_thread_is_joined(fake: FakeProvider, tmp_path: Path) -> None:
    """Generate, vary, upscale, re-attach, fetch and download, blocking; close joins the thread."""
    before = session_threads()
    with open_session(fake) as session:
        assert len(session_threads()) == len(before) + 1
        grid = session.generate("a fox").wait(timeout=30.0)
        assert isinstance(grid, midvary.TaskRecord)
        handle = session.vary(grid.task_id, 2, key="fox/2")
        assert isinstance(handle, midvary.SyncTaskHandle)
        assert handle.request is not None
        assert not handle.done()
        record = handle.wait(timeout=30.0)
        assert handle.done()
        assert handle.record == record
        assert record.status is midvary.TaskStatus.SUCCESS
        assert session.vary(grid.task_id, 2, key="fox/2").task_id == handle.task_id
        upscaled = session.upscale(grid.task_id, 0).wait()
        again = session.task(record.task_id)
        assert again.request is None
        assert again.wait() == record
        assert session.get_task(upscaled.task_id).task_id == upscaled.task_id
        paths = session.download(record, tmp_path)
        assert [p.name for p in sorted(tmp_path.iterdir())] == sorted(p.name for p in paths)
        requests = [midvary.VaryRequest(task_id=grid.task_id, image_index=i) for i in range(4)]
        outcomes = session.submit_all(requests, concurrency=2)
        assert [o.index for o in outcomes] == [0, 1, 2, 3]
        assert all(o.ok for o in outcomes)
        done = session.run(midvary.UpscaleRequest(task_id=grid.task_id, image_index=3))
        assert done.status is midvary.TaskStatus.SUCCESS
        assert isinstance(session.credits(), int)
    assert session.closed
    assert session_threads() == before
    assert fake.stats.tasks_created == 8  # grid, a vary (keyed twice), 2 upscales, 4 varies
    with pytest.raises(midvary.SessionClosedError):
        session.vary("parent", 0)
    session.close()  # twice is harmless


def test_errors_are_the_async_ones(fake: FakeProvider) -> None:
    """Bad input (before any request), a failed task, an unknown id, a timeout: as in async."""
    with open_session(fake) as session:
        with pytest.raises(ValueError, match="image_index"):
            session.vary("parent", 7)
        with pytest.raises(midvary.NotFoundError):
            session.get_task("no-such-task")
        assert fake.stats.tasks_created == 0
        parent = grid(session)
        fake.update(failure_rate=1.0)
        with pytest.raises(midvary.TaskFailedError):
            session.vary(parent, 1).wait()
        fake.update(failure_rate=0.0, task_duration=(60.0, 60.0))
        slow = session.vary(parent, 2)
        with pytest.raises(midvary.TaskTimeoutError) as caught:
            slow.wait(timeout=0.2)
        assert caught.value.task_id == slow.task_id
        assert not slow.done()  # the handle stays usable
        assert "SyncTaskHandle" in repr(slow)
        assert "SyncSession" in repr(session)


def test_bad_arguments_leave_no_thread(fake: FakeProvider) -> None:
    """An invalid constructor argument is the Session's error, and no loop thread stays."""
    before = session_threads()
    with pytest.raises(ValueError, match="request_timeout"):
        open_session(fake, request_timeout=-1.0)
    with pytest.raises(TypeError, match="store"):
        open_session(fake, store="redis://x")
    assert session_threads() == before


def test_threads_share_one_session(fake: FakeProvider) -> None:
    """16 threads submit 4 keys on one session: each key is billed once, all get its task."""
    keys = [f"shared/{i % 4}" for i in range(64)]
    with open_session(fake, submit_rate=(1000, 1.0)) as session:
        parent = grid(session)

        def job(key: str) -> tuple[str, str]:
            handle = session.vary(parent, int(key[-1]), key=key)
            return key, handle.wait(timeout=30.0).task_id

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(job, keys))
    by_key: dict[str, set[str]] = {}
    for key, task_id in results:
        by_key.setdefault(key, set()).add(task_id)
    assert {key: len(ids) for key, ids in by_key.items()} == dict.fromkeys(set(keys), 1)
    assert fake.stats.tasks_created == 5  # the parent and one per key
    assert fake.stats.duplicate_submissions == 0


async def test_works_inside_a_running_event_loop(fake: FakeProvider) -> None:
    """Called from a coroutine (as in Jupyter), the blocking calls work; they block that loop."""
    asyncio.get_running_loop()
    with open_session(fake) as session:
        record = session.vary(grid(session), 0).wait(timeout=30.0)
    assert record.status is midvary.TaskStatus.SUCCESS


def test_a_hook_calling_the_session_is_refused(fake: FakeProvider) -> None:
    """A hook runs on the session's loop thread: calling the session there is EventLoopError."""
    with open_session(fake) as session:

        def on_event(event: midvary.JobEvent) -> None:
            if event.kind is midvary.JobEventKind.SUBMITTING:
                session.get_task("anything")

        [outcome] = session.submit_all([midvary.VaryRequest(task_id="p", image_index=0)],
                                     on_event=on_event)  # fmt: skip
    assert isinstance(outcome.error, midvary.EventLoopError)
    assert fake.stats.tasks_created == 0


def test_ctrl_c_interrupts_a_wait_and_the_task_can_be_reattached(fake: FakeProvider) -> None:
    """SIGINT during wait(): KeyboardInterrupt at once; the task re-attached by id finishes."""
    assert threading.current_thread() is threading.main_thread()
    with open_session(fake) as session:
        parent = grid(session)
        fake.update(task_duration=(1.0, 1.0))
        handle = session.vary(parent, 3)
        main = threading.main_thread().ident
        assert main is not None
        polled = threading.Event()

        def interrupt() -> None:
            # Wait until the blocking wait has polled (the fake counts), then press Ctrl-C.
            while not fake.stats.polls.get(handle.task_id):
                if polled.wait(0.005):
                    return
            signal.pthread_kill(main, signal.SIGINT)

        presser = threading.Thread(target=interrupt)
        presser.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                handle.wait(timeout=30.0)
        finally:
            polled.set()
            presser.join()
        assert not handle.done()
        record = session.task(handle.task_id).wait(timeout=30.0)
    assert record.task_id == handle.task_id
    assert fake.stats.tasks_created == 2  # the parent and the one vary


def test_close_ends_waits_in_other_threads(fake: FakeProvider) -> None:
    """A wait blocked in another thread raises SessionClosedError when the session closes."""
    session = open_session(fake)
    parent = grid(session)
    fake.update(task_duration=(60.0, 60.0))
    handle = session.vary(parent, 0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            handle.wait(timeout=60.0)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    while not fake.stats.polls.get(handle.task_id):  # the wait is polling
        waiter.join(0.005)
    session.close()
    waiter.join()
    assert [type(e) for e in errors] == [midvary.SessionClosedError]


def test_a_store_is_opened_on_the_session_loop_and_closed(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """The SyncSession opens its store and closes it; a second session re-attaches by key."""
    path = tmp_path / "keys.db"
    with open_session(fake, store=midvary.SQLiteStore(path)) as first:
        parent = grid(first)
        task_id = first.vary(parent, 1, key="order-1/1").task_id
    with open_session(fake, store=midvary.SQLiteStore(path)) as second:
        again = second.vary(parent, 1, key="order-1/1")
        assert again.task_id == task_id
        assert again.wait(timeout=30.0).task_id == task_id
    assert fake.stats.tasks_created == 2  # the parent and the one vary


def test_signatures_follow_session() -> None:
    """Each blocking method takes the async method's parameters, and says it blocks."""
    names = ("vary", "generate", "upscale", "submit", "run", "get_task", "download", "submit_all")
    for name in (*names, "credits", "recover"):
        blocking = inspect.signature(getattr(midvary.SyncSession, name))
        coroutine = inspect.signature(getattr(midvary.Session, name))
        assert list(blocking.parameters) == list(coroutine.parameters), name
        assert getattr(midvary.SyncSession, name).__doc__.startswith("Blocking :meth:`Session.")
    assert inspect.signature(midvary.SyncSession).parameters == (
        inspect.signature(midvary.Session).parameters
    )
    assert list(inspect.signature(midvary.SyncTaskHandle.wait).parameters) == list(
        inspect.signature(midvary.TaskHandle.wait).parameters
    )


# Not mirrored: closing is close(); a fan-out's outcomes arrive as an async iterator, whose
# blocking form is submit_all; vary_many and vary_all are Session's deprecated aliases.
NOT_MIRRORED = {"aclose", "submit_many", "vary_many", "vary_all"}


def test_every_session_method_has_a_blocking_twin() -> None:
    """A public method added to Session (extend, ...) fails this until SyncSession has it."""
    public = {name for name in vars(midvary.Session) if not name.startswith("_")}
    assert public - NOT_MIRRORED - set(dir(midvary.SyncSession)) == set()


def test_a_forked_copy_refuses_to_run(fake: FakeProvider) -> None:
    """In a child forked after it was made, a call is EventLoopError at once (no hang)."""
    with open_session(fake) as session:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork() with threads
            pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                session.get_task("task-1")
            except midvary.EventLoopError as exc:
                code = 0 if "fork" in str(exc) else 3
            except BaseException:
                code = 2
            session.close()  # harmless in the copy
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert session.get_task(grid(session)).status is midvary.TaskStatus.SUCCESS
