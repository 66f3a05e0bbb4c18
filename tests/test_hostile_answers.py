"""A hostile provider: once a submission may have left, whatever goes wrong leaves it uncertain.

Only an answer positively read as a refusal (or a request that never left) releases a key;
a body that cannot be decoded is a :class:`midvary.ProtocolError`, never a raw exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import midvary

from .conditions import until
from .conftest import FAST_POLL, FAST_RETRY

KEY = "sk-HOSTILE-TEST-KEY"

#: Answers with HTTP 200 that no JSON decoder turns into an envelope.
HOSTILE_BODIES = {
    "deep-array": b"[" * 100_000,
    "deep-object": b'{"code": 200, "data": ' + b'{"a": ' * 100_000,
    "deep-closed": b"[" * 50_000 + b"]" * 50_000,
    "invalid-utf8": b'{"code": 200, "msg": "\xff\xfe", "data": {"taskId": "t-1"}}',
    "nan-code": b'{"code": NaN, "data": {"taskId": "t-1"}}',
    "huge-number": b'{"code": 200, "data": {"taskId": ' + b"9" * 5_000 + b"}}",
    "truncated": b'{"code": 200, "data": {"taskId": "t-',
}


class Hostile:
    """A provider on loopback that answers every request with one body, counting the POSTs."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.posts = 0
        self.gets = 0
        self.url = ""

    async def _post(self, _request: web.Request) -> web.Response:
        self.posts += 1
        return web.Response(body=self.body, content_type="application/json")

    async def _get(self, _request: web.Request) -> web.Response:
        self.gets += 1
        return web.Response(body=self.body, content_type="application/json")

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Hostile]:
        """Serve on a free loopback port until the block ends."""
        app = web.Application()
        app.router.add_post("/api/v1/mj/generateVary", self._post)
        app.router.add_get("/api/v1/mj/record-info", self._get)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_an_undecodable_answer_leaves_a_keyed_submission_uncertain(
    body: bytes, tmp_path: Path
) -> None:
    """An answer that cannot be decoded: uncertain, listed unfinished, never sent again."""
    async with (
        Hostile(body).serving() as hostile,
        midvary.SQLiteStore(tmp_path / "keys.sqlite") as store,
        midvary.Session(
            api_key=KEY, base_url=hostile.url, retry=FAST_RETRY, poll=FAST_POLL, store=store
        ) as session,
    ):
        with pytest.raises(midvary.SubmitUncertainError) as caught:
            await session.vary("parent-1", 0, key="order-42/0")
        assert isinstance(caught.value.__cause__, midvary.ProtocolError)
        (job,) = await store.unfinished()
        assert (job.key, job.state) == ("order-42/0", "uncertain")
        with pytest.raises(midvary.SubmitUncertainError, match="order-42/0"):
            await session.vary("parent-1", 0, key="order-42/0")
    assert hostile.posts == 1


async def test_an_undecodable_answer_in_a_fan_out_is_uncertain_not_failed() -> None:
    """In a fan-out, each job whose answer cannot be decoded is uncertain, sent once."""
    async with (
        Hostile(HOSTILE_BODIES["deep-array"]).serving() as hostile,
        midvary.Session(
            api_key=KEY, base_url=hostile.url, retry=FAST_RETRY, poll=FAST_POLL
        ) as session,
    ):
        requests = [midvary.VaryRequest(task_id="parent-1", image_index=i) for i in range(3)]
        outcomes = [outcome async for outcome in session.submit_many(requests)]
    assert [outcome.uncertain for outcome in outcomes] == [True, True, True]
    assert hostile.posts == 3


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_an_undecodable_record_is_a_protocol_error_and_polls_retry_it(body: bytes) -> None:
    """A record that cannot be decoded: ProtocolError for a lookup, retried by a wait."""
    async with (
        Hostile(body).serving() as hostile,
        midvary.Session(
            api_key=KEY, base_url=hostile.url, retry=FAST_RETRY, poll=FAST_POLL
        ) as session,
    ):
        with pytest.raises(midvary.ProtocolError):
            await session.get_task("t-1")
        waiter = asyncio.create_task(session.task("t-1").wait(timeout=30))
        # Polls answered the same record again and again: the wait retries, it does not fail.
        # (Counted, not timed: a wait of 0.5 s saw too few polls on a loaded machine.)
        await until(lambda: hostile.gets > 4)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


# -- the rule, whatever the failure --------------------------------------------------------

#: Exceptions a read of the answer might raise: library errors, interpreter limits, bugs.
FAILURES: list[type[BaseException]] = [
    RecursionError,
    MemoryError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    RuntimeError,
    ZeroDivisionError,
    ConnectionResetError,
    aiohttp.ClientPayloadError,
    asyncio.CancelledError,
]


class FailingRead(aiohttp.ClientResponse):
    """A response whose body cannot be read: the POST has left, its answer is lost."""

    failure: type[BaseException] = RuntimeError

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        """Start as usual; then every read of the body (whole or bounded) fails."""
        response = await super().start(connection)
        self.content.set_exception(self.failure("injected while reading the answer"))
        return response


async def submit_with_failing_read(
    failure: type[BaseException], path: Path
) -> tuple[BaseException, int, list[Any]]:
    """Submit a keyed vary whose answer's read raises ``failure``, then submit it again.

    Returns the first error, the POSTs the provider saw and the store's unfinished jobs.
    """
    response_class = type("Failing", (FailingRead,), {"failure": failure})
    async with (
        Hostile(b'{"code": 200, "data": {"taskId": "t-1"}}').serving() as hostile,
        midvary.SQLiteStore(path) as store,
        aiohttp.ClientSession(response_class=response_class) as http,
        midvary.Session(
            api_key=KEY,
            base_url=hostile.url,
            retry=FAST_RETRY,
            poll=FAST_POLL,
            store=store,
            http_session=http,
        ) as session,
    ):
        submission = asyncio.ensure_future(session.vary("parent-1", 0, key="k/0"))
        try:
            await submission
        except BaseException as exc:  # what it raised is the finding
            first: BaseException = exc
        else:
            pytest.fail("the submission succeeded although its answer could not be read")
        with pytest.raises(midvary.SubmitUncertainError):
            await session.vary("parent-1", 0, key="k/0")
        unfinished = list(await store.unfinished())
    return first, hostile.posts, unfinished


@contextlib.contextmanager
def tempfile_path() -> Iterator[Path]:
    """A fresh store path per example (hypothesis runs many examples in one test call)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "keys.sqlite"


@settings(
    max_examples=len(FAILURES) * 2, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(failure=st.sampled_from(FAILURES))
def test_no_failure_after_sending_releases_the_key(failure: type[BaseException]) -> None:
    """Whatever is raised once the POST left, the key stays uncertain and nothing is re-sent."""
    with tempfile_path() as path:
        first, posts, unfinished = asyncio.run(submit_with_failing_read(failure, path))
    if issubclass(failure, Exception):
        assert isinstance(first, midvary.SubmitUncertainError), repr(first)
    else:
        assert isinstance(first, failure)
    assert posts == 1
    assert [(job.key, job.state) for job in unfinished] == [("k/0", "uncertain")]
