"""Waiting: invisibility, deadlines, cancellation, and closing the session with waits pending."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

import midvary
from midvary.testing import ManualClock

from ..conditions import until
from .conftest import OpenSession, StartFake, finish, polls


@pytest.mark.parametrize("style", ["422", "404"])
async def test_a_task_invisible_past_the_first_polls_is_tolerated(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock, style: str
) -> None:
    """'Not found' answers for a new task within the grace are waited out, then it succeeds."""
    fake = await start_fake(
        clock=clock, invisible_for=2.0, task_duration=(3.0, 4.0), not_found_style=style
    )
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-invisible", 1)

    waiter = asyncio.create_task(handle.wait())
    await until(lambda: polls(fake, handle.task_id) >= 3)
    assert fake.stats.codes[int(style)] >= 3
    assert handle.record is None
    assert not waiter.done()
    finish(clock, fake, handle.task_id)
    record = await waiter

    assert record.status is midvary.TaskStatus.SUCCESS


async def test_a_wait_deadline_raises_and_a_later_await_succeeds(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """wait(timeout=...) raises TaskTimeoutError (a TimeoutError); the handle stays usable."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-slow", 0)

    with pytest.raises(TimeoutError) as info:
        await handle.wait(timeout=0.15)

    error = info.value
    assert isinstance(error, midvary.TaskTimeoutError)
    assert error.task_id == handle.task_id
    assert error.timeout == 0.15
    assert error.record is not None
    assert error.record.status is midvary.TaskStatus.GENERATING
    assert not handle.done()
    finish(clock, fake, handle.task_id)
    assert (await handle).status is midvary.TaskStatus.SUCCESS


async def test_a_wait_deadline_cuts_a_poll_on_the_wire(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """The deadline ends a wait whose poll hangs on the wire, without the task cancelled."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-hanging", 0)
    answered = fake.stats.codes[200]
    fake.update(latency=5.0)  # every poll from now on hangs on the wire

    with pytest.raises(midvary.TaskTimeoutError) as info:
        await handle.wait(timeout=0.2)

    assert info.value.timeout == 0.2
    assert fake.stats.codes[200] == answered  # ended before the provider answered
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the deadline's own cancellation was taken back


async def test_a_shorter_deadline_after_a_longer_one_fires_at_its_own_time(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """The session's deadlines fire each at its time, in any order of arrival."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    slow = await session.vary("parent-long-deadline", 0)
    fast = await session.vary("parent-short-deadline", 1)
    long_wait = asyncio.create_task(slow.wait(timeout=60.0))
    await until(lambda: polls(fake, slow.task_id) >= 1)

    with pytest.raises(midvary.TaskTimeoutError) as info:
        await fast.wait(timeout=0.15)

    assert info.value.task_id == fast.task_id
    assert not long_wait.done()  # its own deadline is far away
    finish(clock, fake, slow.task_id)
    assert (await long_wait).status is midvary.TaskStatus.SUCCESS
    with pytest.raises(midvary.TaskTimeoutError):  # the timer re-armed after the first ended
        await fast.wait(timeout=0.1)


async def test_a_foreign_cancellation_is_not_taken_for_the_deadline(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """An enclosing asyncio.timeout that fires first raises its TimeoutError, not ours."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-foreign", 0)

    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.15):
            await handle.wait(timeout=30.0)

    assert not isinstance(info.value, midvary.TaskTimeoutError)
    finish(clock, fake, handle.task_id)
    assert (await handle).status is midvary.TaskStatus.SUCCESS


async def test_the_poll_policy_timeout_is_the_default_deadline(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """Without a timeout argument, the session's PollPolicy.timeout bounds the wait."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None, timeout=0.1)
    handle = await session.vary("parent-slow", 1)

    with pytest.raises(midvary.TaskTimeoutError) as info:
        await handle

    assert info.value.timeout == 0.1
    finish(clock, fake, handle.task_id)
    assert (await handle.wait(timeout=None)).status is midvary.TaskStatus.SUCCESS


async def test_cancelling_a_waiting_coroutine_stops_its_polls(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """Once the awaiting coroutine is cancelled its task is not polled again; others go on."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    cancelled = await session.vary("parent-cancel", 0)
    metronome = await session.vary("parent-cancel", 1)

    waiter = asyncio.create_task(cancelled.wait())
    ticker = asyncio.create_task(metronome.wait())
    await until(lambda: polls(fake, cancelled.task_id) >= 2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # One more poll of the other task lets a request that was already on the wire land.
    mark = polls(fake, metronome.task_id)
    await until(lambda: polls(fake, metronome.task_id) >= mark + 1)
    seen = polls(fake, cancelled.task_id)
    await until(lambda: polls(fake, metronome.task_id) >= mark + 4)

    assert polls(fake, cancelled.task_id) == seen
    assert not ticker.done()
    finish(clock, fake, cancelled.task_id)
    finish(clock, fake, metronome.task_id)
    assert (await ticker).status is midvary.TaskStatus.SUCCESS
    assert (await cancelled).status is midvary.TaskStatus.SUCCESS


async def test_cancelling_one_of_two_waits_on_a_handle_leaves_the_other(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """Two coroutines await one handle; cancelling one leaves the other to finish."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-shared", 2)

    first = asyncio.create_task(handle.wait())
    second = asyncio.create_task(handle.wait())
    await until(lambda: polls(fake, handle.task_id) >= 2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    finish(clock, fake, handle.task_id)

    assert (await second).status is midvary.TaskStatus.SUCCESS
    assert handle.done()


async def test_closing_the_session_ends_pending_waits(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """aclose() with waits pending: each raises SessionClosedError; the session refuses use."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handles = [await session.vary("parent-closing", index) for index in range(3)]
    waiters = [asyncio.create_task(handle.wait()) for handle in handles]
    await until(lambda: all(polls(fake, handle.task_id) >= 1 for handle in handles))

    await session.aclose()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)

    assert all(isinstance(outcome, midvary.SessionClosedError) for outcome in outcomes)
    assert session.closed
    with pytest.raises(midvary.SessionClosedError):
        await handles[0]
    with pytest.raises(midvary.SessionClosedError):
        await session.vary("parent-closing", 3)
    with pytest.raises(midvary.SessionClosedError):
        session.task(handles[0].task_id)
    with pytest.raises(midvary.SessionClosedError):
        async with session:
            pass
    assert fake.stats.tasks_created == 3


async def test_closing_the_session_with_polls_in_flight(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """aclose() while polls are on the wire still ends every wait with SessionClosedError."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handles = [await session.vary("parent-in-flight", index) for index in range(2)]
    fake.update(latency=5.0)  # every poll from now on hangs on the wire
    waiters = [asyncio.create_task(handle.wait()) for handle in handles]
    await until(lambda: fake.stats.requests["record-info"] >= 2)

    await session.aclose()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)

    assert all(isinstance(outcome, midvary.SessionClosedError) for outcome in outcomes), outcomes


async def test_closing_a_session_on_a_borrowed_http_session_with_polls_in_flight(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """With a borrowed aiohttp session, aclose() ends waits at once, not when polls answer."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    async with aiohttp.ClientSession() as http:
        session = midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=midvary.PollPolicy(initial_delay=0.01, jitter=0.0, target_delay=None),
            http_session=http,
        )
        async with session:
            handles = [await session.vary("parent-borrowed", index) for index in range(2)]
            answered = fake.stats.codes[200]
            fake.update(latency=3.0)  # every poll from now on hangs on the wire
            waiters = [asyncio.create_task(handle.wait()) for handle in handles]
            await until(lambda: fake.stats.requests["record-info"] >= 2)

        outcomes = await asyncio.gather(*waiters, return_exceptions=True)

        assert all(isinstance(outcome, midvary.SessionClosedError) for outcome in outcomes)
        # The waits ended before the provider answered the polls on the wire.
        assert fake.stats.codes[200] == answered
        assert not http.closed


async def test_requests_cancelled_while_queued_for_a_connection_free_their_places(
    start_fake: StartFake,
) -> None:
    """Polls cancelled in the transport's queue (connector limit 1) leave no place taken."""
    fake = await start_fake(invisible_for=0.0)
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        midvary.Session(api_key=fake.api_key, base_url=fake.base_url, http_session=http) as session,
    ):
        handle = await session.vary("parent-queued", 0)
        fake.update(latency=60.0)  # the one connection hangs; later requests queue
        stuck = [asyncio.create_task(handle.refresh()) for _ in range(4)]
        await until(lambda: fake.stats.requests["record-info"] >= 1)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        fake.update(latency=0.0)
        # Every place came back: two polls in a row pass the gate of one place.
        for _ in range(2):
            record = await asyncio.wait_for(handle.refresh(), timeout=30.0)
            assert record.task_id == handle.task_id
        assert fake.stats.requests["record-info"] == 3
