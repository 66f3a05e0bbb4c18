"""GET record-info: visibility, lifecycle, field shapes, time formats, result images."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import aiohttp
import pytest

from midvary.testing import PNG_SIGNATURE, ManualClock

from .conftest import RECORD, StartFake, finish

RECORD_FIELDS = {
    "taskId",
    "taskType",
    "paramJson",
    "createTime",
    "completeTime",
    "resultInfoJson",
    "successFlag",
    "errorCode",
    "errorMessage",
}


def parse_time(value: object) -> datetime:
    """Either documented time format, as an aware datetime."""
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC)
    assert isinstance(value, str)
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


@pytest.mark.parametrize(("style", "code"), [("422", 422), ("404", 404)])
async def test_unknown_task_is_the_null_record(
    start_fake: StartFake, style: str, code: int
) -> None:
    """An unknown id is code 422 "recordInfo is null" with data null (or 404 by setting)."""
    _, client = await start_fake(not_found_style=style)
    answer = await client.record("no-such-task")
    assert (answer.status, answer.code, answer.data) == (200, code, None)
    if code == 422:
        assert answer.body["msg"] == "recordInfo is null"


async def test_missing_task_id_query_is_400(start_fake: StartFake) -> None:
    """record-info without a taskId query parameter is code 400."""
    _, client = await start_fake()
    answer = await client.request("GET", RECORD)
    assert answer.code == 400


async def test_new_task_is_invisible_then_visible(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """A new task answers the null record for invisible_for seconds, then its record."""
    fake, client = await start_fake(invisible_for=0.5, not_found_style="422")
    task_id = await client.submit_ok()
    hidden = await client.record(task_id)
    assert (hidden.code, hidden.body["msg"], hidden.data) == (422, "recordInfo is null", None)
    clock.advance(0.25)
    assert (await client.record(task_id)).code == 422
    clock.advance(0.25)
    visible = await client.record(task_id)
    assert visible.code == 200
    assert visible.data["taskId"] == task_id
    assert fake.task(task_id).polls == 3


async def test_success_lifecycle_0_then_1(start_fake: StartFake, clock: ManualClock) -> None:
    """The flag is 0 with null completeTime and results, then 1 with both and no error."""
    fake, client = await start_fake(time_format="iso")
    task_id = await client.submit_ok(taskId="parent-7", imageIndex=2)
    clock.advance(0.5)
    running = (await client.record(task_id)).data
    assert set(running) == RECORD_FIELDS
    assert running["taskType"] == "mj_vary"
    assert running["successFlag"] == 0
    assert running["completeTime"] is None
    assert running["resultInfoJson"] is None
    assert running["errorCode"] is None
    assert running["errorMessage"] is None

    finish(clock, fake, task_id)
    done = (await client.record(task_id)).data
    assert set(done) == RECORD_FIELDS
    assert done["successFlag"] == 1
    assert parse_time(done["completeTime"]) > parse_time(done["createTime"])
    assert done["errorCode"] is None
    assert done["errorMessage"] is None
    urls = [item["resultUrl"] for item in done["resultInfoJson"]["resultUrls"]]
    assert len(urls) == 4
    assert urls == list(fake.task(task_id).result_urls)


@pytest.mark.parametrize(("share", "flag"), [(1.0, 2), (0.0, 3)])
async def test_failure_lifecycles_end_in_2_or_3_with_error(
    start_fake: StartFake, clock: ManualClock, share: float, flag: int
) -> None:
    """Failing tasks end in flag 2 (create failed, quickly) or 3 with errorCode/errorMessage."""
    fake, client = await start_fake(failure_rate=1.0, create_failure_share=share, invisible_for=0.0)
    task_id = await client.submit_ok()
    first = (await client.record(task_id)).data
    assert first["successFlag"] == 0
    snapshot = fake.task(task_id)
    duration = snapshot.finished_at - snapshot.created_at
    if flag == 2:
        assert duration <= 0.2  # a tenth of a duration drawn from (1, 2) s
    else:
        assert duration >= 1.0
    finish(clock, fake, task_id)
    done = (await client.record(task_id)).data
    assert done["successFlag"] == flag
    assert isinstance(done["errorCode"], int)
    assert isinstance(done["errorMessage"], str)
    assert done["errorMessage"]
    assert done["resultInfoJson"] is None
    assert done["completeTime"] is not None
    assert fake.task(task_id).result_urls == ()


async def test_failure_rate_splits_between_flags_by_seed(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """failure_rate 0.5 makes some tasks fail with both flags; the same seed, the same tasks."""
    outcomes = []
    for _ in range(2):
        fake, client = await start_fake(failure_rate=0.5, seed=42)
        ids = [await client.submit_ok() for _ in range(40)]
        outcomes.append([int(fake.task(task_id).outcome) for task_id in ids])
    assert outcomes[0] == outcomes[1]
    assert {1, 2, 3} <= set(outcomes[0])


async def test_param_json_is_a_string_echoing_the_request(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """The paramJson field is a JSON string decoding to the four request fields sent."""
    _, client = await start_fake()
    sent = {
        "taskId": "parent-echo",
        "imageIndex": 3,
        "waterMark": "midvary",
        "callBackUrl": "http://127.0.0.1:9/hook",
    }
    task_id = await client.submit_ok(**sent, unknownField="dropped")
    clock.advance(0.5)
    param_json = (await client.record(task_id)).data["paramJson"]
    assert isinstance(param_json, str)
    assert json.loads(param_json) == sent


async def test_iso_times(start_fake: StartFake, clock: ManualClock) -> None:
    """time_format="iso": ISO-8601 strings in UTC, near the real time of creation."""
    fake, client = await start_fake(time_format="iso", invisible_for=0.0)
    task_id = await client.submit_ok()
    finish(clock, fake, task_id)
    data = (await client.record(task_id)).data
    created = data["createTime"]
    assert isinstance(created, str)
    assert created.endswith("Z")
    assert abs(parse_time(created).timestamp() - time.time()) < 60
    assert isinstance(data["completeTime"], str)


async def test_epoch_ms_times(start_fake: StartFake, clock: ManualClock) -> None:
    """time_format="epoch_ms": int milliseconds; completeTime null while running."""
    fake, client = await start_fake(time_format="epoch_ms", invisible_for=0.0)
    task_id = await client.submit_ok()
    running = (await client.record(task_id)).data
    assert isinstance(running["createTime"], int)
    assert abs(running["createTime"] / 1000 - time.time()) < 60
    assert running["completeTime"] is None
    finish(clock, fake, task_id)
    done = (await client.record(task_id)).data
    assert isinstance(done["completeTime"], int)
    elapsed_ms = done["completeTime"] - done["createTime"]
    snapshot = fake.task(task_id)
    assert elapsed_ms == pytest.approx((snapshot.finished_at - snapshot.created_at) * 1000, abs=2)


async def test_mixed_times_vary_per_record(start_fake: StartFake, clock: ManualClock) -> None:
    """time_format="mixed": records differ (ISO with Z, with +00:00, epoch ms), each parses."""
    _, client = await start_fake(time_format="mixed", invisible_for=0.0)
    kinds = set()
    for _ in range(30):
        created = (await client.record(await client.submit_ok())).data["createTime"]
        parse_time(created)
        kinds.add("ms" if isinstance(created, int) else created[-1])
    assert kinds == {"ms", "Z", "0"}


async def test_result_info_as_string(start_fake: StartFake, clock: ManualClock) -> None:
    """result_info_as_string sends resultInfoJson as a JSON string of the same object."""
    fake, client = await start_fake(result_info_as_string=True, images_per_task=2)
    task_id = await client.submit_ok()
    finish(clock, fake, task_id)
    info = (await client.record(task_id)).data["resultInfoJson"]
    assert isinstance(info, str)
    urls = [item["resultUrl"] for item in json.loads(info)["resultUrls"]]
    assert urls == list(fake.task(task_id).result_urls)
    assert len(urls) == 2


async def test_result_urls_are_pngs_on_another_origin_without_auth(
    start_fake: StartFake, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """Results live on another origin, serve valid PNGs, and never saw an Authorization."""
    fake, client = await start_fake()
    task_id = await client.submit_ok()
    finish(clock, fake, task_id)
    data = (await client.record(task_id)).data
    urls = [item["resultUrl"] for item in data["resultInfoJson"]["resultUrls"]]
    assert fake.results_base_url != fake.base_url
    bodies = []
    for index, url in enumerate(urls):
        assert url.startswith(fake.results_base_url + "/results/")
        assert url.endswith(f"{task_id}_{index}.png")
        async with http.get(url) as response:
            assert response.status == 200
            assert response.content_type == "image/png"
            bodies.append(await response.read())
    assert all(body.startswith(PNG_SIGNATURE) for body in bodies)
    assert len(set(bodies)) == 4
    assert len(fake.result_request_headers) == 4
    assert all("Authorization" not in headers for headers in fake.result_request_headers)
    assert fake.stats.requests["results"] == 4


async def test_result_server_records_an_authorization_header(
    start_fake: StartFake, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A client that leaks its key to the CDN is caught: the header is recorded."""
    fake, client = await start_fake()
    task_id = await client.submit_ok()
    finish(clock, fake, task_id)
    url = fake.task(task_id).result_urls[0]
    async with http.get(url, headers={"authorization": "Bearer leaked"}) as response:
        assert response.status == 200
    assert fake.result_request_headers[-1]["Authorization"] == "Bearer leaked"


async def test_results_of_unfinished_or_unknown_tasks_are_404(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    """The CDN has no image for a running task, an unknown task, or an index past the count."""
    fake, client = await start_fake(images_per_task=1)
    task_id = await client.submit_ok()
    base = fake.results_base_url + "/results/"
    for name in (f"{task_id}_0.png", "nobody_0.png", "garbage.png"):
        async with http.get(base + name) as response:
            assert response.status == 404, name


async def test_outside_parents_have_a_finished_record(start_fake: StartFake) -> None:
    """A parent the fake did not create reads as a finished mj_txt2img task with 4 images."""
    _, client = await start_fake()
    data = (await client.record("parent-outside")).data
    assert set(data) == RECORD_FIELDS
    assert (data["taskType"], data["successFlag"]) == ("mj_txt2img", 1)
    assert len(data["resultInfoJson"]["resultUrls"]) == 4


async def test_real_clock_task_finishes_on_its_own(start_fake: StartFake) -> None:
    """On the default monotonic clock a short task goes from 0 to 1 without a ManualClock."""
    fake, client = await start_fake(clock=None, task_duration=(0.05, 0.1), invisible_for=0.0)
    task_id = await client.submit_ok()
    assert fake.task(task_id).success_flag == 0
    flag = 0
    for _ in range(500):
        flag = (await client.record(task_id)).data["successFlag"]
        if flag == 1:
            break
        await asyncio.sleep(0.01)
    assert flag == 1
    assert fake.task(task_id).is_final
