"""The happy path through the public API, and the record formats the provider may send."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import yarl

import midvary
from midvary.testing import ManualClock

from .conftest import OpenSession, StartFake, close_to, finish, polls, wall


async def test_vary_then_await_returns_every_record_field(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """A vary task awaited to SUCCESS carries type, params echo, aware times and result URLs."""
    fake = await start_fake(clock=clock, task_duration=(1.0, 2.0), invisible_for=0.5)
    session = await open_session(fake, target_delay=None)

    handle = await session.vary("parent-happy", 2, water_mark="midvary")

    assert handle.request == midvary.VaryRequest(
        task_id="parent-happy", image_index=2, water_mark="midvary"
    )
    assert not handle.done()
    submitted = fake.task(handle.task_id)
    assert (submitted.parent_task_id, submitted.image_index, submitted.water_mark) == (
        "parent-happy",
        2,
        "midvary",
    )
    finish(clock, fake, handle.task_id)
    record = await handle

    task = fake.task(handle.task_id)
    assert record.task_id == handle.task_id
    assert record.status is midvary.TaskStatus.SUCCESS
    assert record.task_type == "mj_vary"
    assert record.params == {"taskId": "parent-happy", "imageIndex": 2, "waterMark": "midvary"}
    assert record.created_at is not None
    assert record.created_at.utcoffset() == timedelta(0)
    assert close_to(record.created_at, wall(task.created_at))
    assert close_to(record.completed_at, wall(task.finished_at))
    assert (record.error_code, record.error_message) == (None, None)
    assert record.image_urls == task.result_urls
    assert len(record.image_urls) == 4
    results = yarl.URL(fake.results_base_url)
    api = yarl.URL(fake.base_url)
    assert results.origin() != api.origin()
    assert all(yarl.URL(url).origin() == results.origin() for url in record.image_urls)
    # Already finished when first polled: one poll was enough, and none follows.
    assert polls(fake, handle.task_id) == 1
    assert handle.done()
    assert handle.record is record
    assert await handle is record
    assert polls(fake, handle.task_id) == 1


async def test_many_concurrent_waits_all_succeed_once_each(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Twelve tasks awaited together (the schedule learns on the way) each succeed once."""
    fake = await start_fake()
    session = await open_session(fake)

    handles = [await session.vary(f"parent-many-{n // 4}", n % 4) for n in range(12)]
    records = await asyncio.gather(*handles)

    assert [record.task_id for record in records] == [handle.task_id for handle in handles]
    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)
    assert len({handle.task_id for handle in handles}) == 12
    assert fake.stats.tasks_created == 12
    assert fake.stats.duplicate_submissions == 0
    # Then a thirteenth, polled on the learned schedule.
    late = await (await session.vary("parent-many-late", 0))
    assert late.status is midvary.TaskStatus.SUCCESS


@pytest.mark.parametrize("as_string", [False, True], ids=["info-object", "info-string"])
@pytest.mark.parametrize("time_format", ["iso", "epoch_ms", "mixed"])
async def test_time_formats_and_result_info_shapes_are_read_alike(
    start_fake: StartFake,
    open_session: OpenSession,
    clock: ManualClock,
    time_format: str,
    as_string: bool,
) -> None:
    """ISO, epoch-ms and mixed times, resultInfoJson as object or string: the same records."""
    fake = await start_fake(
        clock=clock,
        seed=11,
        time_format=time_format,
        result_info_as_string=as_string,
        task_duration=(1.0, 2.0),
        invisible_for=0.0,
    )
    session = await open_session(fake, target_delay=None)

    handles = [await session.vary("parent-formats", index) for index in range(4)]
    clock.advance(3.0)
    records = await asyncio.gather(*handles)

    for handle, record in zip(handles, records, strict=True):
        task = fake.task(handle.task_id)
        assert record.created_at is not None
        assert record.created_at.utcoffset() == timedelta(0)
        assert close_to(record.created_at, wall(task.created_at))
        assert close_to(record.completed_at, wall(task.finished_at))
        assert record.image_urls == task.result_urls
        assert len(record.image_urls) == 4


async def test_a_running_record_has_no_completion_time_or_images(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock
) -> None:
    """refresh() of a running task: GENERATING, created_at set, completed_at None, no URLs."""
    fake = await start_fake(clock=clock, time_format="epoch_ms", invisible_for=0.0)
    session = await open_session(fake)
    handle = await session.vary("parent-running", 1)

    record = await handle.refresh()

    assert record.status is midvary.TaskStatus.GENERATING
    assert not record.is_final
    assert close_to(record.created_at, wall(fake.task(handle.task_id).created_at))
    assert record.completed_at is None
    assert record.image_urls == ()
    assert not handle.done()
    assert handle.record is record


async def test_parent_record_and_reattached_handle(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """get_task reads a parent's record; session.task() re-attaches to a finished task."""
    fake = await start_fake()
    session = await open_session(fake)

    parent = await session.get_task("parent-known")
    assert parent.task_id == "parent-known"
    assert parent.task_type == "mj_txt2img"
    assert parent.status is midvary.TaskStatus.SUCCESS
    assert len(parent.image_urls) == 4

    reattached = session.task("parent-known")
    assert reattached.request is None
    record = await reattached
    assert record.image_urls == parent.image_urls


async def test_a_task_submitted_in_one_session_is_awaited_in_another(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Resuming: a task id kept from a closed session is awaited through a new one."""
    fake = await start_fake()
    first = await open_session(fake)
    task_id = (await first.vary("parent-resume", 3)).task_id
    await first.aclose()

    second = await open_session(fake)
    record = await second.task(task_id)

    assert record.status is midvary.TaskStatus.SUCCESS
    assert record.params == {"taskId": "parent-resume", "imageIndex": 3}
    assert fake.stats.tasks_created == 1


async def test_index_base_one_on_both_sides_shifts_the_wire_value_only(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """index_base=1 (client and fake): image_index 0..3 travels as 1..4 and succeeds."""
    fake = await start_fake(index_base=1)
    session = await open_session(fake, index_base=1)

    handles = [await session.vary("parent-one-based", index) for index in range(4)]
    records = await asyncio.gather(*handles)

    assert [handle.request.image_index for handle in handles if handle.request] == [0, 1, 2, 3]
    assert [fake.task(handle.task_id).image_index for handle in handles] == [1, 2, 3, 4]
    assert [record.params["imageIndex"] for record in records] == [1, 2, 3, 4]
    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)


@pytest.mark.parametrize(("client_base", "fake_base", "index"), [(0, 1, 0), (1, 0, 3)])
async def test_index_base_mismatch_is_a_bad_request(
    start_fake: StartFake,
    open_session: OpenSession,
    client_base: int,
    fake_base: int,
    index: int,
) -> None:
    """A client index_base that disagrees with the provider's gets 400 BadRequestError."""
    fake = await start_fake(index_base=fake_base)
    session = await open_session(fake, index_base=client_base)

    with pytest.raises(midvary.BadRequestError) as info:
        await session.vary("parent-mismatch", index)

    assert info.value.code == 400
    assert "imageIndex" in str(info.value)
    assert fake.stats.requests["submit"] == 1
    assert fake.stats.tasks_created == 0
