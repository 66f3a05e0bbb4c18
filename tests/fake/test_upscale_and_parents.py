"""generateUpscale, which tasks are parents, the shared submit budget, ids and figures."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from midvary.testing import FakeProvider, ManualClock

from .conftest import Answer, Client, StartFake, finish

IMG = "https://images.example/in.png"


async def test_upscale_accepts_0_to_3_and_answers_a_new_task_id(start_fake: StartFake) -> None:
    """Upscale imageIndex 0..3 is accepted with data.taskId, a task of kind upscale."""
    fake, client = await start_fake()
    for index in range(4):
        answer = await client.upscale(imageIndex=index)
        assert (answer.status, answer.code, answer.body["msg"]) == (200, 200, "success")
        assert set(answer.data) == {"taskId"}
        task = fake.task(answer.data["taskId"])
        assert (task.kind, task.task_type) == ("upscale", "mj_upscale")
        assert (task.parent_task_id, task.image_index) == ("parent-1", index)
    assert fake.stats.tasks_by_endpoint["upscale"] == 4


UPSCALE_BAD: list[tuple[str, Any]] = [
    ("missing taskId", {"imageIndex": 0}),
    ("empty taskId", {"taskId": "", "imageIndex": 0}),
    ("missing imageIndex", {"taskId": "parent-1"}),
    ("imageIndex -1", {"taskId": "parent-1", "imageIndex": -1}),
    ("imageIndex 4", {"taskId": "parent-1", "imageIndex": 4}),
    ("str imageIndex", {"taskId": "parent-1", "imageIndex": "1"}),
    ("float imageIndex", {"taskId": "parent-1", "imageIndex": 1.0}),
    ("bool imageIndex", {"taskId": "parent-1", "imageIndex": True}),
    ("int waterMark", {"taskId": "parent-1", "imageIndex": 0, "waterMark": 1}),
    ("relative callBackUrl", {"taskId": "parent-1", "imageIndex": 0, "callBackUrl": "/h"}),
    ("a list body", [{"taskId": "parent-1", "imageIndex": 0}]),
]


@pytest.mark.parametrize(("case", "body"), UPSCALE_BAD, ids=[case for case, _ in UPSCALE_BAD])
async def test_bad_upscale_fields_are_400(start_fake: StartFake, case: str, body: Any) -> None:
    """Each bad upscale field is code 400 with a msg, and creates nothing."""
    fake, client = await start_fake()
    answer = await client.upscale(body)
    assert answer.code == 400, case
    assert answer.body["msg"]
    assert fake.stats.tasks_created == 0


async def test_index_base_is_vary_only(start_fake: StartFake) -> None:
    """With index_base=1 vary takes 1..4, while upscale still takes 0..3."""
    _, client = await start_fake(index_base=1)
    await client.upscale_ok(imageIndex=0)
    await client.upscale_ok(imageIndex=3)
    assert (await client.upscale(imageIndex=4)).code == 400
    assert (await client.submit(imageIndex=0)).code == 400
    await client.submit_ok(imageIndex=4)


async def test_upscale_record_has_one_image_and_echoes_the_request(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """A finished upscale: taskType mj_upscale, 1 image, paramJson echoing the four fields."""
    fake, client = await start_fake()
    sent = {
        "taskId": "parent-up",
        "imageIndex": 2,
        "waterMark": "wm",
        "callBackUrl": "http://127.0.0.1:9/hook",
    }
    task_id = await client.upscale_ok(**sent, extra="dropped")
    finish(clock, fake, task_id)
    data = (await client.record(task_id)).data
    assert (data["taskType"], data["successFlag"]) == ("mj_upscale", 1)
    assert json.loads(data["paramJson"]) == sent
    urls = [item["resultUrl"] for item in data["resultInfoJson"]["resultUrls"]]
    assert urls == [f"{fake.results_base_url}/results/{task_id}_0.png"]


async def test_vary_record_keeps_its_shape(start_fake: StartFake, clock: ManualClock) -> None:
    """A vary record is still taskType mj_vary with images_per_task images."""
    fake, client = await start_fake(images_per_task=3)
    task_id = await client.submit_ok()
    finish(clock, fake, task_id)
    data = (await client.record(task_id)).data
    assert data["taskType"] == "mj_vary"
    assert len(data["resultInfoJson"]["resultUrls"]) == 3


async def _send(client: Client, endpoint: str, **fields: Any) -> Answer:
    if endpoint == "vary":
        return await client.submit(**fields)
    return await client.upscale(**fields)


@pytest.mark.parametrize("endpoint", ["vary", "upscale"])
async def test_unfinished_failed_and_unknown_parents_are_422(
    start_fake: StartFake, clock: ManualClock, endpoint: str
) -> None:
    """Vary and upscale refuse an unknown parent, one still generating, and a failed one."""
    fake, client = await start_fake(failure_rate=0.0)
    unknown = await _send(client, endpoint, taskId="nobody-knows-me")
    assert (unknown.status, unknown.code) == (200, 422)
    assert "nobody-knows-me" in unknown.body["msg"]

    running = await client.generate_ok()
    answer = await _send(client, endpoint, taskId=running)
    assert answer.code == 422
    assert "not finished" in answer.body["msg"]
    assert "successFlag 0" in answer.body["msg"]

    fake.update(failure_rate=1.0)
    failed = await client.generate_ok()
    finish(clock, fake, failed)
    assert fake.task(failed).success_flag in (2, 3)
    answer = await _send(client, endpoint, taskId=failed)
    assert answer.code == 422
    assert "failed" in answer.body["msg"]
    assert fake.stats.tasks_created == 2  # the two generates only


@pytest.mark.parametrize("endpoint", ["vary", "upscale"])
async def test_finished_generate_and_vary_tasks_are_parents(
    start_fake: StartFake, clock: ManualClock, endpoint: str
) -> None:
    """A successful generate, and a successful vary, may be varied and upscaled."""
    fake, client = await start_fake()
    grid = await client.generate_ok()
    finish(clock, fake, grid)
    child = (await _send(client, endpoint, taskId=grid, imageIndex=3)).data["taskId"]
    assert fake.task(child).parent_task_id == grid
    varied = await client.submit_ok(taskId=grid, imageIndex=1)
    finish(clock, fake, varied)
    assert (await _send(client, endpoint, taskId=varied, imageIndex=0)).code == 200


@pytest.mark.parametrize("endpoint", ["vary", "upscale"])
async def test_upscales_and_videos_are_not_parents(
    start_fake: StartFake, clock: ManualClock, endpoint: str
) -> None:
    """A finished upscale or video has no grid: varying or upscaling it is code 422."""
    fake, client = await start_fake()
    upscaled = await client.upscale_ok()
    video = await client.generate_ok(taskType="mj_video", fileUrls=[IMG])
    finish(clock, fake, upscaled)
    finish(clock, fake, video)
    for parent, kind in ((upscaled, "mj_upscale"), (video, "mj_video")):
        answer = await _send(client, endpoint, taskId=parent)
        assert answer.code == 422
        assert kind in answer.body["msg"]
        assert not fake.is_parent(parent)


@pytest.mark.parametrize("endpoint", ["vary", "upscale"])
async def test_an_image_past_the_parents_count_is_422(
    start_fake: StartFake, clock: ManualClock, endpoint: str
) -> None:
    """A parent of 2 images (images_per_task=2) has no image 2 or 3 to vary or upscale."""
    fake, client = await start_fake(images_per_task=2)
    grid = await client.generate_ok()
    finish(clock, fake, grid)
    assert (await _send(client, endpoint, taskId=grid, imageIndex=1)).code == 200
    answer = await _send(client, endpoint, taskId=grid, imageIndex=2)
    assert answer.code == 422
    assert "2 images" in answer.body["msg"]


async def test_parent_helpers(start_fake: StartFake, clock: ManualClock) -> None:
    """is_parent() and sample_parent_id follow the rule; add_parent() can make up an id."""
    fake, client = await start_fake()
    assert fake.sample_parent_id == "parent-1"
    assert fake.is_parent("parent-anything")
    assert not fake.is_parent("other")
    await client.submit_ok(taskId=fake.sample_parent_id)

    fake.update(parent_prefix=None)
    assert not fake.is_parent("parent-1")
    made = fake.sample_parent_id  # nothing else exists: one is made
    assert fake.is_parent(made)
    assert fake.sample_parent_id == made
    await client.upscale_ok(taskId=made)
    assert fake.add_parent("mine") == "mine"
    assert fake.add_parent() not in (made, "mine")
    with pytest.raises(ValueError, match="non-empty"):
        fake.add_parent(" ")


async def test_sample_parent_id_falls_back_to_a_finished_task(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """Without a prefix or added parents, sample_parent_id is the first successful grid."""
    fake, client = await start_fake(parent_prefix=None)
    fake.add_parent("seed-parent")
    grid = await client.submit_ok(taskId="seed-parent")
    finish(clock, fake, grid)
    assert fake.sample_parent_id == "seed-parent"
    other, other_client = await start_fake(parent_prefix=None)
    generated = await other_client.generate_ok()
    finish(clock, other, generated)
    assert other.sample_parent_id == generated
    assert other.is_parent(generated)


async def test_one_submit_limit_for_the_three_endpoints(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """generate, vary and upscale draw on one sliding window: the fourth of any is HTTP 429."""
    fake, client = await start_fake(submit_limit=(3, 1.0))
    await client.generate_ok()
    await client.submit_ok()
    await client.upscale_ok()
    refused = [await client.generate(), await client.submit(), await client.upscale()]
    assert [(a.status, a.code) for a in refused] == [(429, 429)] * 3
    assert fake.stats.rate_limited == 3
    clock.advance(1.0)
    await client.upscale_ok()
    assert fake.stats.tasks_by_endpoint == {"generate": 1, "submit": 1, "upscale": 2}
    assert fake.stats.tasks_created == 4


async def test_credits_are_shared_by_the_three_endpoints(start_fake: StartFake) -> None:
    """Each accepted submission of any kind uses one credit; then all three get 402."""
    fake, client = await start_fake(credits=3)
    assert fake.credits_left == 3
    await client.generate_ok()
    await client.submit_ok()
    await client.upscale_ok()
    answers = [await client.generate(), await client.submit(), await client.upscale()]
    assert [a.code for a in answers] == [402, 402, 402]
    assert fake.credits_left == 0


async def test_mirrored_statuses_on_upscale(start_fake: StartFake) -> None:
    """With mirror_http_status upscale's 401, 400 and 422 are HTTP statuses too."""
    _, client = await start_fake(mirror_http_status=True)
    answers = [
        await client.upscale(key=None),
        await client.upscale(imageIndex=4),
        await client.upscale(taskId="unknown"),
        await client.upscale(),
    ]
    assert [(a.status, a.code) for a in answers] == [(401, 401), (400, 400), (422, 422), (200, 200)]


@pytest.mark.parametrize("endpoint", ["submit", "generate", "upscale"])
async def test_faults_hit_only_the_endpoints_named(start_fake: StartFake, endpoint: str) -> None:
    """fault_endpoints names each submit endpoint on its own; the others answer normally."""
    fake, client = await start_fake(
        fault_rate=1.0, fault_kinds=["server_error"], fault_endpoints=[endpoint]
    )
    answers = {
        "submit": await client.submit(),
        "generate": await client.generate(),
        "upscale": await client.upscale(),
    }
    assert {name: answer.code for name, answer in answers.items()} == {
        name: 500 if name == endpoint else 200 for name in answers
    }
    assert fake.stats.faults_by_endpoint == {endpoint: 1}
    assert fake.stats.requests[endpoint] == 1


@pytest.mark.parametrize("endpoint", ["generate", "upscale"])
async def test_dropped_answers_on_the_new_endpoints(start_fake: StartFake, endpoint: str) -> None:
    """drop_submit_answer_rate loses generate and upscale answers too, after the task exists."""
    fake, client = await start_fake(drop_submit_answer_rate=1.0)
    send = client.generate if endpoint == "generate" else client.upscale
    with pytest.raises(aiohttp.ClientConnectionError):
        await send(envelope=False)
    assert fake.stats.dropped_submit_answers == 1
    assert fake.stats.tasks_by_endpoint[endpoint] == 1


async def test_latency_applies_to_generate(start_fake: StartFake) -> None:
    """A latency setting delays generate like the other endpoints, and the task still exists."""
    fake, client = await start_fake(latency=0.01)
    await client.generate_ok()
    assert fake.stats.requests["generate"] == 1


async def test_task_ids_are_unique_across_fakes_with_one_seed(start_fake: StartFake) -> None:
    """Two fakes with the same seed never hand out the same task id, of any kind."""
    ids: list[list[str]] = []
    for _ in range(2):
        _, client = await start_fake(seed=3)
        ids.append(
            [
                await client.submit_ok(),
                await client.generate_ok(),
                await client.upscale_ok(),
                await client.submit_ok(),
            ]
        )
    assert not set(ids[0]) & set(ids[1])
    assert all(task_id.startswith("fakevary") for task_id in (ids[0][0], ids[1][3]))
    assert ids[0][1].startswith("fakegen")
    assert ids[0][2].startswith("fakeups")
    assert len({*ids[0], *ids[1]}) == 8


async def test_outcomes_still_follow_the_seed(start_fake: StartFake) -> None:
    """Unique ids do not cost determinism: one seed, the same outcomes and durations."""
    runs = []
    for _ in range(2):
        fake, client = await start_fake(seed=11, failure_rate=0.5)
        tasks = [fake.task(await client.generate_ok(prompt=f"p{n}")) for n in range(12)]
        runs.append([(task.outcome, task.finished_at - task.created_at) for task in tasks])
    assert runs[0] == runs[1]


async def test_generate_is_polled_and_listed_like_any_task(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """A generate is invisible at first, then polled; fake.tasks lists every kind in order."""
    fake, client = await start_fake()
    grid = await client.generate_ok()
    assert (await client.record(grid)).code == 422  # invisible for a while
    clock.advance(0.5)
    assert (await client.record(grid)).data["successFlag"] == 0
    up = await client.upscale_ok()
    assert [fake.tasks[task_id].kind for task_id in fake.tasks] == ["generate", "upscale"]
    assert list(fake.tasks) == [grid, up]
    assert fake.stats.polls[grid] == 2


def test_a_fake_that_never_started_has_a_sample_parent() -> None:
    """sample_parent_id needs no server: fake-server can print it before serving."""
    assert FakeProvider().sample_parent_id == "parent-1"
