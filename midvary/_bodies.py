"""Request bodies: each request kind's JSON as the provider takes it (camelCase, set fields only).

The converter (:mod:`midvary._converter`) reads what comes back; this module writes what
goes out. A new request kind is a new row of :data:`KINDS`: nothing else in the submission
pipeline changes (its ``key=`` included).
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from ._models import ExtendRequest, GenerateRequest, UpscaleRequest, VaryRequest


@attrs.frozen
class RequestKind:
    """How one request class goes on the wire.

    Attributes:
        path: The endpoint the request is POSTed to.
        fields: ``(attribute, wire name)`` of each field that may be sent, in the
            provider's documented order.

    """

    path: str
    fields: tuple[tuple[str, str], ...]

    def body(
        self, request: Any, *, callback_url: str | None, index_base: int = 0
    ) -> dict[str, Any]:
        """The JSON body of ``request``: its fields that are set, and ``callBackUrl``.

        A ``None`` (and an empty ``file_urls``) is left out, so the provider's defaults
        apply. ``callback_url`` is the URL to send (the request's own, or a callback
        receiver's ticket; ``None`` for none). ``index_base`` is added to a vary's 0-based
        ``image_index`` (1 for accounts whose provider proves to be 1-based); upscale and
        extend indexes are 0..3 by their endpoints' schemas and are sent as they are.
        """
        body: dict[str, Any] = {}
        for field, name in self.fields:
            value = getattr(request, field)
            if value is not None and value != ():
                body[name] = list(value) if isinstance(value, tuple) else value
        if isinstance(request, VaryRequest):
            body["imageIndex"] += index_base
        if callback_url is not None:
            body["callBackUrl"] = callback_url
        return body


_PARENT_IMAGE: Final = (("task_id", "taskId"), ("image_index", "imageIndex"))

#: Request class -> how it is sent.
KINDS: Final[dict[type[Any], RequestKind]] = {
    VaryRequest: RequestKind(
        "/api/v1/mj/generateVary", (*_PARENT_IMAGE, ("water_mark", "waterMark"))
    ),
    GenerateRequest: RequestKind(
        "/api/v1/mj/generate",
        (
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
        ),
    ),
    UpscaleRequest: RequestKind(
        "/api/v1/mj/generateUpscale", (*_PARENT_IMAGE, ("water_mark", "waterMark"))
    ),
    # ``taskType`` is always sent (the endpoint requires it: the request resolves it on
    # construction); ``prompt`` only for a manual extend.
    ExtendRequest: RequestKind(
        "/api/v1/mj/generateVideoExtend",
        (
            ("task_id", "taskId"),
            ("index", "index"),
            ("task_type", "taskType"),
            ("prompt", "prompt"),
            ("water_mark", "waterMark"),
        ),
    ),
}
