"""Awaiting handles: polling, the invisibility grace, deadlines, cancellation."""

from __future__ import annotations

import asyncio

import attrs
import pytest

import midvary

from .mockapi import VARY_URL, MockAPI, record, record_url

URL = record_url("t1")


async def submitted(session: midvary.Session, api: MockAPI) -> midvary.TaskHandle:
    api.envelope("POST", VARY_URL, data={"taskId": "t1"})
    return await session.vary("parent-1", 0)


async def test_await_polls_until_success(session: midvary.Session, api: MockAPI) -> None:
    """Awaiting a handle polls through GENERATING to the SUCCESS record."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, data=record(flag=0))
    api.envelope("GET", URL, data=record(flag=0))
    api.envelope("GET", URL, data=record(flag=1))
    result = await handle
    assert result.status is midvary.TaskStatus.SUCCESS
    assert result.image_urls == tuple(f"https://cdn.test/t1_{n}.png" for n in range(4))
    assert len(api.calls("GET", URL)) == 3
    assert handle.done()
    assert await handle is result  # a final record is remembered: no further request
    assert len(api.calls("GET", URL)) == 3


@pytest.mark.parametrize("flag", [2, 3])
async def test_failed_task_raises_with_record(
    session: midvary.Session, api: MockAPI, flag: int
) -> None:
    """CREATE_FAILED and GENERATE_FAILED raise TaskFailedError holding the final record."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, data=record(flag=flag), repeat=True)
    with pytest.raises(midvary.TaskFailedError) as info:
        await handle.wait()
    assert info.value.record.status is midvary.TaskStatus(flag)
    assert info.value.task_id == "t1"
    assert "generation failed" in str(info.value)
    snapshot = await handle.refresh()  # refresh returns a failed record instead of raising
    assert snapshot.status is midvary.TaskStatus(flag)


async def test_not_visible_yet_is_tolerated(session: midvary.Session, api: MockAPI) -> None:
    """422 'recordInfo is null' and 404 right after submission mean 'not visible yet'."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, 422, msg="recordInfo is null")
    api.envelope("GET", URL, 404, msg="not found", status=404)
    api.envelope("GET", URL, data=record(flag=1))
    assert (await handle).status is midvary.TaskStatus.SUCCESS
    assert len(api.calls("GET", URL)) == 3


async def test_not_found_after_grace_is_an_error(session: midvary.Session, api: MockAPI) -> None:
    """A record still invisible after the grace period raises NotFoundError."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, 422, msg="recordInfo is null", repeat=True)
    policy = attrs.evolve(session.poll, not_found_grace=0.05)
    with pytest.raises(midvary.NotFoundError) as info:
        await handle.wait(poll=policy)
    assert "t1" in str(info.value)
    # How many polls fit in the grace depends on the machine's load (the tolerated case is
    # test_not_visible_yet_is_tolerated): none is asserted here.


async def test_get_task_maps_record_info_null_to_not_found(
    session: midvary.Session, api: MockAPI
) -> None:
    """get_task on an unknown id raises NotFoundError, whatever form the provider chose."""
    api.envelope("GET", record_url("nope"), 422, msg="recordInfo is null")
    with pytest.raises(midvary.NotFoundError):
        await session.get_task("nope")
    api.envelope("GET", record_url("nope"), 404, msg="not found", status=404)
    with pytest.raises(midvary.NotFoundError):
        await session.get_task("nope")


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 200, "body": '{"code": 429, "msg": "rate", "data": null}'},
        {"status": 429, "body": ""},
        {"status": 200, "body": '{"code": 455, "msg": "maintenance", "data": null}'},
        {"status": 455, "body": '{"code": 455, "msg": "maintenance", "data": null}'},
        {"status": 200, "body": '{"code": 500, "msg": "oops", "data": null}'},
        {"status": 502, "body": "<html>bad gateway</html>"},
        {"status": 200, "body": ""},
        {"status": 200, "body": '{"code": 200, "data": {"taskId": "t1", "succ'},
        {"status": 200, "body": '{"code": 200, "msg": "ok", "data": {"taskId": "t1"}}'},
        {"exception": ConnectionResetError()},
    ],
    ids=[
        "429",
        "bare-429",
        "455",
        "455-mirrored",
        "500",
        "html",
        "empty",
        "truncated",
        "malformed",
        "reset",
    ],
)
async def test_transient_poll_failures_are_retried(
    session: midvary.Session, api: MockAPI, answer: dict[str, object]
) -> None:
    """Transient and protocol failures of a poll are retried until the record arrives."""
    handle = await submitted(session, api)
    api.add(URL, "GET", **answer)  # type: ignore[arg-type]
    api.add(URL, "GET", **answer)  # type: ignore[arg-type]
    api.envelope("GET", URL, data=record(flag=1))
    assert (await handle).status is midvary.TaskStatus.SUCCESS
    assert len(api.calls("GET", URL)) == 3


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, midvary.BadRequestError),
        (401, midvary.AuthenticationError),
        (402, midvary.InsufficientCreditsError),
        (422, midvary.ValidationError),
        (501, midvary.GenerationFailedError),
        (505, midvary.FeatureDisabledError),
    ],
)
@pytest.mark.parametrize("mirrored", [False, True], ids=["in-200", "mirrored"])
async def test_final_poll_errors_raise(
    session: midvary.Session, api: MockAPI, code: int, cls: type[Exception], mirrored: bool
) -> None:
    """Final codes on record-info raise their class after one GET."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, code, msg="no", status=code if mirrored else 200, repeat=True)
    with pytest.raises(cls):
        await handle
    assert len(api.calls("GET", URL)) == 1


async def test_poll_honours_retry_after(session: midvary.Session, api: MockAPI) -> None:
    """A Retry-After on a poll delays the next poll by at least that long."""
    handle = session.task("t1")
    api.envelope("GET", URL, 429, status=429, headers={"Retry-After": "0.3"})
    api.envelope("GET", URL, data=record(flag=1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await handle
    assert loop.time() - started >= 0.3


async def test_timeout_then_later_success(session: midvary.Session, api: MockAPI) -> None:
    """TaskTimeoutError names the task and is a TimeoutError; a later await still succeeds."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, data=record(flag=0), repeat=True)
    with pytest.raises(midvary.TaskTimeoutError) as info:
        await handle.wait(timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == "t1"
    assert info.value.record is not None
    assert info.value.record.status is midvary.TaskStatus.GENERATING
    api.clear()
    api.envelope("GET", URL, data=record(flag=1))
    assert (await handle.wait(timeout=5.0)).status is midvary.TaskStatus.SUCCESS


async def test_reattached_handle_polls_at_once(session: midvary.Session, api: MockAPI) -> None:
    """session.task() does no I/O; awaiting it polls without the initial delay."""
    handle = session.task("t1")
    assert api.count() == 0
    api.envelope("GET", URL, data=record(flag=1))
    slow_start = attrs.evolve(session.poll, initial_delay=30.0)
    assert (await handle.wait(poll=slow_start)).task_id == "t1"


async def test_cancelled_waiter_sends_no_more_requests(
    session: midvary.Session, api: MockAPI
) -> None:
    """Cancelling the coroutine awaiting a handle stops its polling at once."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, data=record(flag=0), repeat=True)
    waiter = asyncio.create_task(handle.wait(timeout=None))
    while len(api.calls("GET", URL)) < 2:  # noqa: ASYNC110 - the mock offers no event to await
        await asyncio.sleep(0.005)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    seen = len(api.calls("GET", URL))
    for _ in range(10):  # several poll intervals of the fast policy
        await asyncio.sleep(session.poll.max_delay)
    assert len(api.calls("GET", URL)) == seen


async def test_close_ends_pending_waits(session: midvary.Session, api: MockAPI) -> None:
    """Closing the session makes pending waits raise SessionClosedError promptly."""
    handle = await submitted(session, api)
    api.envelope("GET", URL, data=record(flag=0), repeat=True)
    slow = attrs.evolve(session.poll, max_delay=60.0, initial_delay=60.0)
    waiter = asyncio.create_task(handle.wait(timeout=None, poll=slow))
    await asyncio.sleep(0.01)
    await session.aclose()
    with pytest.raises(midvary.SessionClosedError):
        await asyncio.wait_for(waiter, 1.0)


async def test_record_with_other_task_id_is_protocol_error(
    session: midvary.Session, api: MockAPI
) -> None:
    """A record for a different task than asked for is refused, not returned."""
    api.envelope("GET", URL, data=record("other", flag=1))
    with pytest.raises(midvary.ProtocolError):
        await session.get_task("t1")


async def test_timeout_validation(session: midvary.Session) -> None:
    """A non-positive timeout is a ValueError before any request."""
    with pytest.raises(ValueError, match="timeout"):
        await session.task("t1").wait(timeout=0)
