"""generateVideoExtend on the fake: which bodies it takes, which parents, what it makes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from midvary.testing import ManualClock

from .conftest import Client, StartFake, finish

IMG = "https://images.example/in.png"


async def _finished_video(client: Client, clock: ManualClock, *, batch: int = 2) -> str:
    fake = client.fake
    task_id = await client.generate_ok(taskType="mj_video", fileUrls=[IMG], videoBatchSize=batch)
    finish(clock, fake, task_id)
    return task_id


async def test_an_auto_and_a_manual_extend_of_a_finished_video(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """Both task types are accepted on a finished video; each makes one .mp4 of its type."""
    fake, client = await start_fake()
    parent = await _finished_video(client, clock)
    auto = await client.extend(taskId=parent, index=1)
    manual = await client.extend(
        taskId=parent, index=0, taskType="mj_video_extend_manual", prompt="the waves grow"
    )
    made = []
    for answer in (auto, manual):
        assert (answer.status, answer.code) == (200, 200), answer
        task = fake.task(answer.data["taskId"])
        finish(clock, fake, task.task_id)
        made.append(fake.task(task.task_id))
    assert [(task.kind, task.task_type, task.image_index) for task in made] == [
        ("extend", "mj_video_extend_auto", 1),
        ("extend", "mj_video_extend_manual", 0),
    ]
    assert all(len(task.result_urls) == 1 for task in made)
    assert all(task.result_urls[0].endswith(".mp4") for task in made)
    assert json.loads(made[1].param_json) == {
        "taskId": parent,
        "index": 0,
        "taskType": "mj_video_extend_manual",
        "prompt": "the waves grow",
    }
    assert fake.stats.tasks_by_endpoint["extend"] == 2
    record = await client.record(made[0].task_id)
    assert record.data["taskType"] == "mj_video_extend_auto"


EXTEND_BAD: list[tuple[str, dict[str, Any], int]] = [
    ("missing taskId", {"taskId": None}, 400),
    ("missing index", {"index": None}, 400),
    ("negative index", {"index": -1}, 400),
    ("bool index", {"index": True}, 400),
    ("missing taskType", {"taskType": None}, 400),
    ("generate taskType", {"taskType": "mj_video"}, 400),
    ("manual without prompt", {"taskType": "mj_video_extend_manual"}, 422),
    ("auto with prompt", {"prompt": "more"}, 422),
    ("long prompt", {"taskType": "mj_video_extend_manual", "prompt": "x" * 2001}, 400),
    ("int waterMark", {"waterMark": 1}, 400),
]


@pytest.mark.parametrize(
    ("case", "fields", "code"), EXTEND_BAD, ids=[case for case, _, _ in EXTEND_BAD]
)
async def test_bad_extend_bodies_are_refused(
    start_fake: StartFake, clock: ManualClock, case: str, fields: dict[str, Any], code: int
) -> None:
    """Each bad field gets its code and a msg, and creates nothing."""
    fake, client = await start_fake()
    parent = await _finished_video(client, clock)
    body = {"taskId": parent, "index": 0, "taskType": "mj_video_extend_auto", **fields}
    answer = await client.extend({name: value for name, value in body.items() if value is not None})
    assert answer.code == code, case
    assert answer.body["msg"]
    assert fake.stats.tasks_by_endpoint["extend"] == 0


async def test_only_a_finished_video_with_that_index_is_a_parent(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """An image grid, an unknown id, a video still generating or without that video: 422."""
    fake, client = await start_fake()
    grid = await client.generate_ok()
    finish(clock, fake, grid)
    parent = await _finished_video(client, clock, batch=2)
    running = await client.generate_ok(taskType="mj_video_hd", fileUrls=[IMG])
    refusals = {
        "grid": await client.extend(taskId=grid),
        "unknown": await client.extend(taskId="parent-1"),
        "index 2 of 2": await client.extend(taskId=parent, index=2),
        "running": await client.extend(taskId=running),
    }
    assert {case: answer.code for case, answer in refusals.items()} == dict.fromkeys(refusals, 422)
    assert "only an mj_video or mj_video_hd task" in refusals["grid"].body["msg"]
    assert fake.stats.tasks_by_endpoint["extend"] == 0
    # An extended video is a video, not an image grid: it cannot be varied.
    extended = (await client.extend(taskId=parent, index=1)).data["taskId"]
    finish(clock, fake, extended)
    assert (await client.submit(taskId=extended)).code == 422
