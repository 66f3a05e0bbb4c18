"""GenerateRequest and UpscaleRequest: every rule at its boundaries, and their wire bodies."""

from __future__ import annotations

from typing import Any

import pytest

import midvary

from .mockapi import BASE, MockAPI

GENERATE_URL = f"{BASE}/api/v1/mj/generate"
UPSCALE_URL = f"{BASE}/api/v1/mj/generateUpscale"
IMAGE = "https://img.test/in.png"

# (keyword arguments of GenerateRequest, error class, words the message must hold)
BAD_GENERATE: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"prompt": ""}, ValueError, "1 to 2000 characters"),
    ({"prompt": "   "}, ValueError, "not only whitespace"),
    ({"prompt": "x" * 2001}, ValueError, "1 to 2000 characters"),
    ({"prompt": 5}, TypeError, "prompt must be a str"),
    ({"task_type": "mj_vary"}, ValueError, "mj_txt2img"),
    ({"task_type": None}, TypeError, "task_type must be one of"),
    ({"speed": "slow"}, ValueError, "'relaxed', 'fast', 'turbo'"),
    ({"speed": "fast", "task_type": "mj_video", "file_urls": [IMAGE]}, ValueError, "speed is not"),
    ({"speed": "fast", "task_type": "mj_video_hd", "file_urls": [IMAGE]}, ValueError, "speed"),
    (
        {"speed": "turbo", "task_type": "mj_omni_reference", "file_urls": [IMAGE]},
        ValueError,
        "speed",
    ),
    ({"aspect_ratio": "4:5"}, ValueError, "'16:9'"),
    ({"aspect_ratio": 1.5}, TypeError, "aspect_ratio must be one of"),
    ({"version": 7}, TypeError, "version must be one of '7'"),
    ({"version": "8"}, ValueError, "'niji6'"),
    ({"variety": -5}, ValueError, "0 to 100 in steps of 5"),
    ({"variety": 105}, ValueError, "0 to 100 in steps of 5"),
    ({"variety": 7}, ValueError, "in steps of 5"),
    ({"variety": 5.0}, TypeError, "variety must be an int"),
    ({"stylization": -1}, ValueError, "0 to 1000"),
    ({"stylization": 1001}, ValueError, "0 to 1000"),
    ({"stylization": True}, TypeError, "stylization must be an int"),
    ({"weirdness": -1}, ValueError, "0 to 3000"),
    ({"weirdness": 3001}, ValueError, "0 to 3000"),
    ({"ow": 100}, ValueError, "only allowed with task_type 'mj_omni_reference'"),
    ({"ow": 0, "task_type": "mj_omni_reference", "file_urls": [IMAGE]}, ValueError, "1 to 1000"),
    ({"ow": 1001, "task_type": "mj_omni_reference", "file_urls": [IMAGE]}, ValueError, "1 to 1000"),
    ({"file_urls": ["ftp://img.test/a.png"]}, ValueError, r"file_urls\[0\] must be an absolute"),
    ({"file_urls": [IMAGE, "relative.png"]}, ValueError, r"file_urls\[1\]"),
    ({"file_urls": IMAGE}, TypeError, "file_urls must be a list"),
    ({"task_type": "mj_img2img"}, ValueError, "file_urls is required"),
    ({"task_type": "mj_style_reference"}, ValueError, "file_urls is required"),
    ({"task_type": "mj_omni_reference"}, ValueError, "file_urls is required"),
    ({"task_type": "mj_video"}, ValueError, "file_urls is required"),
    ({"task_type": "mj_video", "file_urls": [IMAGE, IMAGE]}, ValueError, "exactly one"),
    ({"video_batch_size": 2}, ValueError, "only allowed with task_type 'mj_video'"),
    ({"motion": "low"}, ValueError, "only allowed with task_type 'mj_video'"),
    ({"task_type": "mj_video", "file_urls": [IMAGE], "video_batch_size": 3}, ValueError, "1, 2, 4"),
    (
        {"task_type": "mj_video", "file_urls": [IMAGE], "motion": "fast"},
        ValueError,
        "'high', 'low'",
    ),
    ({"water_mark": 3}, TypeError, "water_mark must be a str"),
    ({"enable_translation": "yes"}, TypeError, "True, False or None"),
    ({"callback_url": "/cb"}, ValueError, "http:// or https://"),
    ({"key": ""}, ValueError, "key must be a non-empty str of at most 1024"),
    ({"key": "k" * 1025}, ValueError, "at most 1024 characters"),
    ({"key": 5}, TypeError, "key must be a str"),
]

GOOD_GENERATE: list[dict[str, Any]] = [
    {"prompt": "x"},
    {"prompt": "x" * 2000},
    *({"variety": value} for value in (0, 5, 100)),
    *({"stylization": value} for value in (0, 1000)),
    *({"weirdness": value} for value in (0, 3000)),
    *({"speed": speed} for speed in ("relaxed", "fast", "turbo")),
    *(
        {"aspect_ratio": ratio}
        for ratio in ("1:2", "9:16", "2:3", "3:4", "5:6", "6:5", "4:3", "3:2", "1:1", "16:9", "2:1")
    ),
    *({"version": version} for version in ("7", "6.1", "6", "5.2", "5.1", "niji6")),
    {"task_type": "mj_img2img", "file_urls": [IMAGE, IMAGE], "speed": "fast"},
    {"task_type": "mj_style_reference", "file_urls": (IMAGE,)},
    {"task_type": "mj_omni_reference", "file_urls": [IMAGE], "ow": 1},
    {"task_type": "mj_omni_reference", "file_urls": [IMAGE], "ow": 1000},
    *(
        {"task_type": kind, "file_urls": [IMAGE], "video_batch_size": size, "motion": motion}
        for kind in ("mj_video", "mj_video_hd")
        for size, motion in ((1, "high"), (2, "low"), (4, None))
    ),
    {"key": "k" * 1024, "enable_translation": False, "water_mark": ""},
]


@pytest.mark.parametrize(("kwargs", "error", "words"), BAD_GENERATE)
async def test_bad_generate_arguments_send_nothing(
    session: midvary.Session,
    api: MockAPI,
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    """Each broken rule raises on construction, saying what is allowed; 0 requests."""
    fields = {"prompt": "a fox", **kwargs}
    with pytest.raises(error, match=words):
        midvary.GenerateRequest(**fields)
    prompt = fields.pop("prompt")
    with pytest.raises(error, match=words):
        await session.generate(prompt, **fields)
    assert api.count() == 0


@pytest.mark.parametrize("kwargs", GOOD_GENERATE)
def test_values_at_the_boundaries_are_accepted(kwargs: dict[str, Any]) -> None:
    """Every documented value, at both ends of each range, makes a valid request."""
    fields = {"prompt": "a fox", **kwargs}
    request = midvary.GenerateRequest(**fields)
    for name, value in fields.items():
        expected = tuple(value) if name == "file_urls" else value
        assert getattr(request, name) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"image_index": 4}, ValueError, "0, 1, 2 or 3"),
        ({"image_index": -1}, ValueError, "0, 1, 2 or 3"),
        ({"image_index": True}, TypeError, "image_index must be an int"),
        ({"task_id": ""}, ValueError, "non-empty task id"),
        ({"task_id": "a b"}, ValueError, "without whitespace"),
        ({"water_mark": 1}, TypeError, "water_mark must be a str"),
        ({"callback_url": "ftp://x.test/cb"}, ValueError, "http:// or https://"),
        ({"key": ""}, ValueError, "non-empty str"),
    ],
)
async def test_bad_upscale_arguments_send_nothing(
    session: midvary.Session,
    api: MockAPI,
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    """Each invalid upscale argument raises before anything is sent."""
    fields = {"task_id": "parent-1", "image_index": 0, **kwargs}
    with pytest.raises(error, match=words):
        midvary.UpscaleRequest(**fields)
    with pytest.raises(error, match=words):
        await session.upscale(**fields)
    assert api.count() == 0


async def test_generate_body_is_camel_case_with_only_the_fields_set(
    session: midvary.Session, api: MockAPI
) -> None:
    """A generate sends taskType, prompt and the set fields in camelCase, nothing else."""
    api.envelope("POST", GENERATE_URL, data={"taskId": "g1"})
    handle = await session.generate(
        "a red fox in the snow", aspect_ratio="3:2", speed="fast", variety=0
    )
    assert handle.task_id == "g1"
    [call] = api.calls("POST", GENERATE_URL)
    assert call.kwargs["json"] == {
        "taskType": "mj_txt2img",
        "prompt": "a red fox in the snow",
        "speed": "fast",
        "aspectRatio": "3:2",
        "variety": 0,
    }


async def test_every_generate_field_has_its_wire_name(
    session: midvary.Session, api: MockAPI
) -> None:
    """Each GenerateRequest field is sent under the provider's documented name."""
    api.envelope("POST", GENERATE_URL, data={"taskId": "g2"})
    request = midvary.GenerateRequest(
        prompt="p",
        task_type="mj_omni_reference",
        aspect_ratio="1:1",
        version="6.1",
        file_urls=[IMAGE],
        stylization=100,
        weirdness=10,
        variety=50,
        ow=500,
        water_mark="wm",
        enable_translation=True,
        callback_url="https://hook.test/cb",
        key="mine",
        id="label",
    )
    await session.submit(request)
    [call] = api.calls("POST", GENERATE_URL)
    assert call.kwargs["json"] == {
        "taskType": "mj_omni_reference",
        "prompt": "p",
        "fileUrls": [IMAGE],
        "aspectRatio": "1:1",
        "version": "6.1",
        "variety": 50,
        "stylization": 100,
        "weirdness": 10,
        "ow": 500,
        "waterMark": "wm",
        "enableTranslation": True,
        "callBackUrl": "https://hook.test/cb",
    }


async def test_video_fields_go_on_the_wire(session: midvary.Session, api: MockAPI) -> None:
    """The video fields videoBatchSize and motion are sent for a video generate."""
    api.envelope("POST", GENERATE_URL, data={"taskId": "v1"})
    await session.generate(
        "p", task_type="mj_video", file_urls=[IMAGE], video_batch_size=2, motion="low"
    )
    [call] = api.calls("POST", GENERATE_URL)
    assert call.kwargs["json"]["videoBatchSize"] == 2
    assert call.kwargs["json"]["motion"] == "low"


@pytest.mark.parametrize("index_base", [0, 1])
async def test_upscale_index_is_0_based_whatever_index_base(api: MockAPI, index_base: int) -> None:
    """Upscale's imageIndex is sent as is: index_base shifts vary only."""
    api.envelope("POST", UPSCALE_URL, data={"taskId": "u1"})
    async with midvary.Session(api_key="k", base_url=BASE, index_base=index_base) as session:
        await session.upscale("parent-1", 3, water_mark="w")
    [call] = api.calls("POST", UPSCALE_URL)
    assert call.kwargs["json"] == {"taskId": "parent-1", "imageIndex": 3, "waterMark": "w"}


async def test_submit_refuses_other_types(session: midvary.Session, api: MockAPI) -> None:
    """submit() names the request classes when given something else; 0 requests."""
    with pytest.raises(
        TypeError, match="VaryRequest, GenerateRequest, UpscaleRequest or ExtendRequest"
    ):
        await session.submit({"prompt": "p"})  # type: ignore[arg-type]
    assert api.count() == 0


def test_describe_names_the_kind() -> None:
    """describe() says which kind of request it is, its parent or prompt, and its label."""
    long = midvary.GenerateRequest(prompt="y" * 100, task_type="mj_img2img", file_urls=[IMAGE])
    assert long.describe().startswith("generate('yyyy")
    assert len(long.describe()) < 70
    assert "mj_img2img" in long.describe()
    assert midvary.GenerateRequest(prompt="fox", id="j1").describe() == "generate('fox') [j1]"
    up = midvary.UpscaleRequest(task_id="t9", image_index=2)
    assert up.describe() == "upscale(t9, image 2)"


async def test_uncertain_generate_describes_the_generate(
    session: midvary.Session, api: MockAPI
) -> None:
    """A 500 on generate is SubmitUncertainError naming the generate, and is not re-sent."""
    api.envelope("POST", GENERATE_URL, code=500, msg="boom")
    with pytest.raises(midvary.SubmitUncertainError, match=r"generate\('a fox'\)") as info:
        await session.generate("a fox")
    assert isinstance(info.value.request, midvary.GenerateRequest)
    assert len(api.calls("POST", GENERATE_URL)) == 1
