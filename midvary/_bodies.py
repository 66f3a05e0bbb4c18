"""Request bodies: each request kind's JSON as the provider takes it (camelCase, set fields only).

The converter (:mod:`midvary._converter`) reads what comes back; this module writes what
goes out. Each function is one row's ``body`` in :data:`midvary._submit.KINDS`.
"""

from __future__ import annotations

from typing import Any, Final

from ._models import ExtendRequest, GenerateRequest, UpscaleRequest, VaryRequest


def vary_body(
    request: VaryRequest, *, callback_url: str | None, index_base: int = 0
) -> dict[str, Any]:
    """The JSON body of ``POST generateVary`` for ``request``.

    ``callback_url`` is the URL to send as ``callBackUrl`` (the request's own, or a callback
    receiver's ticket; ``None`` for none). ``index_base`` is added to the 0-based
    ``image_index`` (1 for accounts whose provider proves to be 1-based). Optional fields
    that are ``None`` are left out.
    """
    body: dict[str, Any] = {
        "taskId": request.task_id,
        "imageIndex": request.image_index + index_base,
    }
    if request.water_mark is not None:
        body["waterMark"] = request.water_mark
    if callback_url is not None:
        body["callBackUrl"] = callback_url
    return body


# GenerateRequest field -> its camelCase wire name, in the provider's documented order.
_GENERATE_NAMES: Final = (
    ("task_type", "taskType"),
    ("prompt", "prompt"),
    ("speed", "speed"),
    ("file_urls", "fileUrls"),
    ("aspect_ratio", "aspectRatio"),
    ("version", "version"),
    ("variety", "variety"),
    ("stylization", "stylization"),
    ("weirdness", "weirdness"),
    ("ow", "ow"),
    ("water_mark", "waterMark"),
    ("enable_translation", "enableTranslation"),
    ("video_batch_size", "videoBatchSize"),
    ("motion", "motion"),
)


def generate_body(
    request: GenerateRequest, *, callback_url: str | None, index_base: int = 0
) -> dict[str, Any]:
    """The JSON body of ``POST generate`` for ``request``.

    Only the fields that are set go on the wire (``None`` and an empty ``file_urls`` are
    left out, so the provider's defaults apply); ``callback_url`` is sent as ``callBackUrl``
    as in :func:`vary_body`. ``index_base`` is ignored (a generate has no image index).
    """
    del index_base
    body: dict[str, Any] = {}
    for field, name in _GENERATE_NAMES:
        value = getattr(request, field)
        if value is not None and value != ():
            body[name] = list(value) if isinstance(value, tuple) else value
    if callback_url is not None:
        body["callBackUrl"] = callback_url
    return body


def upscale_body(
    request: UpscaleRequest, *, callback_url: str | None, index_base: int = 0
) -> dict[str, Any]:
    """The JSON body of ``POST generateUpscale`` for ``request``.

    ``imageIndex`` is the 0-based ``image_index`` as is: the upscale endpoint is 0..3 by its
    schema and its prose, so ``index_base`` (a vary-only setting) is ignored.
    """
    del index_base
    body: dict[str, Any] = {"taskId": request.task_id, "imageIndex": request.image_index}
    if request.water_mark is not None:
        body["waterMark"] = request.water_mark
    if callback_url is not None:
        body["callBackUrl"] = callback_url
    return body


def extend_body(
    request: ExtendRequest, *, callback_url: str | None, index_base: int = 0
) -> dict[str, Any]:
    """The JSON body of ``POST generateVideoExtend`` for ``request``.

    ``index`` is the 0-based video index as is (the docs' example is 0; ``index_base``, a
    vary-only setting, is ignored). ``taskType`` is always sent (the endpoint requires it:
    the request resolved it on construction); ``prompt`` only when set (a manual extend).
    """
    del index_base
    body: dict[str, Any] = {
        "taskId": request.task_id,
        "index": request.index,
        "taskType": request.task_type,
    }
    if request.prompt is not None:
        body["prompt"] = request.prompt
    if request.water_mark is not None:
        body["waterMark"] = request.water_mark
    if callback_url is not None:
        body["callBackUrl"] = callback_url
    return body
