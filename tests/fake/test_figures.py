"""The figures tests and benchmarks read: polls, detection delays, counters, control API."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from midvary.testing import ManualClock, SuccessFlag

from .conftest import StartFake, finish


async def test_polls_per_task_and_detection_delay(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """Every poll of a task counts; the delay is finish to first final answer, once."""
    fake, client = await start_fake(invisible_for=0.5)
    task_id = await client.submit_ok()
    await client.record(task_id)  # invisible
    clock.advance(0.5)
    await client.record(task_id)  # generating
    finish(clock, fake, task_id, extra=0.25)
    assert fake.task(task_id).detection_delay is None
    assert (await client.record(task_id)).data["successFlag"] == 1
    clock.advance(1.0)
    await client.record(task_id)
    assert fake.stats.polls == {task_id: 4}
    assert fake.stats.detection_delays[task_id] == pytest.approx(0.25)
    snapshot = fake.task(task_id)
    assert snapshot.polls == 4
    assert snapshot.detection_delay == pytest.approx(0.25)
    summary = fake.stats.summary()
    assert summary["total_polls"] == 4
    assert summary["max_detection_delay"] == pytest.approx(0.25)


async def test_polls_of_unknown_ids_are_not_per_task_figures(start_fake: StartFake) -> None:
    """Polls of ids the fake never created count as requests, not as per-task polls."""
    fake, client = await start_fake()
    await client.record("made-up")
    assert fake.stats.polls == {}
    assert fake.stats.requests["record-info"] == 1
    assert fake.stats.codes[422] == 1


async def test_request_and_code_counters(start_fake: StartFake) -> None:
    """Requests are counted per endpoint and answers per envelope code."""
    fake, client = await start_fake(credits=1)
    task_id = await client.submit_ok()
    await client.submit()  # 402
    await client.submit(key="bad")  # 401
    await client.record(task_id)  # 422 (invisible)
    assert fake.stats.requests == {"submit": 3, "record-info": 1}
    assert fake.stats.codes == {200: 1, 402: 1, 401: 1, 422: 1}


async def test_tasks_view_and_snapshots(start_fake: StartFake, clock: ManualClock) -> None:
    """The tasks view maps ids to snapshots; task() raises KeyError for unknown ids."""
    fake, client = await start_fake()
    ids = [await client.submit_ok(imageIndex=i) for i in range(3)]
    assert list(fake.tasks) == ids
    assert len(fake.tasks) == 3
    snapshot = fake.tasks[ids[1]]
    assert (snapshot.image_index, snapshot.success_flag) == (1, SuccessFlag.GENERATING)
    assert not snapshot.is_final
    assert snapshot.result_urls == ()
    finish(clock, fake, ids[1])
    assert fake.task(ids[1]).success_flag is SuccessFlag.SUCCESS
    assert len(fake.task(ids[1]).result_urls) == 4
    with pytest.raises(KeyError):
        fake.task("nope")
    assert "nope" not in fake.tasks


async def test_control_endpoints_expose_figures_and_change_knobs(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    """GET /_fake/stats serves the figures; POST /_fake/settings and /maintenance change knobs."""
    fake, client = await start_fake()
    task_id = await client.submit_ok()
    await client.record(task_id)
    async with http.get(fake.base_url + "/_fake/stats") as response:
        figures = await response.json()
    assert figures["tasks_created"] == 1
    assert figures["polls"] == {task_id: 1}
    assert figures["codes"] == {"200": 1, "422": 1}
    assert figures["summary"]["total_polls"] == 1

    change = {"submit_limit": [1, 60], "fault_kinds": ["reset"], "time_format": "epoch_ms"}
    async with http.post(fake.base_url + "/_fake/settings", json=change) as response:
        assert response.status == 200
        shown = await response.json()
    assert shown["submit_limit"] == [1, 60.0]
    assert shown["fault_kinds"] == ["reset"]
    assert fake.settings.submit_limit == (1, 60.0)
    assert fake.settings.time_format == "epoch_ms"
    for bad in ({"failure_rate": 2}, {"no_such_knob": 1}, [1, 2]):
        async with http.post(fake.base_url + "/_fake/settings", json=bad) as response:
            assert response.status == 400, bad
            assert (await response.json())["error"]

    async with http.post(fake.base_url + "/_fake/maintenance", json={"on": True}) as response:
        assert response.status == 200
    assert (await client.record(task_id)).code == 455
    async with http.post(fake.base_url + "/_fake/maintenance", json={"on": "yes"}) as response:
        assert response.status == 400
    # The control endpoints are not API requests.
    assert fake.stats.requests == {"submit": 1, "record-info": 2}


async def test_unknown_paths_get_an_envelope(start_fake: StartFake) -> None:
    """A wrong path or method on the API origin still answers an envelope (HTTP 404/405)."""
    _, client = await start_fake()
    missing = await client.request("GET", "/api/v1/mj/nothing-here")
    assert (missing.status, missing.code) == (404, 404)
    wrong_method = await client.request("GET", "/api/v1/mj/generateVary")
    assert (wrong_method.status, wrong_method.code) == (405, 405)


async def test_tasks_start_no_asyncio_task_each(start_fake: StartFake, clock: ManualClock) -> None:
    """State is computed from the clock: tasks (even with callbacks) add no asyncio tasks."""
    fake, client = await start_fake(callbacks=True)
    await client.submit_ok(callBackUrl="http://127.0.0.1:9/hook")  # opens the keep-alive
    before = len(asyncio.all_tasks())
    for _ in range(49):
        await client.submit_ok(callBackUrl="http://127.0.0.1:9/hook")
    assert len(asyncio.all_tasks()) == before
    assert fake.pending_callbacks == 50
    clock.advance(3600.0)
    assert all(snapshot.is_final for snapshot in fake.tasks.values())
