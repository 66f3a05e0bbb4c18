"""Campaign 6: closing, cancelling and loop shutdown leave nothing pending or unclosed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import attrs
import pytest

import midvary
from midvary.testing import FakeProvider, FakeSettings

from ..conditions import until
from ..conftest import FAST_POLL, FAST_RETRY

SLOW_TASKS = FakeSettings(task_duration=(60.0, 60.0), invisible_for=0.0, submit_limit=None)


async def test_close_with_many_pending_waits() -> None:
    """Closing a session under 50 pending waits ends each with SessionClosedError."""
    async with FakeProvider(settings=SLOW_TASKS) as fake:
        session = midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=FAST_POLL, retry=FAST_RETRY
        )
        handles = [await session.vary("parent-1", n % 4) for n in range(50)]
        waits = [asyncio.create_task(h.wait(timeout=None)) for h in handles]
        await until(lambda: sum(fake.stats.polls.values()) >= 50)
        await session.aclose()
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(r, midvary.SessionClosedError) for r in results), results
        polls = sum(fake.stats.polls.values())
        await asyncio.sleep(FAST_POLL.max_delay * 3)
        assert sum(fake.stats.polls.values()) == polls  # nothing polls after the close


async def test_cancelled_waits_stop_polling() -> None:
    """Cancelling waits stops their polls; the session closes cleanly afterwards."""
    async with (
        FakeProvider(settings=SLOW_TASKS) as fake,
        midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as session,
    ):
        handles = [await session.vary("parent-1", n % 4) for n in range(10)]
        waits = [asyncio.create_task(h.wait(timeout=None)) for h in handles]
        await until(lambda: all(fake.stats.polls.get(h.task_id, 0) >= 2 for h in handles))
        for w in waits:
            w.cancel()
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        polls = dict(fake.stats.polls)
        await asyncio.sleep(FAST_POLL.max_delay * 3)
        assert dict(fake.stats.polls) == polls


SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, midvary
    from midvary.testing import FakeProvider, FakeSettings

    async def main():
        settings = FakeSettings(task_duration=(60.0, 60.0), invisible_for=0.0, submit_limit=None)
        async with FakeProvider(settings=settings) as fake:
            poll = midvary.PollPolicy(initial_delay=0.01, max_delay=0.02, jitter=0)
            async with midvary.Session(
                api_key=fake.api_key, base_url=fake.base_url, poll=poll
            ) as session:
                handles = [await session.vary("parent-1", n % 4) for n in range(5)]
                # Ctrl-C while waiting: asyncio.run cancels main, which cancels the waits.
                asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
                await asyncio.gather(*(h.wait(timeout=None) for h in handles))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("clean exit")
    """
)


def test_event_loop_shutdown_with_pending_waits_is_clean() -> None:
    """Ctrl-C during waits under asyncio.run() exits cleanly: no warning under -W error."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-W", "error", "-X", "dev", "-c", SHUTDOWN_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "clean exit" in done.stdout
    for noise in ("Task was destroyed", "Unclosed", "never awaited", "Traceback", "Warning"):
        assert noise not in done.stderr, done.stderr


@pytest.mark.parametrize("n", [3])
async def test_handles_outlive_their_wait_timeout(n: int) -> None:
    """A wait that timed out leaves no pending timer or sleeper behind."""
    async with (
        FakeProvider(settings=SLOW_TASKS) as fake,
        midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as session,
    ):
        handles = [await session.vary("parent-1", k) for k in range(n)]
        for h in handles:
            with pytest.raises(midvary.TaskTimeoutError):
                await h.wait(timeout=0.05, poll=attrs.evolve(FAST_POLL, target_delay=None))
            assert not h._sleepers
        assert not session._waiters
