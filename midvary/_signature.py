"""Check a callback delivery's signature: for users who run their own receiver.

kie.ai signs a callback (when its ``webhookHmacKey`` setting is on) with two headers:
``X-Webhook-Timestamp`` (unix seconds) and ``X-Webhook-Signature`` =
``base64(HMAC-SHA256(key, taskId + "." + timestamp))``. Only the task id and the timestamp
are signed, not the body: a verified delivery proves *which task* it is about and *when* it
was sent, nothing about the result it claims. Confirm the result with one ``record-info``
call (``await session.task(task_id)``) before trusting it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Mapping
from typing import Final

from ._converter import structure_callback
from ._errors import CallbackSignatureError

#: Seconds a delivery's timestamp may differ from the local clock by default (either way).
DEFAULT_MAX_AGE: Final = 300.0

_TIMESTAMP_HEADER: Final = "x-webhook-timestamp"
_SIGNATURE_HEADER: Final = "x-webhook-signature"
# Unix seconds have 10 digits until the year 2286; a longer "timestamp" is refused before
# int() reads it (a 5,000-digit one would make int() raise ValueError, a 10^6-digit one cost
# seconds of CPU).
_MAX_STAMP_DIGITS: Final = 12


def signature_problem(
    task_id: str,
    headers: Mapping[str, str],
    *,
    key: bytes,
    max_age: float,
    now: float,
) -> str | None:
    """Why the signature headers do not sign ``task_id`` freshly, or ``None`` when they do.

    Args:
        task_id: The task the delivery must be about.
        headers: The delivery's headers; names are matched case-insensitively.
        key: The HMAC key (kie.ai's ``webhookHmacKey``) as bytes.
        max_age: Seconds the timestamp may differ from ``now``, either way.
        now: The current time in unix seconds.

    Returns:
        A short reason, or ``None`` when the signature is valid and fresh.

    """
    lowered = {name.lower(): value for name, value in headers.items()}
    stamp = lowered.get(_TIMESTAMP_HEADER, "").strip()
    signature = lowered.get(_SIGNATURE_HEADER, "").strip()
    if not stamp or not signature:
        return "missing X-Webhook-Timestamp or X-Webhook-Signature"
    if len(stamp) > _MAX_STAMP_DIGITS or not (stamp.isascii() and stamp.isdigit()):
        return "X-Webhook-Timestamp is not unix seconds"
    if abs(now - int(stamp)) > max_age:
        return f"X-Webhook-Timestamp is outside the {max_age:g} s tolerance"
    digest = hmac.new(key, f"{task_id}.{stamp}".encode(), hashlib.sha256)
    expected = base64.b64encode(digest.digest())
    if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
        return "wrong X-Webhook-Signature"
    return None


def verify_callback(
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    hmac_key: str | bytes,
    max_age: float = DEFAULT_MAX_AGE,
    task_id: str | None = None,
    now: float | None = None,
) -> str:
    """Check a callback delivery's signature; return the task id it is about.

    For users who receive the provider's callbacks with their own web server instead of
    :class:`~midvary.CallbackReceiver`. The body is not signed: after this check, confirm
    the result with ``await session.task(task_id)`` rather than trusting the body's URLs.

    Args:
        body: The delivery's raw body (JSON ``{"code", "msg", "data": {"taskId", ...}}``).
        headers: The delivery's headers (any mapping, e.g. ``request.headers``); names are
            matched case-insensitively.
        hmac_key: kie.ai's ``webhookHmacKey``, as configured in the provider's settings.
        max_age: Seconds the ``X-Webhook-Timestamp`` may differ from the local clock, either
            way (replayed or far-future deliveries are refused). Default 300.
        task_id: The task this delivery must be about (for example the one your callback URL
            was made for), or ``None`` to accept the task the body names.
        now: The current time in unix seconds, or ``None`` for :func:`time.time`.

    Returns:
        The verified task id.

    Raises:
        CallbackSignatureError: The signature headers are missing, malformed, stale, or do
            not sign this task id; or the body names another task than ``task_id``.
        ProtocolError: The body is not a callback body (not JSON, no ``data.taskId``).
        TypeError: An argument has the wrong type.
        ValueError: ``hmac_key`` is empty, or ``max_age`` is not a finite number > 0.

    """
    key = _check_key(hmac_key)
    if isinstance(max_age, bool) or not isinstance(max_age, int | float):
        raise TypeError(f"max_age must be a number of seconds, not {type(max_age).__name__}")
    if not math.isfinite(max_age) or max_age <= 0:
        raise ValueError(f"max_age must be a finite number of seconds > 0, got {max_age!r}")
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes or str, not {type(body).__name__}")
    if task_id is not None and (not isinstance(task_id, str) or not task_id):
        raise TypeError("task_id must be a non-empty str or None")
    named = structure_callback(bytes(body)).task_id
    if task_id is not None and named != task_id:
        raise CallbackSignatureError(
            f"the callback names task {named!r:.80}, not the expected {task_id!r:.80}",
            task_id=named,
        )
    clock = time.time() if now is None else now
    problem = signature_problem(named, headers, key=key, max_age=float(max_age), now=clock)
    if problem is not None:
        raise CallbackSignatureError(
            f"callback for task {named!r:.80} rejected: {problem}", task_id=named
        )
    return named


def _check_key(hmac_key: object) -> bytes:
    """``hmac_key`` as bytes; ``TypeError``/``ValueError`` if it is not a non-empty key."""
    if isinstance(hmac_key, str):
        key = hmac_key.encode()
    elif isinstance(hmac_key, bytes):
        key = hmac_key
    else:
        raise TypeError(f"hmac_key must be a str or bytes, not {type(hmac_key).__name__}")
    if not key:
        raise ValueError("hmac_key must not be empty (it is kie.ai's webhookHmacKey)")
    return key
