"""Video extend: ExtendRequest's rules, its wire body, keys and the no-resend rule, on the fake."""

from __future__ import annotations

import json
from typing import Any

import pytest

import midvary

from .conftest import OpenSession, StartFake

IMAGE = "https://img.test/in.png"


async def _video(session: midvary.Session, batch: int = 2) -> midvary.TaskRecord:
    handle = await session.generate(
        "waves", task_type="mj_video", file_urls=[IMAGE], video_batch_size=batch
    )
    return await handle


async def test_extend_a_video_auto_and_manual(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """No task_type: auto without a prompt, manual with one; each makes one extended video."""
    fake = await start_fake()
    session = await open_session(fake)
    video = await _video(session)

    auto = await (await session.extend(video.task_id, 1))
    manual = await (await session.extend(video.task_id, 0, prompt="the waves grow"))

    assert (auto.task_type, manual.task_type) == ("mj_video_extend_auto", "mj_video_extend_manual")
    assert [len(auto.image_urls), len(manual.image_urls)] == [1, 1]
    assert auto.image_urls[0].endswith(".mp4")
    assert auto.params == {"taskId": video.task_id, "index": 1, "taskType": "mj_video_extend_auto"}
    assert json.loads(fake.task(manual.task_id).param_json)["prompt"] == "the waves grow"
    assert auto.parent_task_id == video.task_id
    assert fake.stats.tasks_by_endpoint["extend"] == 2


async def test_an_image_parent_is_a_typed_refusal(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Extending an image grid is the provider's 422, a ValidationError; nothing is made."""
    fake = await start_fake()
    session = await open_session(fake)
    grid = await (await session.generate("a fox"))
    with pytest.raises(midvary.ValidationError, match="only an mj_video"):
        await session.extend(grid.task_id, 0)
    assert fake.stats.tasks_by_endpoint["extend"] == 0


BAD_EXTEND: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"index": 4}, ValueError, "0, 1, 2 or 3"),
    ({"index": -1}, ValueError, "0, 1, 2 or 3"),
    ({"index": True}, TypeError, "index must be an int"),
    ({"task_id": "a b"}, ValueError, "without whitespace"),
    ({"task_type": "mj_video"}, ValueError, "'mj_video_extend_manual', 'mj_video_extend_auto'"),
    ({"task_type": "mj_video_extend_manual"}, ValueError, "prompt is required"),
    ({"task_type": "mj_video_extend_auto", "prompt": "x"}, ValueError, "prompt is not allowed"),
    ({"prompt": ""}, ValueError, "1 to 2000 characters"),
    ({"prompt": "x" * 2001}, ValueError, "1 to 2000 characters"),
    ({"prompt": 5}, TypeError, "prompt must be a str"),
    ({"water_mark": 1}, TypeError, "water_mark must be a str"),
    ({"callback_url": "ftp://x.test/cb"}, ValueError, "http:// or https://"),
    ({"key": ""}, ValueError, "non-empty str"),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), BAD_EXTEND)
async def test_bad_extend_arguments_send_nothing(
    start_fake: StartFake,
    open_session: OpenSession,
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    """Each broken rule raises on construction and in session.extend, before any request."""
    fake = await start_fake()
    session = await open_session(fake)
    fields = {"task_id": "parent-1", "index": 0, **kwargs}
    with pytest.raises(error, match=words):
        midvary.ExtendRequest(**fields)
    with pytest.raises(error, match=words):
        await session.extend(**fields)
    assert sum(fake.stats.requests.values()) == 0


def test_task_type_is_resolved_and_described() -> None:
    """ExtendRequest takes task_id and index by position; task_type is never None after."""
    auto = midvary.ExtendRequest("t1", 2)
    manual = midvary.ExtendRequest("t1", 0, prompt="more", id="a", key="k")
    assert (auto.task_type, manual.task_type) == ("mj_video_extend_auto", "mj_video_extend_manual")
    assert auto.describe() == "extend(t1, video 2, auto)"
    assert manual.describe() == "extend(t1, video 0, manual) [a] key='k'"


async def test_a_key_is_sent_once_and_a_lost_answer_is_never_resent(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """The same key re-attaches; an answer lost after sending stays uncertain, never re-sent."""
    fake = await start_fake()
    keyed = await open_session(fake)
    video = await _video(keyed, batch=1)
    first = await keyed.extend(video.task_id, 0, key="ext/1")
    again = await keyed.extend(video.task_id, 0, key="ext/1")
    assert again.task_id == first.task_id
    with pytest.raises(midvary.KeyConflictError):
        await keyed.extend(video.task_id, 0, prompt="other", key="ext/1")
    fake.update(drop_submit_answer_rate=1.0)
    with pytest.raises(midvary.SubmitUncertainError, match=r"extend\("):
        await keyed.extend(video.task_id, 0, prompt="p", key="ext/2")
    with pytest.raises(midvary.SubmitUncertainError, match="was sent before"):
        await keyed.extend(video.task_id, 0, prompt="p", key="ext/2")
    assert fake.stats.tasks_by_endpoint["extend"] == 2


async def test_extend_jobs_in_a_fan_out(start_fake: StartFake, open_session: OpenSession) -> None:
    """ExtendRequests run in submit_all beside other kinds; outcomes name the parent video."""
    fake = await start_fake()
    session = await open_session(fake)
    video = await _video(session, batch=2)
    outcomes = await session.submit_all(
        [midvary.ExtendRequest(video.task_id, index, id=f"v{index}") for index in (0, 1)]
    )
    assert all(outcome.ok for outcome in outcomes)
    data = [midvary.to_json_dict(outcome) for outcome in outcomes]
    assert [(item["parent_task_id"], item["video_index"]) for item in data] == [
        (video.task_id, 0),
        (video.task_id, 1),
    ]
