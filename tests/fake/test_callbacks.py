"""Callbacks: payload shape, kie-style HMAC signing, duplicates, failures and retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from aiohttp import web

from midvary.testing import ManualClock, callback_signature

from .conftest import StartFake, finish


@attrs.define
class Receiver:
    """A loopback callback endpoint that records deliveries and can refuse some."""

    url: str = ""
    deliveries: list[tuple[dict[str, str], Any]] = attrs.field(factory=list)
    statuses: list[int] = attrs.field(factory=list)  # answers to give, then 200s

    async def handle(self, request: web.Request) -> web.Response:
        """Record one delivery and answer the next planned status."""
        self.deliveries.append((dict(request.headers), await request.json()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A callback receiver served on 127.0.0.1."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield receiver
    await runner.cleanup()


async def test_success_callback_is_signed_and_shaped_like_kie(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """A finished task POSTs code 200, promptJson and plain URLs, with a valid HMAC."""
    fake, client = await start_fake(callback_hmac_key="s3cret")
    task_id = await client.submit_ok(callBackUrl=receiver.url, waterMark="wm")
    assert fake.pending_callbacks == 1
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    headers, payload = receiver.deliveries[0]

    timestamp = headers["X-Webhook-Timestamp"]
    assert timestamp.isdigit()
    expected = base64.b64encode(
        hmac.new(b"s3cret", f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    ).decode()
    assert headers["X-Webhook-Signature"] == expected
    assert callback_signature("s3cret", task_id, timestamp) == expected

    assert payload["code"] == 200
    assert isinstance(payload["msg"], str)
    assert set(payload["data"]) == {"taskId", "promptJson", "resultUrls"}
    assert payload["data"]["taskId"] == task_id
    record = (await client.record(task_id)).data
    assert payload["data"]["promptJson"] == record["paramJson"]
    assert json.loads(payload["data"]["promptJson"])["waterMark"] == "wm"
    urls = [item["resultUrl"] for item in record["resultInfoJson"]["resultUrls"]]
    assert payload["data"]["resultUrls"] == urls
    assert all(isinstance(url, str) for url in urls)
    assert fake.stats.callbacks_sent == fake.stats.callbacks_delivered == 1


async def test_failure_callback_has_code_500_and_no_urls(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """A failed task's callback has code 500, a msg, and an empty resultUrls; unsigned."""
    fake, client = await start_fake(failure_rate=1.0)
    task_id = await client.submit_ok(callBackUrl=receiver.url)
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    headers, payload = receiver.deliveries[0]
    assert payload["code"] == 500
    assert payload["msg"]
    assert payload["data"]["resultUrls"] == []
    assert "X-Webhook-Signature" not in headers


async def test_callback_waits_for_the_task_to_finish(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """Nothing is delivered before the task's finish on the provider's clock."""
    fake, client = await start_fake()
    task_id = await client.submit_ok(callBackUrl=receiver.url)
    finish(clock, fake, task_id, extra=-0.001)
    await fake.settle_callbacks()
    assert receiver.deliveries == []
    assert fake.pending_callbacks == 1
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    assert len(receiver.deliveries) == 1


async def test_duplicates_are_delivered_n_times(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """callback_duplicates=3 delivers the same callback three times."""
    fake, client = await start_fake(callback_duplicates=3)
    task_id = await client.submit_ok(callBackUrl=receiver.url)
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    assert [payload["data"]["taskId"] for _, payload in receiver.deliveries] == [task_id] * 3
    assert fake.stats.callbacks_delivered == 3


async def test_failed_delivery_is_recorded_and_retried(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """A non-200 answer is recorded (not raised) and retried after callback_retry_delays."""
    fake, client = await start_fake(callback_retry_delays=[30.0])
    receiver.statuses = [503]
    task_id = await client.submit_ok(callBackUrl=receiver.url)
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    assert len(receiver.deliveries) == 1
    (failure,) = fake.stats.callback_failures
    assert (failure.task_id, failure.attempt, failure.reason) == (task_id, 1, "HTTP 503")
    assert fake.pending_callbacks == 1
    clock.advance(30.0)
    await fake.settle_callbacks()
    assert len(receiver.deliveries) == 2
    assert fake.pending_callbacks == 0
    assert fake.stats.callbacks_sent == 2
    assert fake.stats.callbacks_delivered == 1


async def test_unreachable_receiver_is_a_recorded_failure(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """A callback to a closed loopback port fails quietly and is recorded."""
    fake, client = await start_fake(callback_retry_delays=[])
    task_id = await client.submit_ok(callBackUrl="http://127.0.0.1:9/nobody-listens")
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    assert fake.stats.callback_failures[0].attempt == 1
    assert fake.stats.callbacks_delivered == 0


async def test_callbacks_to_other_hosts_are_never_sent(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """By default a non-loopback callBackUrl is recorded as a failure, never contacted."""
    fake, client = await start_fake(callback_retry_delays=[])
    task_id = await client.submit_ok(callBackUrl="https://example.com/hook")
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    assert "loopback" in fake.stats.callback_failures[0].reason


async def test_no_callbacks_when_switched_off(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """With callbacks=False nothing is scheduled or sent."""
    fake, client = await start_fake(callbacks=False)
    task_id = await client.submit_ok(callBackUrl=receiver.url)
    assert fake.pending_callbacks == 0
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    assert receiver.deliveries == []
    assert fake.stats.callbacks_sent == 0


@pytest.mark.parametrize("endpoint", ["generate", "upscale"])
async def test_new_endpoints_call_back_like_vary(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver, endpoint: str
) -> None:
    """A generate or upscale with a callBackUrl is POSTed, signed, with its own results."""
    fake, client = await start_fake(callback_hmac_key="k")
    if endpoint == "generate":
        task_id = await client.generate_ok(callBackUrl=receiver.url, prompt="a fox")
    else:
        task_id = await client.upscale_ok(callBackUrl=receiver.url, imageIndex=2)
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    ((headers, payload),) = receiver.deliveries
    assert headers["X-Webhook-Signature"] == callback_signature(
        "k", task_id, headers["X-Webhook-Timestamp"]
    )
    assert payload["code"] == 200
    assert payload["data"]["taskId"] == task_id
    assert payload["data"]["promptJson"] == fake.task(task_id).param_json
    assert payload["data"]["resultUrls"] == list(fake.task(task_id).result_urls)
    assert len(payload["data"]["resultUrls"]) == (4 if endpoint == "generate" else 1)


async def test_failed_generate_calls_back_with_500(
    start_fake: StartFake, clock: ManualClock, receiver: Receiver
) -> None:
    """A failed generate's callback is code 500 with no result URLs."""
    fake, client = await start_fake(failure_rate=1.0)
    task_id = await client.generate_ok(callBackUrl=receiver.url)
    finish(clock, fake, task_id)
    await fake.settle_callbacks()
    ((_, payload),) = receiver.deliveries
    assert (payload["code"], payload["data"]["resultUrls"]) == (500, [])
