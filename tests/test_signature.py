"""verify_callback: a standalone check of a callback's signature, for users' own receivers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

import midvary
from midvary.testing import callback_signature

from .fanout_support import fake_session

KEY = "whk-test-key"
NOW = 1_700_000_000.0


def body(task_id: str = "task-1") -> bytes:
    """A callback body naming ``task_id``."""
    data = {"taskId": task_id, "promptJson": "{}", "resultUrls": ["https://cdn.example/a.png"]}
    return json.dumps({"code": 200, "msg": "success", "data": data}).encode()


def signed(task_id: str = "task-1", *, stamp: float = NOW, key: str = KEY) -> dict[str, str]:
    """Headers signing ``task_id`` at ``stamp`` with ``key``, as kie.ai sends them."""
    timestamp = str(int(stamp))
    return {
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": callback_signature(key, task_id, timestamp),
    }


def test_a_valid_signature_returns_the_task_id() -> None:
    """A fresh, correctly signed delivery gives back the task id its body names."""
    assert midvary.verify_callback(body(), signed(), hmac_key=KEY, now=NOW) == "task-1"
    lowered = {name.lower(): value for name, value in signed().items()}
    text = body().decode()
    assert midvary.verify_callback(text, lowered, hmac_key=KEY.encode(), now=NOW + 299) == "task-1"
    assert midvary.verify_callback(body(), signed(), hmac_key=KEY, task_id="task-1", now=NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Webhook-Timestamp or X-Webhook-Signature"),
        ({"X-Webhook-Timestamp": str(int(NOW))}, "missing"),
        ({**signed(), "X-Webhook-Timestamp": "1.7e9"}, "not unix seconds"),
        ({**signed(), "X-Webhook-Timestamp": "\u0661\u0667\u0660\u0660"}, "not unix seconds"),
        ({**signed(), "X-Webhook-Timestamp": "9" * 5000}, "not unix seconds"),
        (signed(stamp=NOW - 301), "outside the 300 s tolerance"),
        (signed(stamp=NOW + 301), "outside the 300 s tolerance"),
        (signed(key="another-key"), "wrong X-Webhook-Signature"),
        (signed("task-2"), "wrong X-Webhook-Signature"),
        ({**signed(), "X-Webhook-Timestamp": str(int(NOW) + 1)}, "wrong X-Webhook-Signature"),
        ({**signed(), "X-Webhook-Signature": "é"}, "wrong X-Webhook-Signature"),
    ],
    ids=[
        "none",
        "no-signature",
        "float-stamp",
        "arabic-digits",
        "5000-digits",
        "stale",
        "future",
        "wrong-key",
        "other-task",
        "moved-stamp",
        "non-ascii",
    ],
)
def test_bad_signatures_are_refused_with_the_reason(headers: dict[str, str], reason: str) -> None:
    """Missing, malformed, stale, future or wrong signatures raise CallbackSignatureError."""
    with pytest.raises(midvary.CallbackSignatureError, match=reason) as info:
        midvary.verify_callback(body(), headers, hmac_key=KEY, now=NOW)
    assert info.value.task_id == "task-1"
    assert KEY not in str(info.value)
    assert signed()["X-Webhook-Signature"] not in str(info.value)


def test_max_age_sets_the_tolerance() -> None:
    """A delivery 20 s old passes with max_age=30 and is refused with max_age=10."""
    headers = signed(stamp=NOW - 20)
    assert midvary.verify_callback(body(), headers, hmac_key=KEY, max_age=30, now=NOW)
    with pytest.raises(midvary.CallbackSignatureError, match="outside the 10 s tolerance"):
        midvary.verify_callback(body(), headers, hmac_key=KEY, max_age=10, now=NOW)


def test_a_body_about_another_task_is_refused() -> None:
    """With task_id given, a delivery (even validly signed) naming another task is refused."""
    with pytest.raises(midvary.CallbackSignatureError, match="not the expected 'task-9'"):
        midvary.verify_callback(body(), signed(), hmac_key=KEY, task_id="task-9", now=NOW)


@pytest.mark.parametrize("raw", [b"", b"<html>", b"[]", b'{"code": 200, "data": {}}'])
def test_a_body_that_is_not_a_callback_is_a_protocol_error(raw: bytes) -> None:
    """A body without data.taskId raises ProtocolError, not a KeyError."""
    with pytest.raises(midvary.ProtocolError):
        midvary.verify_callback(raw, signed(), hmac_key=KEY, now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"hmac_key": ""}, ValueError),
        ({"hmac_key": None}, TypeError),
        ({"hmac_key": 5}, TypeError),
        ({"max_age": 0}, ValueError),
        ({"max_age": float("nan")}, ValueError),
        ({"max_age": float("inf")}, ValueError),
        ({"max_age": True}, TypeError),
        ({"max_age": "300"}, TypeError),
        ({"headers": [("X-Webhook-Timestamp", "1")]}, TypeError),
        ({"body": 5}, TypeError),
        ({"task_id": ""}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """Wrong types and values raise TypeError/ValueError saying what is allowed."""
    arguments: dict[str, Any] = {"body": body(), "headers": signed(), "hmac_key": KEY}
    arguments |= kwargs
    with pytest.raises(error):
        midvary.verify_callback(**arguments, now=NOW)


@pytest.mark.parametrize(("receiver_key", "status"), [(KEY, 200), ("not-the-key", 401)])
async def test_a_users_own_receiver_checks_the_fakes_deliveries(
    receiver_key: str, status: int
) -> None:
    """A hand-written aiohttp receiver accepts the fake's signed callback, or refuses a forgery."""
    answered: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            task_id = midvary.verify_callback(raw, request.headers, hmac_key=receiver_key)
        except midvary.CallbackSignatureError:
            await answered.put((401, None))
            return web.Response(status=401)
        await answered.put((200, task_id))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        async with fake_session(callback_hmac_key=KEY, callback_retry_delays=()) as (_, session):
            handle = await session.vary("parent-0", 1, callback_url=url)
            await handle
            got_status, got_task = await asyncio.wait_for(answered.get(), timeout=5)
    finally:
        await runner.cleanup()
    assert got_status == status
    assert got_task == (handle.task_id if status == 200 else None)
