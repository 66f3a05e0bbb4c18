"""Final refusals and failures: each reaches the user as its typed error, never retried."""

from __future__ import annotations

import pytest

import midvary
from midvary.testing import ManualClock

from ..conditions import until
from .conftest import OpenSession, StartFake, finish, polls

MIRROR = pytest.mark.parametrize("mirror", [False, True], ids=["http-200", "http-mirrored"])


@MIRROR
async def test_wrong_key_is_refused_without_echoing_any_key(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """A wrong key gets AuthenticationError (401) on submit, once, and no key in the message."""
    fake = await start_fake(mirror_http_status=mirror)
    session = await open_session(fake, api_key="fake-not-the-right-key")

    with pytest.raises(midvary.AuthenticationError) as info:
        await session.vary("parent-auth", 0)

    assert info.value.code == 401
    assert info.value.http_status == (401 if mirror else 200)
    assert "fake-not-the-right-key" not in str(info.value)
    assert fake.api_key not in str(info.value)
    assert "fake-not-the-right-key" not in repr(session)
    assert fake.stats.requests["submit"] == 1
    assert fake.stats.tasks_created == 0


async def test_rotated_key_fails_the_wait_and_the_new_key_resumes_it(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """A key rotated mid-wait ends the wait with 401; a session with the new key resumes it."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    old_key = fake.api_key
    handle = await session.vary("parent-rotate", 1)
    new_key = fake.rotate_api_key()

    with pytest.raises(midvary.AuthenticationError) as info:
        await handle
    assert old_key not in str(info.value)
    assert new_key not in str(info.value)
    assert not handle.done()

    finish(clock, fake, handle.task_id)
    resumed = await open_session(fake, api_key=new_key)
    record = await resumed.task(handle.task_id)
    assert record.status is midvary.TaskStatus.SUCCESS
    assert fake.stats.tasks_created == 1


async def test_invalid_arguments_are_refused_before_any_request(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Bad task ids, indexes and URLs raise ValueError/TypeError and send nothing."""
    fake = await start_fake()
    session = await open_session(fake)

    with pytest.raises(ValueError, match="image_index"):
        await session.vary("parent-local", 4)
    with pytest.raises(TypeError, match="image_index"):
        await session.vary("parent-local", "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_id"):
        await session.vary("", 0)
    with pytest.raises(ValueError, match="callback_url"):
        await session.vary("parent-local", 0, callback_url="ftp://127.0.0.1/hook")
    with pytest.raises(ValueError, match="task_id"):
        await session.get_task("has space")

    assert sum(fake.stats.requests.values()) == 0


@MIRROR
async def test_unknown_parent_is_a_validation_error(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """Varying a task the account does not have gets ValidationError (422), not retried."""
    fake = await start_fake(mirror_http_status=mirror)
    session = await open_session(fake)

    with pytest.raises(midvary.ValidationError) as info:
        await session.vary("no-such-parent", 0)

    assert not isinstance(info.value, midvary.NotFoundError)
    assert info.value.code == 422
    assert "no-such-parent" in str(info.value)
    assert fake.stats.requests["submit"] == 1
    assert fake.stats.tasks_created == 0


async def test_a_vary_of_a_vary_is_accepted_once_the_first_succeeded(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """A running vary task is no parent yet (422); once it succeeded it can be varied."""
    fake = await start_fake(clock=clock, invisible_for=0.0, parent_prefix=None)
    fake.add_parent("mj-grid-1")
    session = await open_session(fake, target_delay=None)
    first = await session.vary("mj-grid-1", 0)

    with pytest.raises(midvary.ValidationError):
        await session.vary(first.task_id, 0)
    finish(clock, fake, first.task_id)
    await first
    handle = await session.vary(first.task_id, 3)
    finish(clock, fake, handle.task_id)
    second = await handle

    assert second.params == {"taskId": first.task_id, "imageIndex": 3}
    assert fake.stats.tasks_created == 2


@MIRROR
async def test_running_out_of_credits_stops_at_402(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """With two credits, two submissions are accepted and the third gets 402, not retried."""
    fake = await start_fake(credits=2, mirror_http_status=mirror)
    session = await open_session(fake)

    accepted = [await session.vary("parent-credits", index) for index in range(2)]
    with pytest.raises(midvary.InsufficientCreditsError) as info:
        await session.vary("parent-credits", 2)

    assert info.value.code == 402
    assert len({handle.task_id for handle in accepted}) == 2
    assert fake.credits_left == 0
    assert fake.stats.tasks_created == 2
    assert fake.stats.requests["submit"] == 3


@pytest.mark.parametrize(
    ("create_share", "status", "error_code"),
    [
        (1.0, midvary.TaskStatus.CREATE_FAILED, 500),
        (0.0, midvary.TaskStatus.GENERATE_FAILED, 501),
    ],
    ids=["flag-2", "flag-3"],
)
async def test_failed_task_raises_task_failed_error_with_its_record(
    start_fake: StartFake,
    open_session: OpenSession,
    create_share: float,
    status: midvary.TaskStatus,
    error_code: int,
) -> None:
    """Flags 2 and 3 raise TaskFailedError carrying the final record, which has no images."""
    fake = await start_fake(failure_rate=1.0, create_failure_share=create_share)
    session = await open_session(fake)
    handle = await session.vary("parent-fails", 0)

    with pytest.raises(midvary.TaskFailedError) as info:
        await handle

    record = info.value.record
    assert info.value.task_id == handle.task_id
    assert record.status is status
    assert record.error_code == error_code
    assert record.error_message
    assert record.image_urls == ()
    assert record.completed_at is not None
    assert handle.done()
    seen = polls(fake, handle.task_id)
    with pytest.raises(midvary.TaskFailedError):
        await handle
    assert polls(fake, handle.task_id) == seen
    assert (await handle.refresh()).status is status


@pytest.mark.parametrize("style", ["422", "404"])
@MIRROR
async def test_unknown_task_is_not_found_in_either_style(
    start_fake: StartFake, open_session: OpenSession, style: str, mirror: bool
) -> None:
    """get_task of an unknown id raises NotFoundError whether the fake says 422 or 404."""
    fake = await start_fake(not_found_style=style, mirror_http_status=mirror)
    session = await open_session(fake)

    with pytest.raises(midvary.NotFoundError) as info:
        await session.get_task("vary-never-made")

    assert "vary-never-made" in str(info.value)
    assert fake.stats.requests["record-info"] == 1


@pytest.mark.parametrize("style", ["422", "404"])
async def test_invisibility_beyond_the_grace_is_not_found(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock, style: str
) -> None:
    """A task still invisible after not_found_grace ends the wait with NotFoundError."""
    fake = await start_fake(clock=clock, invisible_for=60.0, not_found_style=style)
    session = await open_session(fake, not_found_grace=0.1, target_delay=None)
    handle = await session.vary("parent-ghost", 0)

    with pytest.raises(midvary.NotFoundError) as info:
        await handle

    assert handle.task_id in str(info.value)
    # Polled during the grace, where "not found" means "not visible yet".
    assert polls(fake, handle.task_id) >= 2
    assert not handle.done()


async def test_wrong_key_on_poll_is_final(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """A 401 answering a poll ends the wait at once instead of polling on."""
    fake = await start_fake(clock=clock, invisible_for=0.0)
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-401-poll", 0)
    fake.api_key = "fake-changed-key"

    with pytest.raises(midvary.AuthenticationError):
        await handle

    await until(lambda: fake.stats.codes[401] == 1)
    assert fake.stats.requests["record-info"] == 1
