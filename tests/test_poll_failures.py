"""Polls that keep failing: the timeout says so and carries the last error; warnings."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import attrs
import pytest

import midvary
from midvary.testing import FakeProvider, FakeSettings

from .conftest import FAST_POLL, FAST_RETRY


async def test_timeout_carries_the_last_poll_error_when_every_poll_failed() -> None:
    """Every poll answered 455: TaskTimeoutError says so, with last_error as its cause."""
    async with (
        FakeProvider(settings=FakeSettings(submit_limit=None)) as fake,
        midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as session,
    ):
        fake.set_maintenance(True)
        with pytest.raises(midvary.TaskTimeoutError) as caught:
            await session.task("fakeunknown").wait(timeout=0.3)
    error = caught.value
    assert isinstance(error.last_error, midvary.ServiceUnavailableError)
    assert error.__cause__ is error.last_error
    assert error.failing_for is not None
    assert error.failing_for > 0
    assert "the provider answered 455 for the last" in str(error)


async def test_timeout_of_a_reachable_provider_has_no_last_error() -> None:
    """A task that is merely slow: no last_error, no cause, no outage in the message."""
    settings = FakeSettings(submit_limit=None, task_duration=(30.0, 30.0), invisible_for=0.0)
    async with (
        FakeProvider(settings=settings) as fake,
        midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as session,
    ):
        handle = await session.vary("parent-1", 0)
        with pytest.raises(midvary.TaskTimeoutError) as caught:
            await handle.wait(timeout=0.2)
    assert caught.value.last_error is None
    assert caught.value.__cause__ is None
    assert "for the last" not in str(caught.value)


class _OnRecord(logging.Handler):
    """Sets an event when a record is logged."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        """Set the event."""
        self.event.set()


async def test_failing_polls_are_warned_about_once_and_their_end_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Polls failing past warn_failing_after: one warning; one more when they succeed again."""
    poll = attrs.evolve(FAST_POLL, warn_failing_after=0.1)
    settings = FakeSettings(submit_limit=None, task_duration=(0.05, 0.05), invisible_for=0.0)
    async with (
        FakeProvider(settings=settings) as fake,
        midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=poll, retry=FAST_RETRY
        ) as session,
    ):
        handle = await session.vary("parent-1", 0)
        fake.update(fault_rate=1.0, fault_kinds=["server_error"], fault_endpoints=["record-info"])
        warned = asyncio.Event()
        on_warning = _OnRecord(warned)
        logging.getLogger("midvary._polling").addHandler(on_warning)
        with caplog.at_level(logging.WARNING, logger="midvary"):
            waiting = asyncio.ensure_future(handle.wait(timeout=10))
            async with asyncio.timeout(5):
                await warned.wait()
            fake.update(fault_rate=0.0)
            await waiting
        logging.getLogger("midvary._polling").removeHandler(on_warning)
    messages = [r.message for r in caplog.records if r.name == "midvary._polling"]
    assert len(messages) == 2
    assert messages[0].startswith("every poll has failed for")
    assert "ServerError" in messages[0]
    assert messages[1].startswith("polls succeed again")


async def test_maintenance_during_polls_is_one_outage_line_in_and_one_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Many waits polling through a 455 window: one WARNING when it starts, one when it ends."""
    settings = FakeSettings(submit_limit=None, task_duration=(0.3, 0.3), invisible_for=0.0)
    async with (
        FakeProvider(settings=settings) as fake,
        midvary.Session(
            api_key=fake.api_key, base_url=fake.base_url, poll=FAST_POLL, retry=FAST_RETRY
        ) as session,
    ):
        handles = [await session.vary("parent-1", n) for n in range(4)]
        began = asyncio.Event()
        on_warning = _OnRecord(began)
        logging.getLogger("midvary._outage").addHandler(on_warning)
        with caplog.at_level(logging.WARNING, logger="midvary"):
            fake.set_maintenance(True)
            waits = asyncio.gather(*(handle.wait(timeout=10) for handle in handles))
            async with asyncio.timeout(5):
                await began.wait()
            assert session.outage is not None
            assert session.outage.what == "maintenance (455)"
            fake.set_maintenance(False)
            records = await waits
        logging.getLogger("midvary._outage").removeHandler(on_warning)
        assert session.outage is None
    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)
    messages = [r.message for r in caplog.records if r.name.startswith("midvary")]
    assert len(messages) == 2, messages
    assert messages[0].startswith("maintenance (455) since ")
    assert "next try in" in messages[0]
    assert " is over after " in messages[1]


async def test_a_session_used_in_a_second_event_loop_says_it_belongs_to_one() -> None:
    """A Session first used in one asyncio.run() and then in another: EventLoopError."""

    async def first() -> midvary.Session:
        http = aiohttp.ClientSession()
        session = midvary.Session(api_key="k", base_url="http://127.0.0.1:9", http_session=http)
        await session.__aenter__()
        await http.close()  # borrowed: ours to close, in its own loop
        return session

    session = await asyncio.to_thread(asyncio.run, first())
    with pytest.raises(midvary.EventLoopError, match="belongs to one event loop"):
        await session.get_task("abc")
    assert isinstance(midvary.EventLoopError("x"), RuntimeError)
