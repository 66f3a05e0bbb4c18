"""The fake's judgement of the submission bodies: generate, generateVary, generateUpscale, extend.

Each parser turns a JSON body into :class:`SubmitParams` or raises :class:`Rejection`:
code 400 for a field that is missing, of the wrong type or outside its allowed values,
and code 422 for a field that the request's ``taskType`` does not allow (``speed`` for a
video, ``ow`` without omni reference, a missing ``fileUrls`` for an image-input type...).
The rules are the provider's documented ones (``docs/provider.md``). Unknown extra fields
are ignored, as the provider does; ``null`` counts as absent for optional fields.

Deliberately independent of midvary's own client-side checks: the fake must judge
requests on its own, so that a mistake in the client cannot make the fake agree with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

import yarl

from ._state import SubmitParams
from ._wire import Rejection

#: The ``taskType`` of vary records (the real value is undocumented).
VARY_TASK_TYPE: Final = "mj_vary"
#: The ``taskType`` of upscale records (the real value is undocumented).
UPSCALE_TASK_TYPE: Final = "mj_upscale"

#: The generate endpoint's ``taskType`` values.
TASK_TYPES: Final = (
    "mj_txt2img",
    "mj_img2img",
    "mj_style_reference",
    "mj_omni_reference",
    "mj_video",
    "mj_video_hd",
)
VIDEO_TASK_TYPES: Final = frozenset(("mj_video", "mj_video_hd"))
#: The types that start from images: ``fileUrls`` is required (exactly one for video).
IMAGE_INPUT_TASK_TYPES: Final = frozenset(
    ("mj_img2img", "mj_style_reference", "mj_omni_reference", *VIDEO_TASK_TYPES),
)
#: The types that take no ``speed``.
NO_SPEED_TASK_TYPES: Final = frozenset(("mj_omni_reference", *VIDEO_TASK_TYPES))
SPEEDS: Final = ("relaxed", "fast", "turbo")
ASPECT_RATIOS: Final = (
    "1:2", "9:16", "2:3", "3:4", "5:6", "6:5", "4:3", "3:2", "1:1", "16:9", "2:1",
)  # fmt: skip
VERSIONS: Final = ("7", "6.1", "6", "5.2", "5.1", "niji6")
VIDEO_BATCH_SIZES: Final = (1, 2, 4)
MOTIONS: Final = ("high", "low")
PROMPT_MAX_CHARS: Final = 2000

#: The ``generateVideoExtend`` endpoint's ``taskType`` values (required).
EXTEND_TASK_TYPES: Final = ("mj_video_extend_manual", "mj_video_extend_auto")
#: The request fields each ``paramJson`` echoes, in this order (upscale: as vary).
VARY_FIELDS: Final = ("taskId", "imageIndex", "waterMark", "callBackUrl")
EXTEND_FIELDS: Final = ("taskId", "index", "taskType", "prompt", "waterMark", "callBackUrl")
GENERATE_FIELDS: Final = (
    "taskType",
    "prompt",
    "speed",
    "fileUrls",
    "aspectRatio",
    "version",
    "variety",
    "stylization",
    "weirdness",
    "ow",
    "waterMark",
    "enableTranslation",
    "videoBatchSize",
    "motion",
    "callBackUrl",
)


def parse_vary_body(body: object, *, index_base: int) -> SubmitParams:
    """Validate a ``generateVary`` body (``imageIndex`` from ``index_base``)."""
    return _parse_child(body, "vary", low=index_base)


def parse_upscale_body(body: object) -> SubmitParams:
    """Validate a ``generateUpscale`` body (``imageIndex`` 0..3, whatever ``index_base``)."""
    return _parse_child(body, "upscale", low=0)


def _parse_child(body: object, kind: Literal["vary", "upscale"], *, low: int) -> SubmitParams:
    """A vary or upscale body: one image (``low``-based index) of a parent task."""
    fields = _object(body)
    task_id, image_index = _parent_and_index(fields, low=low)
    water_mark, callback_url = _common(fields)
    vary = kind == "vary"
    return SubmitParams(
        kind=kind,
        task_type=VARY_TASK_TYPE if vary else UPSCALE_TASK_TYPE,
        parent_task_id=task_id,
        image_index=image_index,
        water_mark=water_mark,
        callback_url=callback_url,
        param_json=_echo(fields, VARY_FIELDS),
        image_count=None if vary else 1,  # a vary makes a grid, an upscale one image
        identity=(kind, task_id, image_index, water_mark),
    )


def parse_extend_body(body: object) -> SubmitParams:
    """Validate a ``generateVideoExtend`` body: one video (``index``) of a video task.

    ``index`` must be a non-negative integer (the docs give no range: whether the parent
    has that video is the parent check's to say); ``prompt`` is required for a manual
    extend and refused for an auto one.
    """
    fields = _object(body)
    task_id = _parent_id(fields)
    index = fields.get("index")
    if index is None:
        raise Rejection(400, "index is required")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise Rejection(400, f"index must be a non-negative integer, got {index!r}")
    task_type = fields.get("taskType")
    if task_type not in EXTEND_TASK_TYPES:
        raise Rejection(
            400, f"taskType must be one of {', '.join(EXTEND_TASK_TYPES)}, got {task_type!r}"
        )
    prompt = fields.get("prompt")
    if task_type == "mj_video_extend_manual":
        if not isinstance(prompt, str) or not prompt.strip():
            raise Rejection(422, "prompt is required with taskType mj_video_extend_manual")
        _check_length(prompt)
    elif prompt is not None:
        raise Rejection(422, "prompt is not allowed with taskType mj_video_extend_auto")
    water_mark, callback_url = _common(fields)
    return SubmitParams(
        kind="extend",
        task_type=task_type,
        parent_task_id=task_id,
        image_index=index,
        water_mark=water_mark,
        callback_url=callback_url,
        param_json=_echo(fields, EXTEND_FIELDS),
        image_count=1,
        media="mp4",
        identity=("extend", task_id, index, task_type, prompt, water_mark),
    )


def parse_generate_body(body: object) -> SubmitParams:
    """Validate a ``generate`` body with the rules of its ``taskType``."""
    fields = _object(body)
    task_type = fields.get("taskType")
    if task_type is None:
        raise Rejection(400, f"taskType is required: one of {', '.join(TASK_TYPES)}")
    if task_type not in TASK_TYPES:
        raise Rejection(400, f"taskType must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    prompt = fields.get("prompt")
    if prompt is None:
        raise Rejection(400, "prompt is required")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Rejection(400, "prompt must be a non-empty string")
    _check_length(prompt)
    _choice(fields, "speed", SPEEDS)
    _choice(fields, "aspectRatio", ASPECT_RATIOS)
    _choice(fields, "version", VERSIONS)
    _int_range(fields, "variety", 0, 100, step=5)
    _int_range(fields, "stylization", 0, 1000)
    _int_range(fields, "weirdness", 0, 3000)
    _int_range(fields, "ow", 1, 1000)
    _choice(fields, "videoBatchSize", VIDEO_BATCH_SIZES)
    _choice(fields, "motion", MOTIONS)
    translate = fields.get("enableTranslation")
    if translate is not None and not isinstance(translate, bool):
        raise Rejection(400, "enableTranslation must be true or false")
    file_urls = _file_urls(fields)
    water_mark, callback_url = _common(fields)
    _check_type_rules(task_type, fields, file_urls)
    video = task_type in VIDEO_TASK_TYPES
    batch = fields.get("videoBatchSize")
    canonical = {
        name: fields[name] for name in GENERATE_FIELDS if name != "callBackUrl" and name in fields
    }
    return SubmitParams(
        kind="generate",
        task_type=task_type,
        parent_task_id=None,
        image_index=None,
        water_mark=water_mark,
        callback_url=callback_url,
        param_json=_echo(fields, GENERATE_FIELDS),
        image_count=(1 if batch is None else batch) if video else None,
        media="mp4" if video else "png",
        identity=("generate", json.dumps(canonical, sort_keys=True)),
    )


def _check_type_rules(task_type: str, fields: Mapping[str, Any], file_urls: list[str]) -> None:
    """The rules that depend on ``taskType`` (code 422)."""
    video = task_type in VIDEO_TASK_TYPES
    if task_type in NO_SPEED_TASK_TYPES and fields.get("speed") is not None:
        raise Rejection(422, f"speed is not allowed with taskType {task_type}")
    if task_type != "mj_omni_reference" and fields.get("ow") is not None:
        raise Rejection(422, "ow (omni weight) is only allowed with taskType mj_omni_reference")
    if not video:
        for name in ("videoBatchSize", "motion"):
            if fields.get(name) is not None:
                raise Rejection(422, f"{name} is only allowed with taskType mj_video, mj_video_hd")
    if task_type in IMAGE_INPUT_TASK_TYPES and not file_urls:
        raise Rejection(422, f"fileUrls is required with taskType {task_type}")
    if video and len(file_urls) != 1:
        raise Rejection(
            422, f"fileUrls must hold exactly one image URL for {task_type}, got {len(file_urls)}"
        )


def _check_length(prompt: str) -> None:
    if len(prompt) > PROMPT_MAX_CHARS:
        raise Rejection(
            400, f"prompt must be at most {PROMPT_MAX_CHARS} characters, got {len(prompt)}"
        )


def _object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise Rejection(400, "the request body must be a JSON object")
    return body


def _parent_id(fields: Mapping[str, Any]) -> str:
    task_id = fields.get("taskId")
    if task_id is None:
        raise Rejection(400, "taskId is required")
    if not isinstance(task_id, str) or not task_id.strip():
        raise Rejection(400, "taskId must be a non-empty string")
    return task_id


def _parent_and_index(fields: Mapping[str, Any], *, low: int) -> tuple[str, int]:
    task_id = _parent_id(fields)
    image_index = fields.get("imageIndex")
    if image_index is None:
        raise Rejection(400, "imageIndex is required")
    high = low + 3
    if isinstance(image_index, bool) or not isinstance(image_index, int):
        raise Rejection(400, f"imageIndex must be an integer from {low} to {high}")
    if not low <= image_index <= high:
        raise Rejection(400, f"imageIndex must be from {low} to {high}, got {image_index}")
    return task_id, image_index


def _common(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The optional ``waterMark`` and ``callBackUrl`` every endpoint takes."""
    water_mark = fields.get("waterMark")
    if water_mark is not None and not isinstance(water_mark, str):
        raise Rejection(400, "waterMark must be a string")
    callback_url = fields.get("callBackUrl")
    if callback_url is not None and not is_http_url(callback_url):
        raise Rejection(400, "callBackUrl must be an absolute http(s) URL")
    return water_mark, callback_url


def _choice(fields: Mapping[str, Any], name: str, allowed: tuple[object, ...]) -> None:
    value = fields.get(name)
    # bool is an int: videoBatchSize true must not pass for 1.
    if value is not None and (isinstance(value, bool) or value not in allowed):
        listed = ", ".join(str(choice) for choice in allowed)
        raise Rejection(400, f"{name} must be one of {listed}, got {value!r}")


def _int_range(fields: Mapping[str, Any], name: str, low: int, high: int, *, step: int = 1) -> None:
    value = fields.get(name)
    if value is None:
        return
    steps = f" in steps of {step}" if step > 1 else ""
    allowed = f"an integer from {low} to {high}{steps}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejection(400, f"{name} must be {allowed}, got {value!r}")
    if not low <= value <= high or value % step:
        raise Rejection(400, f"{name} must be {allowed}, got {value}")


def _file_urls(fields: Mapping[str, Any]) -> list[str]:
    urls = fields.get("fileUrls")
    if urls is None:
        return []
    if not isinstance(urls, list):
        raise Rejection(400, "fileUrls must be a list of absolute http(s) URLs")
    for url in urls:
        if not is_http_url(url):
            raise Rejection(400, f"fileUrls must hold absolute http(s) URLs, got {url!r}")
    return urls


def _echo(fields: Mapping[str, Any], names: tuple[str, ...]) -> str:
    return json.dumps(
        {name: fields[name] for name in names if name in fields}, separators=(",", ":")
    )


def is_http_url(value: object) -> bool:
    """Whether ``value`` is an absolute ``http``/``https`` URL with a host."""
    if not isinstance(value, str):
        return False
    try:
        url = yarl.URL(value)
    except (TypeError, ValueError):
        return False
    return url.scheme in ("http", "https") and bool(url.host)
