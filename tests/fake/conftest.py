"""Fixtures for the fake provider's contract tests: a raw aiohttp client, never midvary's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import attrs
import pytest

from midvary.testing import FakeProvider, FakeSettings, ManualClock

SUBMIT = "/api/v1/mj/generateVary"
GENERATE = "/api/v1/mj/generate"
UPSCALE = "/api/v1/mj/generateUpscale"
EXTEND = "/api/v1/mj/generateVideoExtend"
RECORD = "/api/v1/mj/record-info"
#: A generate body every rule accepts.
GENERATE_BODY: dict[str, Any] = {"taskType": "mj_txt2img", "prompt": "a red fox in the snow"}

#: Test defaults: realistic shapes, no submit limit, times that only a ManualClock moves.
BASE_SETTINGS: dict[str, Any] = {
    "task_duration": (1.0, 2.0),
    "invisible_for": 0.5,
    "submit_limit": None,
}


@attrs.frozen
class Answer:
    """One HTTP answer: status, content type, raw body, and the JSON body if it parsed."""

    status: int
    content_type: str
    raw: bytes
    body: Any

    @property
    def code(self) -> int:
        """The envelope's code."""
        return int(self.body["code"])

    @property
    def data(self) -> Any:
        """The envelope's data."""
        return self.body["data"]


def assert_envelope(answer: Answer) -> None:
    """The body is exactly {"code": int, "msg": str, "data": object|null}."""
    assert answer.content_type == "application/json", answer
    assert isinstance(answer.body, dict), answer
    assert set(answer.body) == {"code", "msg", "data"}, answer.body
    assert isinstance(answer.body["code"], int), answer.body
    assert not isinstance(answer.body["code"], bool), answer.body
    assert isinstance(answer.body["msg"], str), answer.body
    assert answer.body["data"] is None or isinstance(answer.body["data"], dict), answer.body


_DEFAULT_KEY = object()


class Client:
    """A raw client of one fake: sends exactly what it is told, checks envelopes."""

    def __init__(self, http: aiohttp.ClientSession, fake: FakeProvider) -> None:
        self.http = http
        self.fake = fake

    def _headers(self, key: object) -> dict[str, str]:
        if key is _DEFAULT_KEY:
            key = self.fake.api_key
        return {} if key is None else {"Authorization": f"Bearer {key}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: object = _DEFAULT_KEY,
        envelope: bool = True,
        **kwargs: Any,
    ) -> Answer:
        """Send one request (with the fake's key unless ``key`` says otherwise)."""
        headers = {**self._headers(key), **kwargs.pop("headers", {})}
        async with self.http.request(
            method, self.fake.base_url + path, headers=headers, **kwargs
        ) as response:
            raw = await response.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            answer = Answer(response.status, response.content_type, raw, body)
        if envelope:
            assert_envelope(answer)
        return answer

    async def submit(
        self, body: Any = None, *, key: object = _DEFAULT_KEY, envelope: bool = True, **fields: Any
    ) -> Answer:
        """POST generateVary with ``body``, or a valid body updated with ``fields``."""
        payload = {"taskId": "parent-1", "imageIndex": 0, **fields} if body is None else body
        return await self.request("POST", SUBMIT, key=key, envelope=envelope, json=payload)

    async def submit_ok(self, **fields: Any) -> str:
        """Submit, assert it was accepted, and return the new task id."""
        answer = await self.submit(**fields)
        assert (answer.status, answer.code) == (200, 200), answer
        task_id = answer.data["taskId"]
        assert isinstance(task_id, str)
        assert task_id
        return task_id

    async def generate(
        self, body: Any = None, *, key: object = _DEFAULT_KEY, envelope: bool = True, **fields: Any
    ) -> Answer:
        """POST generate with ``body``, or a valid txt2img body updated with ``fields``."""
        payload = {**GENERATE_BODY, **fields} if body is None else body
        return await self.request("POST", GENERATE, key=key, envelope=envelope, json=payload)

    async def generate_ok(self, **fields: Any) -> str:
        """Generate, assert it was accepted, and return the new task id."""
        return _accepted(await self.generate(**fields))

    async def upscale(
        self, body: Any = None, *, key: object = _DEFAULT_KEY, envelope: bool = True, **fields: Any
    ) -> Answer:
        """POST generateUpscale with ``body``, or a valid body updated with ``fields``."""
        payload = {"taskId": "parent-1", "imageIndex": 0, **fields} if body is None else body
        return await self.request("POST", UPSCALE, key=key, envelope=envelope, json=payload)

    async def upscale_ok(self, **fields: Any) -> str:
        """Upscale, assert it was accepted, and return the new task id."""
        return _accepted(await self.upscale(**fields))

    async def extend(
        self, body: Any = None, *, key: object = _DEFAULT_KEY, envelope: bool = True, **fields: Any
    ) -> Answer:
        """POST generateVideoExtend with ``body``, or an auto extend of ``fields``."""
        payload = {"index": 0, "taskType": "mj_video_extend_auto", **fields}
        return await self.request(
            "POST", EXTEND, key=key, envelope=envelope, json=payload if body is None else body
        )

    async def record(
        self, task_id: str, *, key: object = _DEFAULT_KEY, envelope: bool = True
    ) -> Answer:
        """GET record-info for ``task_id``."""
        return await self.request(
            "GET", RECORD, key=key, envelope=envelope, params={"taskId": task_id}
        )


def _accepted(answer: Answer) -> str:
    assert (answer.status, answer.code) == (200, 200), answer
    task_id = answer.data["taskId"]
    assert isinstance(task_id, str)
    assert task_id
    return task_id


class StartFake(Protocol):
    """The type of the ``start_fake`` fixture: settings as keyword arguments."""

    def __call__(
        self,
        *,
        clock: Callable[[], float] | None = ...,
        api_key: str | None = ...,
        seed: int = ...,
        **settings: Any,
    ) -> Awaitable[tuple[FakeProvider, Client]]:
        """Start a fake; return it and a raw client of it."""
        ...


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session that sends no Authorization unless a test adds it."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when a test advances it."""
    return ManualClock(1000.0)


@pytest.fixture
async def start_fake(http: aiohttp.ClientSession, clock: ManualClock) -> AsyncIterator[StartFake]:
    """Start fakes (on the manual clock unless told otherwise); all are closed afterwards."""
    fakes: list[FakeProvider] = []

    async def start(
        *,
        clock: Callable[[], float] | None = clock,
        api_key: str | None = None,
        seed: int = 0,
        **settings: Any,
    ) -> tuple[FakeProvider, Client]:
        fake = FakeProvider(
            settings=FakeSettings(**{**BASE_SETTINGS, **settings}),
            api_key=api_key,
            seed=seed,
            clock=clock,
        )
        await fake.start()
        fakes.append(fake)
        return fake, Client(http, fake)

    yield start
    for fake in fakes:
        await fake.close()


def finish(clock: ManualClock, fake: FakeProvider, task_id: str, *, extra: float = 0.0) -> None:
    """Advance the manual clock to the task's finish (plus ``extra`` seconds)."""
    clock.advance(max(0.0, fake.task(task_id).finished_at + extra - clock()))
