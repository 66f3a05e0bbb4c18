"""POST generate: every validation rule at its boundaries, and the envelope around it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from midvary.testing import ManualClock

from .conftest import GENERATE, StartFake, finish

IMG = "https://images.example/in.png"
OTHER = "http://images.example/other.jpg"
OMNI = {"taskType": "mj_omni_reference", "fileUrls": [IMG]}
VIDEO = {"taskType": "mj_video", "fileUrls": [IMG]}

# Each case changes the valid txt2img body; a None value removes nothing (it is sent as null).
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("prompt of 1 char", {"prompt": "x"}),
    ("prompt of 2000 chars", {"prompt": "y" * 2000}),
    ("prompt with unicode", {"prompt": "renard roux, neige, 雪"}),
    *[(f"speed {speed}", {"speed": speed}) for speed in ("relaxed", "fast", "turbo")],
    *[
        (f"aspectRatio {ratio}", {"aspectRatio": ratio})
        for ratio in ("1:2", "9:16", "2:3", "3:4", "5:6", "6:5", "4:3", "3:2", "1:1", "16:9", "2:1")
    ],
    *[
        (f"version {version}", {"version": version})
        for version in ("7", "6.1", "6", "5.2", "5.1", "niji6")
    ],
    ("variety 0", {"variety": 0}),
    ("variety 5", {"variety": 5}),
    ("variety 100", {"variety": 100}),
    ("stylization 0", {"stylization": 0}),
    ("stylization 1000", {"stylization": 1000}),
    ("weirdness 0", {"weirdness": 0}),
    ("weirdness 3000", {"weirdness": 3000}),
    ("enableTranslation true", {"enableTranslation": True}),
    ("enableTranslation false", {"enableTranslation": False}),
    ("empty waterMark", {"waterMark": ""}),
    ("https callBackUrl", {"callBackUrl": "https://127.0.0.1:9/hook"}),
    ("txt2img with an image prompt", {"fileUrls": [IMG]}),
    ("null optionals", {"speed": None, "ow": None, "fileUrls": None, "motion": None}),
    ("unknown extra field", {"unknownField": 1}),
    ("img2img with one image", {"taskType": "mj_img2img", "fileUrls": [IMG]}),
    ("img2img with two images", {"taskType": "mj_img2img", "fileUrls": [IMG, OTHER]}),
    ("style reference", {"taskType": "mj_style_reference", "fileUrls": [IMG], "speed": "fast"}),
    ("omni reference", OMNI),
    ("omni ow 1", {**OMNI, "ow": 1}),
    ("omni ow 1000", {**OMNI, "ow": 1000}),
    ("video", VIDEO),
    ("video hd", {"taskType": "mj_video_hd", "fileUrls": [IMG]}),
    *[(f"videoBatchSize {size}", {**VIDEO, "videoBatchSize": size}) for size in (1, 2, 4)],
    *[(f"motion {motion}", {**VIDEO, "motion": motion}) for motion in ("high", "low")],
]


@pytest.mark.parametrize(("case", "fields"), ACCEPTED, ids=[case for case, _ in ACCEPTED])
async def test_accepted_generate_bodies(
    start_fake: StartFake, case: str, fields: dict[str, Any]
) -> None:
    """Each allowed value, at each boundary, is accepted with a new task of that taskType."""
    fake, client = await start_fake()
    task_id = await client.generate_ok(**fields)
    task = fake.task(task_id)
    assert task.kind == "generate", case
    assert task.task_type == fields.get("taskType", "mj_txt2img")
    assert (task.parent_task_id, task.image_index) == (None, None)
    assert fake.stats.tasks_by_endpoint["generate"] == 1


# (case, fields, code, a word the msg must contain)
REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("no taskType", {"taskType": None}, 400, "taskType"),
    ("taskType of upscale", {"taskType": "mj_upscale"}, 400, "taskType"),
    ("taskType upper case", {"taskType": "MJ_TXT2IMG"}, 400, "taskType"),
    ("int taskType", {"taskType": 1}, 400, "taskType"),
    ("no prompt", {"prompt": None}, 400, "prompt"),
    ("empty prompt", {"prompt": ""}, 400, "prompt"),
    ("blank prompt", {"prompt": "   "}, 400, "prompt"),
    ("prompt of 2001 chars", {"prompt": "y" * 2001}, 400, "2000"),
    ("int prompt", {"prompt": 5}, 400, "prompt"),
    ("speed slow", {"speed": "slow"}, 400, "speed"),
    ("speed capitalised", {"speed": "Fast"}, 400, "speed"),
    ("empty speed", {"speed": ""}, 400, "speed"),
    ("aspectRatio 4:5", {"aspectRatio": "4:5"}, 400, "aspectRatio"),
    ("aspectRatio 16:10", {"aspectRatio": "16:10"}, 400, "aspectRatio"),
    ("aspectRatio 1:3", {"aspectRatio": "1:3"}, 400, "aspectRatio"),
    ("float aspectRatio", {"aspectRatio": 1.5}, 400, "aspectRatio"),
    ("int version", {"version": 7}, 400, "version"),
    ("version 5", {"version": "5"}, 400, "version"),
    ("version niji5", {"version": "niji5"}, 400, "version"),
    ("version v7", {"version": "v7"}, 400, "version"),
    ("variety -5", {"variety": -5}, 400, "variety"),
    ("variety 105", {"variety": 105}, 400, "variety"),
    ("variety 3 (not a step of 5)", {"variety": 3}, 400, "steps of 5"),
    ("variety 99", {"variety": 99}, 400, "variety"),
    ("float variety", {"variety": 5.0}, 400, "variety"),
    ("str variety", {"variety": "5"}, 400, "variety"),
    ("bool variety", {"variety": True}, 400, "variety"),
    ("stylization -1", {"stylization": -1}, 400, "stylization"),
    ("stylization 1001", {"stylization": 1001}, 400, "stylization"),
    ("float stylization", {"stylization": 1.5}, 400, "stylization"),
    ("weirdness -1", {"weirdness": -1}, 400, "weirdness"),
    ("weirdness 3001", {"weirdness": 3001}, 400, "weirdness"),
    ("omni ow 0", {**OMNI, "ow": 0}, 400, "ow"),
    ("omni ow 1001", {**OMNI, "ow": 1001}, 400, "ow"),
    ("bool ow", {**OMNI, "ow": True}, 400, "ow"),
    ("fileUrls a string", {"fileUrls": IMG}, 400, "fileUrls"),
    ("fileUrls ftp", {"fileUrls": ["ftp://images.example/a.png"]}, 400, "fileUrls"),
    ("fileUrls relative", {"fileUrls": ["/a.png"]}, 400, "fileUrls"),
    ("fileUrls without host", {"fileUrls": ["https:///a.png"]}, 400, "fileUrls"),
    ("fileUrls of ints", {"fileUrls": [5]}, 400, "fileUrls"),
    ("videoBatchSize 3", {**VIDEO, "videoBatchSize": 3}, 400, "videoBatchSize"),
    ("videoBatchSize 0", {**VIDEO, "videoBatchSize": 0}, 400, "videoBatchSize"),
    ("videoBatchSize true", {**VIDEO, "videoBatchSize": True}, 400, "videoBatchSize"),
    ("str videoBatchSize", {**VIDEO, "videoBatchSize": "1"}, 400, "videoBatchSize"),
    ("motion medium", {**VIDEO, "motion": "medium"}, 400, "motion"),
    ("motion capitalised", {**VIDEO, "motion": "HIGH"}, 400, "motion"),
    ("str enableTranslation", {"enableTranslation": "yes"}, 400, "enableTranslation"),
    ("int enableTranslation", {"enableTranslation": 1}, 400, "enableTranslation"),
    ("int waterMark", {"waterMark": 5}, 400, "waterMark"),
    ("ftp callBackUrl", {"callBackUrl": "ftp://127.0.0.1/hook"}, 400, "callBackUrl"),
    ("speed with video", {**VIDEO, "speed": "fast"}, 422, "speed"),
    ("speed with video hd", {**VIDEO, "taskType": "mj_video_hd", "speed": "relaxed"}, 422, "speed"),
    ("speed with omni", {**OMNI, "speed": "turbo"}, 422, "speed"),
    ("ow with txt2img", {"ow": 500}, 422, "ow"),
    ("ow with img2img", {"taskType": "mj_img2img", "fileUrls": [IMG], "ow": 500}, 422, "ow"),
    ("ow with video", {**VIDEO, "ow": 500}, 422, "ow"),
    ("videoBatchSize with txt2img", {"videoBatchSize": 1}, 422, "videoBatchSize"),
    ("motion with omni", {**OMNI, "motion": "low"}, 422, "motion"),
    ("img2img without fileUrls", {"taskType": "mj_img2img"}, 422, "fileUrls"),
    ("img2img with empty fileUrls", {"taskType": "mj_img2img", "fileUrls": []}, 422, "fileUrls"),
    ("style reference without fileUrls", {"taskType": "mj_style_reference"}, 422, "fileUrls"),
    ("omni without fileUrls", {"taskType": "mj_omni_reference"}, 422, "fileUrls"),
    ("video without fileUrls", {"taskType": "mj_video"}, 422, "fileUrls"),
    ("video hd without fileUrls", {"taskType": "mj_video_hd"}, 422, "fileUrls"),
    ("video with two images", {**VIDEO, "fileUrls": [IMG, OTHER]}, 422, "exactly one"),
]


@pytest.mark.parametrize(
    ("case", "fields", "code", "word"), REFUSED, ids=[case for case, *_ in REFUSED]
)
async def test_refused_generate_bodies(
    start_fake: StartFake, case: str, fields: dict[str, Any], code: int, word: str
) -> None:
    """Each value outside the rules is refused with its code, a msg naming it, no task."""
    fake, client = await start_fake()
    answer = await client.generate(**fields)
    assert (answer.status, answer.code) == (200, code), (case, answer.body)
    assert word in answer.body["msg"], answer.body["msg"]
    assert answer.data is None
    assert fake.stats.tasks_created == 0
    assert fake.stats.codes[code] == 1


@pytest.mark.parametrize("body", [[{"taskType": "mj_txt2img", "prompt": "p"}], "a fox", 5])
async def test_a_body_that_is_not_an_object_is_400(start_fake: StartFake, body: Any) -> None:
    """A JSON body that is not an object is code 400."""
    fake, client = await start_fake()
    assert (await client.generate(body)).code == 400
    assert fake.stats.tasks_created == 0


async def test_malformed_json_is_400(start_fake: StartFake) -> None:
    """A generate body that is not JSON is code 400."""
    _, client = await start_fake()
    answer = await client.request(
        "POST", GENERATE, data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert answer.code == 400


async def test_mirror_http_status_and_refusal_order(start_fake: StartFake) -> None:
    """Mirrored statuses on generate: 401, 400, 422, then 402 once credits run out."""
    fake, client = await start_fake(mirror_http_status=True, credits=1)
    answers = [
        await client.generate(key="wrong"),
        await client.generate(aspectRatio="7:5"),
        await client.generate(taskType="mj_video"),
        await client.generate(),
        await client.generate(),
    ]
    assert [(a.status, a.code) for a in answers] == [
        (401, 401),
        (400, 400),
        (422, 422),
        (200, 200),
        (402, 402),
    ]
    assert fake.credits_left == 0


async def test_maintenance_answers_455_on_generate(start_fake: StartFake) -> None:
    """The maintenance switch answers 455 on generate as on vary."""
    fake, client = await start_fake()
    fake.set_maintenance(True)
    answer = await client.generate()
    assert (answer.status, answer.code) == (200, 455)
    fake.set_maintenance(False)
    await client.generate_ok()


async def test_generate_record_echoes_the_request(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """A finished generate: its taskType, 4 images, paramJson echoing the known fields sent."""
    fake, client = await start_fake()
    sent = {
        "taskType": "mj_style_reference",
        "prompt": "a fox",
        "speed": "fast",
        "fileUrls": [IMG],
        "aspectRatio": "3:2",
        "version": "6.1",
        "variety": 10,
        "stylization": 250,
        "weirdness": 0,
        "waterMark": "wm",
        "enableTranslation": False,
        "callBackUrl": "http://127.0.0.1:9/hook",
    }
    task_id = await client.generate_ok(**sent, unknownField="dropped")
    finish(clock, fake, task_id)
    data = (await client.record(task_id)).data
    assert data["taskType"] == "mj_style_reference"
    assert data["successFlag"] == 1
    assert json.loads(data["paramJson"]) == sent
    assert list(json.loads(data["paramJson"])) == list(sent)  # the provider's field order
    urls = [item["resultUrl"] for item in data["resultInfoJson"]["resultUrls"]]
    assert urls == [f"{fake.results_base_url}/results/{task_id}_{n}.png" for n in range(4)]
    assert fake.task(task_id).param_json == data["paramJson"]


async def test_images_per_task_shapes_a_generate_grid(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """images_per_task applies to an image generate's grid too."""
    fake, client = await start_fake(images_per_task=2)
    task_id = await client.generate_ok()
    finish(clock, fake, task_id)
    assert len(fake.task(task_id).result_urls) == 2


@pytest.mark.parametrize(("size", "expected"), [(None, 1), (1, 1), (2, 2), (4, 4)])
async def test_video_records_have_their_batch_of_mp4s(
    start_fake: StartFake,
    clock: ManualClock,
    http: Any,
    size: int | None,
    expected: int,
) -> None:
    """A video generate yields videoBatchSize .mp4 results (1 by default), served as video/mp4."""
    fake, client = await start_fake()
    fields = {**VIDEO, **({} if size is None else {"videoBatchSize": size})}
    task_id = await client.generate_ok(**fields)
    finish(clock, fake, task_id)
    data = (await client.record(task_id)).data
    assert data["taskType"] == "mj_video"
    urls = [item["resultUrl"] for item in data["resultInfoJson"]["resultUrls"]]
    assert len(urls) == expected
    assert all(url.endswith(".mp4") for url in urls)
    async with http.get(urls[-1]) as response:
        assert (response.status, response.content_type) == (200, "video/mp4")
        assert (await response.read())[4:8] == b"ftyp"
    async with http.get(urls[0][: -len(".mp4")] + ".png") as response:
        assert response.status == 404


async def test_same_generate_twice_counts_as_a_duplicate(start_fake: StartFake) -> None:
    """The same generate fields accepted again count as a duplicate (callBackUrl aside)."""
    fake, client = await start_fake()
    await client.generate_ok(prompt="a")
    await client.generate_ok(prompt="a", callBackUrl="http://127.0.0.1:9/hook")
    await client.generate_ok(prompt="a", aspectRatio="3:2")
    await client.generate_ok(prompt="b")
    assert fake.stats.duplicate_submissions == 1
    assert fake.stats.tasks_created == 4
