"""Callbacks: a CallbackReceiver resolves the same handle as polling, and trusts nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs
import pytest
import yarl
from aiohttp import web

import midvary
from midvary._converter import structure_callback
from midvary.testing import FakeProvider, FakeSettings, ManualClock, callback_signature

from .conftest import FAST_POLL, FAST_RETRY
from .mockapi import BASE, KEY, VARY_URL, MockAPI, record, record_url

#: A safety net so slow that a test relying on it would hit pytest's timeout instead.
NEVER = midvary.PollPolicy(
    initial_delay=3600.0, factor=1.0, max_delay=3600.0, jitter=0.0, timeout=None, target_delay=None
)
#: A safety net fast enough to be the thing a test relies on.
QUICK = attrs.evolve(FAST_POLL, initial_delay=0.05, max_delay=0.05, timeout=10.0, target_delay=None)
HMAC_KEY = "whk-test-secret"


class Clock:
    """A settable monotonic clock for the receiver's token expiry."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        """The current reading, in seconds."""
        return self.now


@attrs.define
class World:
    """A fake provider on a manual clock, a started receiver, and an HTTP client."""

    fake: FakeProvider
    clock: ManualClock
    receiver: midvary.CallbackReceiver
    http: aiohttp.ClientSession

    def session(self, **kwargs: Any) -> midvary.Session:
        """A session against the fake that uses the receiver (unless told otherwise)."""
        kwargs.setdefault("callbacks", self.receiver)
        return midvary.Session(
            api_key=self.fake.api_key, base_url=self.fake.base_url, retry=FAST_RETRY, **kwargs
        )

    def finish(self, task_id: str) -> None:
        """Move the fake's clock to the task's end (deliveries fire from there)."""
        self.clock.advance(max(0.0, self.fake.task(task_id).finished_at - self.clock()))

    def callback_url(self, task_id: str) -> str:
        """The callBackUrl the fake received with the task's submission."""
        url = self.fake.task(task_id).callback_url
        assert url is not None
        return url

    async def post(
        self, url: str, body: bytes | dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> int:
        """Deliver a (hand-made) callback to ``url``; return the HTTP status."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.post(url, data=raw, headers=headers) as response:
            await response.read()
            return response.status

    def polls(self, task_id: str) -> int:
        """record-info requests the fake answered for ``task_id``."""
        return self.fake.stats.polls.get(task_id, 0)


StartWorld = Callable[..., Awaitable[World]]


@pytest.fixture
async def start_world() -> AsyncIterator[StartWorld]:
    """Start a fake (manual clock, instant visibility) and a receiver; close both after."""
    opened: list[World] = []

    async def start(
        *, hmac_key: str | None = None, receiver: dict[str, Any] | None = None, **settings: Any
    ) -> World:
        clock = ManualClock(1000.0)
        fake = FakeProvider(
            settings=FakeSettings(
                **{"task_duration": (1.0, 2.0), "invisible_for": 0.0, "submit_limit": None}
                | settings  # type: ignore[arg-type]
            ),
            clock=clock,
        )
        await fake.start()
        world = World(
            fake,
            clock,
            midvary.CallbackReceiver(hmac_key=hmac_key, safety_poll=NEVER, **(receiver or {})),
            aiohttp.ClientSession(),
        )
        opened.append(world)
        await world.receiver.start("127.0.0.1", 0)
        return world

    yield start
    for world in opened:
        await world.receiver.stop()
        await world.fake.close()
        await world.http.close()


def callback_body(task_id: str, urls: list[str] | None = None, code: int = 200) -> dict[str, Any]:
    """A callback body shaped like kie's."""
    return {
        "code": code,
        "msg": "success",
        "data": {"taskId": task_id, "promptJson": "{}", "resultUrls": urls or []},
    }


def signed(task_id: str, *, at: float | None = None, key: str = HMAC_KEY) -> dict[str, str]:
    """kie-style signature headers for ``task_id`` at unix time ``at`` (default now)."""
    stamp = str(int(time.time() if at is None else at))
    return {
        "X-Webhook-Timestamp": stamp,
        "X-Webhook-Signature": callback_signature(key, task_id, stamp),
    }


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds (the test's own timeout bounds it)."""
    # The fake's figures are counters, not events: re-check them a few times a second.
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


# -- the happy paths ---------------------------------------------------------------------


async def test_callback_resolves_the_handle_with_one_get(start_world: StartWorld) -> None:
    """A delivery wakes the handle: one record-info GET, the provider's record returned."""
    world = await start_world()
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        url = world.callback_url(handle.task_id)
        assert url.startswith(f"{world.receiver.public_url}/")
        assert len(yarl.URL(url).name) >= 40  # secrets.token_urlsafe(32)
        waiter = asyncio.create_task(handle.wait())
        world.finish(handle.task_id)
        result = await waiter
    snapshot = world.fake.task(handle.task_id)
    assert result.status is midvary.TaskStatus.SUCCESS
    assert result.image_urls == snapshot.result_urls
    assert world.polls(handle.task_id) == 1
    assert world.fake.stats.callbacks_delivered == 1


async def test_each_submission_gets_its_own_token(start_world: StartWorld) -> None:
    """Two submissions get two different callback URLs under the same prefix."""
    world = await start_world()
    async with world.session() as session:
        first = await session.vary("parent-1", 0)
        second = await session.vary("parent-1", 1)
        urls = {world.callback_url(first.task_id), world.callback_url(second.task_id)}
        assert len(urls) == 2
        assert world.receiver.active_tokens == 2
    assert world.receiver.active_tokens == 0


async def test_duplicate_deliveries_are_idempotent(start_world: StartWorld) -> None:
    """Three deliveries of one callback all get 200 and cause a single GET."""
    world = await start_world(callback_duplicates=3)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        waiter = asyncio.create_task(handle.wait())
        world.finish(handle.task_id)
        await waiter
        await world.fake.settle_callbacks()
        assert world.fake.stats.callbacks_delivered == 3
        assert world.fake.stats.callback_failures == []
        replay = await world.post(world.callback_url(handle.task_id), callback_body(handle.task_id))
        assert replay == 200
    assert world.polls(handle.task_id) == 1


async def test_failed_task_callback_raises_task_failed(start_world: StartWorld) -> None:
    """A failure callback (code 500) wakes the handle, which raises from the GET's record."""
    world = await start_world(failure_rate=1.0, create_failure_share=0.0)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        waiter = asyncio.create_task(handle.wait())
        world.finish(handle.task_id)
        with pytest.raises(midvary.TaskFailedError) as info:
            await waiter
    assert info.value.record.status is midvary.TaskStatus.GENERATE_FAILED
    assert world.polls(handle.task_id) == 1


async def test_delivery_before_anyone_awaits_is_kept(start_world: StartWorld) -> None:
    """A delivery that comes before the first wait makes that wait poll at once."""
    world = await start_world()
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        world.finish(handle.task_id)
        await world.fake.settle_callbacks()
        assert world.fake.stats.callbacks_delivered == 1
        assert world.polls(handle.task_id) == 0
        result = await handle  # safety_poll's first poll is an hour away: this is the wake
    assert result.is_final
    assert world.polls(handle.task_id) == 1


async def test_callback_that_never_arrives_is_covered_by_the_safety_poll(
    start_world: StartWorld,
) -> None:
    """With no delivery, the receiver's safety_poll still resolves the handle."""
    world = await start_world(callbacks=False)
    receiver = midvary.CallbackReceiver(safety_poll=QUICK)
    await receiver.start()
    try:
        async with world.session(callbacks=receiver) as session:
            handle = await session.vary("parent-1", 0)
            waiter = asyncio.create_task(handle.wait())
            await until(lambda: world.polls(handle.task_id) >= 2)
            world.finish(handle.task_id)
            result = await waiter
    finally:
        await receiver.stop()
    assert result.status is midvary.TaskStatus.SUCCESS
    assert world.fake.stats.callbacks_sent == 0
    assert world.polls(handle.task_id) >= 3


async def test_delivery_to_a_stopped_receiver_falls_back_to_polling(
    start_world: StartWorld,
) -> None:
    """A receiver that stopped answers nothing; the handle still resolves by polling."""
    world = await start_world(callback_retry_delays=())
    receiver = midvary.CallbackReceiver(safety_poll=QUICK)
    await receiver.start()
    async with world.session(callbacks=receiver) as session:
        handle = await session.vary("parent-1", 0)
        await receiver.stop()
        world.finish(handle.task_id)
        await world.fake.settle_callbacks()
        assert len(world.fake.stats.callback_failures) == 1
        assert (await handle).status is midvary.TaskStatus.SUCCESS


async def test_forged_body_with_a_valid_token_is_not_trusted(start_world: StartWorld) -> None:
    """A forged callback's URLs are ignored: the handle returns the provider's record."""
    # The second delivery wakes the handle wake_interval after the first: 0.5 s, not 10.
    world = await start_world(callbacks=False, receiver={"wake_interval": 0.5})
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        url = world.callback_url(handle.task_id)
        waiter = asyncio.create_task(handle.wait())
        # Before the task is final: one extra GET, and the handle keeps waiting.
        forged = callback_body(handle.task_id, ["https://evil.test/forged.png"])
        assert await world.post(url, forged) == 200
        await until(lambda: world.polls(handle.task_id) == 1)
        assert not waiter.done()
        world.finish(handle.task_id)
        assert await world.post(url, forged) == 200
        result = await waiter
    assert result.image_urls == world.fake.task(handle.task_id).result_urls
    assert "https://evil.test/forged.png" not in result.image_urls
    assert world.polls(handle.task_id) == 2


async def test_signed_deliveries_are_accepted(start_world: StartWorld) -> None:
    """With an HMAC key on both sides, the provider's signed callback resolves the handle."""
    world = await start_world(callback_hmac_key=HMAC_KEY, hmac_key=HMAC_KEY)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        waiter = asyncio.create_task(handle.wait())
        world.finish(handle.task_id)
        assert (await waiter).is_final
    assert world.fake.stats.callback_failures == []
    assert world.polls(handle.task_id) == 1


# -- rejections, in the order the checks run ----------------------------------------------


async def test_unknown_token_is_404(start_world: StartWorld) -> None:
    """A token the receiver never issued, or a path outside its prefix, gets 404."""
    world = await start_world(hmac_key=HMAC_KEY)
    base = world.receiver.public_url
    assert base is not None
    body = callback_body("t1")
    # Token first: a bad signature on an unknown token is still a 404.
    assert await world.post(f"{base}/not-a-token", body) == 404
    assert await world.post(f"{base}/not-a-token", body, signed("t1")) == 404
    root = str(yarl.URL(base).with_path("/elsewhere/x"))
    assert await world.post(root, body) == 404


async def test_tokens_of_a_closed_session_are_forgotten(start_world: StartWorld) -> None:
    """After its session closes, a token's deliveries get 404; other sessions keep theirs."""
    world = await start_world(callbacks=False)
    async with world.session() as other:
        kept = await other.vary("parent-1", 1)
        async with world.session() as session:
            handle = await session.vary("parent-1", 0)
            url = world.callback_url(handle.task_id)
        assert await world.post(url, callback_body(handle.task_id)) == 404
        kept_url = world.callback_url(kept.task_id)
        assert await world.post(kept_url, callback_body(kept.task_id)) == 200
    assert world.polls(handle.task_id) == 0


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing"),
        ({"X-Webhook-Timestamp": str(int(time.time()))}, "no signature"),
        ("stale", "stale"),
        ("future", "from the future"),
        ("wrong-key", "wrong key"),
        ("other-task", "signed for another task"),
        ({"X-Webhook-Timestamp": "soon", "X-Webhook-Signature": "x"}, "not seconds"),
        ({"X-Webhook-Timestamp": "9" * 5000, "X-Webhook-Signature": "x"}, "5,000 digits"),
    ],
)
async def test_bad_signatures_are_401_and_wake_nothing(
    start_world: StartWorld, headers: dict[str, str] | str, why: str
) -> None:
    """Missing, stale or wrong HMAC headers get 401 before the body is even read."""
    world = await start_world(callbacks=False, hmac_key=HMAC_KEY)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        task_id = handle.task_id
        made = {
            "stale": signed(task_id, at=time.time() - 301),
            "future": signed(task_id, at=time.time() + 301),
            "wrong-key": signed(task_id, key="not-the-key"),
            "other-task": signed("another-task"),
        }
        chosen = made[headers] if isinstance(headers, str) else headers
        url = world.callback_url(task_id)
        assert await world.post(url, callback_body(task_id), chosen) == 401, why
        assert await world.post(url, b"not json", chosen) == 401, why  # 401 comes before 400
        assert await world.post(url, callback_body(task_id), signed(task_id)) == 200
    assert world.polls(task_id) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>",
        b"[1, 2]",
        b'{"code": 200, "msg": "success"}',
        b'{"code": "ok", "data": {"taskId": "TASK"}}',
        b'{"code": 200, "data": {"promptJson": "{}"}}',
        b'{"code": 200, "data": {"taskId": "TASK", "resultUrls": "https://x.test/1.png"}}',
        b'{"code": 200, "data": {"taskId": "TASK", "resultUrls": [42]}}',
    ],
    ids=["empty", "html", "list", "no-data", "code", "no-task-id", "urls-str", "url-int"],
)
async def test_malformed_bodies_are_400(start_world: StartWorld, body: bytes) -> None:
    """A body that is not a callback gets 400 and wakes nothing."""
    world = await start_world(callbacks=False)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        raw = body.replace(b"TASK", handle.task_id.encode())
        assert await world.post(world.callback_url(handle.task_id), raw) == 400
    assert world.polls(handle.task_id) == 0


async def test_body_about_another_task_is_400(start_world: StartWorld) -> None:
    """A well-formed body naming another task than the token's gets 400 and wakes nothing."""
    world = await start_world(callbacks=False, hmac_key=HMAC_KEY)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        other = await session.vary("parent-1", 1)
        url = world.callback_url(handle.task_id)
        status = await world.post(url, callback_body(other.task_id), signed(handle.task_id))
        assert status == 400
    assert world.polls(handle.task_id) == world.polls(other.task_id) == 0


async def test_oversized_body_is_refused(start_world: StartWorld) -> None:
    """A body over 64 KiB is refused without being parsed."""
    world = await start_world(callbacks=False)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        url = world.callback_url(handle.task_id)
        huge = callback_body(handle.task_id, ["https://x.test/" + "a" * 70_000])
        assert await world.post(url, huge) == 413
    assert world.polls(handle.task_id) == 0


# -- tokens' lifetime ------------------------------------------------------------------------


async def test_tokens_expire_after_the_task_is_final_plus_grace(api: MockAPI) -> None:
    """A token answers duplicates for duplicate_grace seconds after the final record."""
    clock = Clock()
    receiver = midvary.CallbackReceiver(
        public_url="https://cb.test/hook", duplicate_grace=60.0, token_ttl=3600.0, clock=clock
    )
    async with midvary.Session(
        api_key=KEY, base_url=BASE, poll=FAST_POLL, retry=FAST_RETRY, callbacks=receiver
    ) as session:
        api.envelope("POST", VARY_URL, data={"taskId": "t1"})
        handle = await session.vary("parent-1", 0)
        path = yarl.URL(api.calls("POST", VARY_URL)[0].kwargs["json"]["callBackUrl"]).path
        api.envelope("GET", record_url("t1"), data=record(flag=1))
        await handle.wait(poll=FAST_POLL)
        body = json.dumps(callback_body("t1")).encode()
        clock.now = 59.0
        assert await receiver.handle(body, {}, path) == 200
        clock.now = 61.0
        assert await receiver.handle(body, {}, path) == 404
        assert receiver.active_tokens == 0


async def test_unused_tokens_expire_after_token_ttl(api: MockAPI) -> None:
    """A token with no delivery and no final record is forgotten after token_ttl seconds."""
    clock = Clock()
    receiver = midvary.CallbackReceiver(
        public_url="https://cb.test/hook", token_ttl=100.0, clock=clock
    )
    async with midvary.Session(api_key=KEY, base_url=BASE, callbacks=receiver) as session:
        for n in range(3):
            api.envelope("POST", VARY_URL, data={"taskId": f"t{n}"})
            await session.vary("parent-1", 0)
        assert receiver.active_tokens == 3
        path = yarl.URL(api.calls("POST", VARY_URL)[0].kwargs["json"]["callBackUrl"]).path
        clock.now = 101.0
        assert await receiver.handle(json.dumps(callback_body("t0")).encode(), {}, path) == 404
        # Sweeps are lazy (on deliveries and submissions), with no background task.
        api.envelope("POST", VARY_URL, data={"taskId": "t9"})
        await session.vary("parent-1", 0)
        assert receiver.active_tokens == 1


async def test_failed_submission_drops_its_token(start_world: StartWorld) -> None:
    """A submission the provider refuses leaves no token behind."""
    world = await start_world(credits=0)
    async with world.session() as session:
        with pytest.raises(midvary.InsufficientCreditsError):
            await session.vary("parent-1", 0)
        assert world.receiver.active_tokens == 0


# -- ordering: a callback faster than the submission's answer ----------------------------


async def test_callback_before_the_submit_answer_is_processed(api: MockAPI) -> None:
    """A delivery that beats the submission's answer waits for it, then wakes the handle."""
    receiver = midvary.CallbackReceiver(public_url="https://cb.test/hook", safety_poll=NEVER)
    deliveries: list[asyncio.Task[int]] = []

    async def provider(_url: yarl.URL, **kwargs: Any) -> None:
        # The provider ran the task and called back before our client read its answer.
        path = yarl.URL(kwargs["json"]["callBackUrl"]).path
        body = json.dumps(callback_body("t1")).encode()
        deliveries.append(asyncio.create_task(receiver.handle(body, {}, path)))
        await asyncio.sleep(0)  # let the delivery run until it blocks
        assert not deliveries[0].done()  # it waits for the task id, it is not refused

    async with midvary.Session(
        api_key=KEY, base_url=BASE, retry=FAST_RETRY, callbacks=receiver
    ) as session:
        api.add(
            VARY_URL,
            "POST",
            body=json.dumps({"code": 200, "msg": "success", "data": {"taskId": "t1"}}),
            callback=provider,
        )
        handle = await session.vary("parent-1", 0)
        assert await deliveries[0] == 200
        api.envelope("GET", record_url("t1"), data=record(flag=1))
        result = await handle  # the safety poll is an hour away: this is the wake
    assert result.status is midvary.TaskStatus.SUCCESS
    assert len(api.calls("GET", record_url("t1"))) == 1


async def test_delivery_waiting_for_a_failed_submission_gets_404(api: MockAPI) -> None:
    """A delivery waiting for its submission's answer gets 404 when the submission fails."""
    receiver = midvary.CallbackReceiver(public_url="https://cb.test/hook")
    deliveries: list[asyncio.Task[int]] = []

    async def provider(_url: yarl.URL, **kwargs: Any) -> None:
        path = yarl.URL(kwargs["json"]["callBackUrl"]).path
        body = json.dumps(callback_body("t1")).encode()
        deliveries.append(asyncio.create_task(receiver.handle(body, {}, path)))
        await asyncio.sleep(0)

    async with midvary.Session(
        api_key=KEY, base_url=BASE, retry=FAST_RETRY, callbacks=receiver
    ) as session:
        api.add(
            VARY_URL,
            "POST",
            body=json.dumps({"code": 402, "msg": "no credits", "data": None}),
            callback=provider,
        )
        with pytest.raises(midvary.InsufficientCreditsError):
            await session.vary("parent-1", 0)
        assert await deliveries[0] == 404


async def test_delivery_whose_submission_answer_is_slow_gets_503(
    api: MockAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery still unmatched after the bind wait gets 503; the provider's retry works."""
    # The real wait is 5 s; a private knob keeps this test fast.
    monkeypatch.setattr("midvary._callbacks._BIND_WAIT", 0.01)
    receiver = midvary.CallbackReceiver(public_url="https://cb.test/hook", safety_poll=NEVER)
    statuses: list[int] = []
    paths: list[str] = []
    body = json.dumps(callback_body("t1")).encode()

    async def provider(_url: yarl.URL, **kwargs: Any) -> None:
        # The provider holds its answer until the callback it sent first was answered.
        paths.append(yarl.URL(kwargs["json"]["callBackUrl"]).path)
        statuses.append(await receiver.handle(body, {}, paths[0]))

    async with midvary.Session(
        api_key=KEY, base_url=BASE, retry=FAST_RETRY, callbacks=receiver
    ) as session:
        api.add(
            VARY_URL,
            "POST",
            body=json.dumps({"code": 200, "msg": "success", "data": {"taskId": "t1"}}),
            callback=provider,
        )
        handle = await session.vary("parent-1", 0)
        assert statuses == [503]
        assert await receiver.handle(body, {}, paths[0]) == 200  # the provider's retry
        api.envelope("GET", record_url("t1"), data=record(flag=1))
        assert (await handle).is_final
    assert len(api.calls("GET", record_url("t1"))) == 1


# -- the three ways to serve ---------------------------------------------------------------


async def test_receiver_mounted_in_a_user_app(start_world: StartWorld) -> None:
    """add_routes mounts the receiver in the user's aiohttp app beside its own routes."""
    world = await start_world()

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="up")

    # The user's server: its address is known before the app is built, as in production.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    receiver = midvary.CallbackReceiver(
        public_url=f"http://127.0.0.1:{port}/hooks/midjourney", safety_poll=NEVER
    )
    app = web.Application()
    app.router.add_get("/health", health)
    receiver.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        async with world.session(callbacks=receiver) as session:
            handle = await session.vary("parent-1", 0)
            assert world.callback_url(handle.task_id).startswith(
                f"http://127.0.0.1:{port}/hooks/midjourney/"
            )
            waiter = asyncio.create_task(handle.wait())
            world.finish(handle.task_id)
            assert (await waiter).status is midvary.TaskStatus.SUCCESS
        async with world.http.get(f"http://127.0.0.1:{port}/health") as response:
            assert await response.text() == "up"
    finally:
        await receiver.stop()
        await runner.cleanup()
    assert world.polls(handle.task_id) == 1
    assert world.fake.stats.callbacks_delivered == 1


async def test_framework_free_entry(api: MockAPI) -> None:
    """receiver.handle(body, headers, path) is all another framework needs."""
    receiver = midvary.CallbackReceiver(
        public_url="https://my.host/midvary/callback", hmac_key=HMAC_KEY, safety_poll=NEVER
    )
    async with midvary.Session(
        api_key=KEY, base_url=BASE, retry=FAST_RETRY, callbacks=receiver
    ) as session:
        api.envelope("POST", VARY_URL, data={"taskId": "t1"})
        handle = await session.vary("parent-1", 0)
        sent = api.calls("POST", VARY_URL)[0].kwargs["json"]["callBackUrl"]
        assert sent.startswith("https://my.host/midvary/callback/")
        path = yarl.URL(sent).path
        body = json.dumps(callback_body("t1")).encode()
        # Header names in any case, a query string on the path: both are fine.
        headers = {name.lower(): value for name, value in signed("t1").items()}
        assert await receiver.handle(body, headers, path + "?x=1") == 200
        api.envelope("GET", record_url("t1"), data=record(flag=1))
        result = await handle
    assert result.image_urls == tuple(f"https://cdn.test/t1_{n}.png" for n in range(4))
    assert len(api.calls("GET", record_url("t1"))) == 1


# -- sessions, explicit URLs and lifecycle -------------------------------------------------


async def test_explicit_callback_url_wins_over_the_receiver(start_world: StartWorld) -> None:
    """A callback_url passed to vary() is sent as is, with no token, and polling resolves."""
    world = await start_world(callbacks=False)
    async with world.session(poll=QUICK) as session:
        handle = await session.vary("parent-1", 0, callback_url="https://user.test/hook")
        assert world.fake.task(handle.task_id).callback_url == "https://user.test/hook"
        assert world.receiver.active_tokens == 0
        waiter = asyncio.create_task(handle.wait())
        await until(lambda: world.polls(handle.task_id) >= 1)
        world.finish(handle.task_id)
        assert (await waiter).is_final


async def test_session_without_receiver_sends_no_callback(start_world: StartWorld) -> None:
    """Without a receiver nothing changes: no callBackUrl unless the user gives one."""
    world = await start_world()
    async with world.session(callbacks=None) as session:
        handle = await session.vary("parent-1", 0)
    assert world.fake.task(handle.task_id).callback_url is None
    assert world.receiver.active_tokens == 0


async def test_stopped_receiver_is_a_clear_error(start_world: StartWorld) -> None:
    """A stopped receiver cannot serve a new session, nor a submission of an open one."""
    world = await start_world()
    receiver = midvary.CallbackReceiver(public_url="http://127.0.0.1:9/cb")
    async with world.session(callbacks=receiver) as session:
        await receiver.stop()
        with pytest.raises(midvary.ReceiverClosedError):
            await session.vary("parent-1", 0)
    assert world.fake.stats.requests["submit"] == 0
    with pytest.raises(midvary.ReceiverClosedError):
        world.session(callbacks=receiver)
    with pytest.raises(midvary.ReceiverClosedError):
        await receiver.start()
    await receiver.stop()  # idempotent


async def test_receiver_without_url_needs_start(api: MockAPI) -> None:
    """With no public_url, submitting before start() is a ValueError and sends nothing."""
    receiver = midvary.CallbackReceiver()
    assert receiver.public_url is None
    async with midvary.Session(api_key=KEY, base_url=BASE, callbacks=receiver) as session:
        with pytest.raises(ValueError, match="public_url"):
            await session.vary("parent-1", 0)
    assert api.count() == 0
    async with receiver:
        await receiver.start()
        assert receiver.port
        assert receiver.public_url == f"http://127.0.0.1:{receiver.port}/midvary/callback"
        with pytest.raises(RuntimeError, match="already serving"):
            await receiver.start()
    assert receiver.closed
    assert receiver.port is None or receiver.closed


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"public_url": "ftp://x.test/cb"}, ValueError),
        ({"public_url": "/relative"}, ValueError),
        ({"public_url": "https://x.test/cb?q=1"}, ValueError),
        ({"public_url": 42}, TypeError),
        ({"hmac_key": ""}, ValueError),
        ({"safety_poll": {"initial_delay": 1}}, TypeError),
        ({"timestamp_tolerance": 0}, ValueError),
        ({"duplicate_grace": -1}, ValueError),
        ({"token_ttl": True}, TypeError),
    ],
)
def test_bad_receiver_settings_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """Invalid receiver settings raise a clear error at construction."""
    with pytest.raises(error):
        midvary.CallbackReceiver(**kwargs)


async def test_wildcard_host_needs_a_public_url() -> None:
    """start() on 0.0.0.0 without public_url is refused: no URL could be derived."""
    receiver = midvary.CallbackReceiver()
    with pytest.raises(ValueError, match="public_url"):
        await receiver.start("0.0.0.0", 0)  # noqa: S104
    await receiver.stop()


def test_session_refuses_a_non_receiver() -> None:
    """Session(callbacks=...) accepts only a CallbackReceiver."""
    with pytest.raises(TypeError, match="CallbackReceiver"):
        midvary.Session(api_key=KEY, callbacks="https://cb.test")  # type: ignore[arg-type]


async def test_secrets_stay_out_of_logs_and_reprs(
    start_world: StartWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither a token nor the HMAC key nor the API key is logged at INFO or above."""
    caplog.set_level(logging.DEBUG, logger="midvary")
    world = await start_world(callback_hmac_key=HMAC_KEY, hmac_key=HMAC_KEY)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        url = world.callback_url(handle.task_id)
        token = yarl.URL(url).name
        await world.post(url, b"{}", signed(handle.task_id))  # 400
        await world.post(url, callback_body(handle.task_id), signed("x"))  # 401
        waiter = asyncio.create_task(handle.wait())
        world.finish(handle.task_id)
        await waiter
    assert caplog.records
    for entry in caplog.records:
        text = entry.getMessage()
        assert world.fake.api_key not in text
        assert HMAC_KEY not in text
        assert token not in text or entry.levelno < logging.INFO
    assert HMAC_KEY not in repr(world.receiver)


def test_callback_bodies_are_structured_by_the_converter() -> None:
    """The one converter reads kie's callback shape: plain URLs, promptJson, envelope code."""
    notice = structure_callback(
        b'{"code": 500, "msg": "failed", "extra": 1,'
        b' "data": {"taskId": "t1", "promptJson": "{\\"taskId\\": \\"p\\"}", "resultUrls": []}}'
    )
    assert (notice.code, notice.message, notice.task_id) == (500, "failed", "t1")
    assert notice.image_urls == ()
    assert notice.params == {"taskId": "p"}
    urls = structure_callback(
        b'{"code": "200", "data": {"taskId": "t1", "resultUrls": ["https://x.test/1.png"]}}'
    )
    assert urls.image_urls == ("https://x.test/1.png",)
    assert urls.code == 200


# -- a receiver on the open internet ---------------------------------------------------------


async def test_a_replayed_token_wakes_its_handle_once_per_interval(
    start_world: StartWorld,
) -> None:
    """1,000 replays of a valid delivery while the task runs cost one record-info GET."""
    world = await start_world(callbacks=False, receiver={"wake_interval": 3600.0})
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        url = world.callback_url(handle.task_id)
        waiter = asyncio.create_task(handle.wait())
        body = json.dumps(callback_body(handle.task_id)).encode()
        for _ in range(20):
            statuses = await asyncio.gather(*(world.post(url, body) for _ in range(50)))
            assert set(statuses) == {200}
        await until(lambda: world.polls(handle.task_id) >= 1)
        assert not waiter.done()  # the task runs on: the one GET saw it running
        waiter.cancel()
    assert world.polls(handle.task_id) == 1


async def test_a_callback_after_a_replay_is_late_not_lost(start_world: StartWorld) -> None:
    """A delivery within the wake interval of a replay still wakes the handle, once."""
    world = await start_world(callbacks=False, receiver={"wake_interval": 0.2})
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        url = world.callback_url(handle.task_id)
        waiter = asyncio.create_task(handle.wait())
        assert await world.post(url, callback_body(handle.task_id)) == 200  # a replay
        await until(lambda: world.polls(handle.task_id) == 1)
        world.finish(handle.task_id)
        assert await world.post(url, callback_body(handle.task_id)) == 200  # the real one
        assert (await waiter).status is midvary.TaskStatus.SUCCESS
    assert world.polls(handle.task_id) == 2


async def test_the_token_is_checked_before_the_body_is_read(start_world: StartWorld) -> None:
    """An unknown token is answered 404 while its announced 10 MB body is still unsent."""
    world = await start_world(callbacks=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", world.receiver.port)
    head = (
        f"POST {world.receiver.path}/not-a-token HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    )
    writer.write(head.encode())
    status = await reader.readline()
    writer.close()
    assert status.split()[1] == b"404"


async def test_compressed_bodies_are_refused_unread(start_world: StartWorld) -> None:
    """A gzip body to a live token gets 415 and wakes nothing: callbacks are small JSON."""
    world = await start_world(callbacks=False)
    async with world.session() as session:
        handle = await session.vary("parent-1", 0)
        body = gzip.compress(json.dumps(callback_body(handle.task_id)).encode())
        url = world.callback_url(handle.task_id)
        assert await world.post(url, body, {"Content-Encoding": "gzip"}) == 415
        assert await receiver_handle(world, url, body, {"content-encoding": "gzip"}) == 415
    assert world.polls(handle.task_id) == 0


async def receiver_handle(world: World, url: str, body: bytes, headers: dict[str, str]) -> int:
    """The framework-free entry's answer for a delivery to ``url``."""
    return await world.receiver.handle(body, headers, yarl.URL(url).path)


async def test_idle_connections_are_closed_after_the_read_timeout() -> None:
    """A client that connects and sends nothing, or half a request head, is disconnected."""
    receiver = midvary.CallbackReceiver(read_timeout=0.2)
    await receiver.start()
    try:
        silent = await asyncio.open_connection("127.0.0.1", receiver.port)
        trickle = await asyncio.open_connection("127.0.0.1", receiver.port)
        trickle[1].write(f"POST {receiver.path}/x HTTP/1.1\r\nHost: x\r\n".encode())
        for reader, writer in (silent, trickle):
            assert await reader.read() == b""  # closed by the receiver, with no answer
            writer.close()
    finally:
        await receiver.stop()


async def test_a_flood_of_slow_connections_does_not_stop_the_receiver(
    start_world: StartWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """300 slow clients against a cap of 20: a real delivery is answered; a few log lines."""
    caplog.set_level(logging.DEBUG, logger="midvary")
    world = await start_world(
        callbacks=False, receiver={"max_connections": 20, "read_timeout": 60.0}
    )
    port = world.receiver.port
    slow: list[asyncio.StreamWriter] = []
    try:
        async with world.session() as session:
            handle = await session.vary("parent-1", 0)
            for _ in range(300):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"POST {world.receiver.path}/x HTTP/1.1\r\nHost: x\r\n".encode())
                slow.append(writer)
            world.finish(handle.task_id)
            url = world.callback_url(handle.task_id)
            assert await world.post(url, callback_body(handle.task_id)) == 200
            assert (await handle).status is midvary.TaskStatus.SUCCESS
    finally:
        for writer in slow:
            writer.close()
    warnings = [entry for entry in caplog.records if entry.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "limit of 20 connections" in warnings[0].getMessage()
    assert not [entry for entry in caplog.records if entry.exc_info]


_SMALL_RECEIVER = """
import asyncio, logging, resource, sys
import midvary
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
async def main():
    receiver = midvary.CallbackReceiver(read_timeout=60.0)
    await receiver.start()
    print(receiver.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await receiver.stop()
asyncio.run(main())
"""


async def test_a_receiver_with_few_open_files_survives_a_connection_flood() -> None:
    """With 128 open files, 300 slow clients: answered, no 'Too many open files' spew."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SMALL_RECEIVER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    slow: list[asyncio.StreamWriter] = []
    try:
        port = int(await child.stdout.readline())
        for _ in range(300):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /midvary/callback/x HTTP/1.1\r\nHost: x\r\n")
            slow.append(writer)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/midvary/callback/unknown"
            async with http.post(url, data=b"{}") as response:
                assert response.status == 404
    finally:
        for writer in slow:
            writer.close()
        child.stdin.close()
        _out, err = await child.communicate()
    lines = err.decode().splitlines()
    assert child.returncode == 0, lines[-20:]
    assert not [line for line in lines if "Traceback" in line or "open files" in line]
    assert len(lines) <= 4, lines  # serving, one "at its limit" report, stopped
