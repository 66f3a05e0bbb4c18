"""Answers the Midjourney pages do not promise, as the fake produces them, end to end."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import midvary
from midvary.testing import ManualClock

from .conftest import OpenSession, StartFake, close_to, finish, wall


@pytest.mark.parametrize("flag_format", ["int", "str", "word"])
async def test_flag_4_and_string_flags_end_a_wait_with_the_result(
    start_fake: StartFake, open_session: OpenSession, flag_format: str
) -> None:
    """Success spelled 4, "4" or "CALLBACK_EXCEPTION" (with URLs) ends the wait with its images."""
    fake = await start_fake(flag_format=flag_format, callback_failed_flag=True)
    session = await open_session(fake)
    record = await (await session.vary("parent-1", 0))
    assert record.status is midvary.TaskStatus.SUCCESS
    assert len(record.image_urls) == 4


@pytest.mark.parametrize("flag_format", ["str", "word"])
async def test_string_flags_of_failures_and_running_tasks(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock, flag_format: str
) -> None:
    """A running task read as a string is GENERATING; a failure read as one is a failure."""
    fake = await start_fake(clock=clock, flag_format=flag_format, failure_rate=1.0)
    session = await open_session(fake)
    handle = await session.vary("parent-1", 0)
    clock.advance(0.02)  # visible, not finished
    assert (await session.get_task(handle.task_id)).status is midvary.TaskStatus.GENERATING
    finish(clock, fake, handle.task_id)
    record = await session.get_task(handle.task_id)
    assert record.status.is_failure
    assert record.status.name == fake.task(handle.task_id).outcome.name


async def test_plain_times_are_read_as_utc(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """Times as "YYYY-MM-DD HH:MM:SS" (createTime, completeTime) are UTC datetimes."""
    fake = await start_fake(clock=clock, time_format="plain")
    session = await open_session(fake)
    handle = await session.vary("parent-1", 0)
    finish(clock, fake, handle.task_id)
    record = await session.get_task(handle.task_id)
    task = fake.task(handle.task_id)
    assert record.created_at is not None
    assert record.created_at.tzinfo is not None
    assert close_to(record.created_at, wall(task.created_at).replace(microsecond=0))
    assert record.completed_at == datetime.fromtimestamp(
        int(wall(task.finished_at).timestamp()), UTC
    )


async def test_an_envelope_with_message_instead_of_msg(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """A refusal whose envelope says "message" keeps the provider's words in the error."""
    fake = await start_fake(message_key="message")
    session = await open_session(fake)
    with pytest.raises(midvary.ValidationError, match="is not a task of this account"):
        await session.vary("not-a-parent", 0)
    record = await (await session.vary("parent-1", 1))
    assert record.status is midvary.TaskStatus.SUCCESS


@pytest.mark.parametrize("status", [404, 405])
async def test_a_host_that_does_not_serve_the_endpoint_is_a_certain_refusal(
    start_fake: StartFake, open_session: OpenSession, status: int
) -> None:
    """A bare 404/405 on a submission: EndpointNotServedError naming path, host and midapi.ai.

    Certain: a keyed submission's key is released (a later one is sent), never uncertain.
    """
    fake = await start_fake(unserved_endpoints=["generate"], unserved_status=status)
    session = await open_session(fake)
    with pytest.raises(midvary.EndpointNotServedError) as info:
        await session.generate("a fox", key="fox/1")
    error = info.value
    assert isinstance(error, midvary.APIError)
    assert not isinstance(error, midvary.SubmitUncertainError)
    assert (error.http_status, error.path, error.base_url) == (
        status,
        "/api/v1/mj/generate",
        fake.base_url,
    )
    for words in ("/api/v1/mj/generate", fake.base_url, "https://api.midapi.ai", "nothing"):
        assert words in str(error)
    assert fake.stats.requests["generate"] == 1  # not retried
    fake.update(unserved_endpoints=[])
    record = await (await session.generate("a fox", key="fox/1"))  # the key was released
    assert record.status is midvary.TaskStatus.SUCCESS
