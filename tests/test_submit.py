"""Submissions: envelope codes, retry rules, and the no-resubmit rule."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest

import midvary
from midvary._submit import Submitter

from .conftest import FAST_POLL, FAST_RETRY
from .mockapi import BASE, KEY, VARY_URL, MockAPI, record, record_url

FINAL_CODES = {
    400: midvary.BadRequestError,
    401: midvary.AuthenticationError,
    402: midvary.InsufficientCreditsError,
    404: midvary.NotFoundError,
    422: midvary.ValidationError,
    501: midvary.GenerationFailedError,
    505: midvary.FeatureDisabledError,
}


async def test_submit_returns_handle_with_task_id(session: midvary.Session, api: MockAPI) -> None:
    """An accepted submission yields a handle named by the new task id."""
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    handle = await session.vary("parent-1", 2, water_mark="wm", callback_url="https://cb.test/x")
    assert handle.task_id == "new-1"
    assert handle.request == midvary.VaryRequest(
        task_id="parent-1", image_index=2, water_mark="wm", callback_url="https://cb.test/x"
    )
    (call,) = api.calls("POST", VARY_URL)
    assert call.kwargs["json"] == {
        "taskId": "parent-1",
        "imageIndex": 2,
        "waterMark": "wm",
        "callBackUrl": "https://cb.test/x",
    }


async def test_optional_fields_are_left_out(session: midvary.Session, api: MockAPI) -> None:
    """None water_mark and callback_url are not sent at all."""
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    await session.vary("parent-1", 0)
    (call,) = api.calls("POST", VARY_URL)
    assert call.kwargs["json"] == {"taskId": "parent-1", "imageIndex": 0}


async def test_index_base_shifts_only_the_wire_value(api: MockAPI) -> None:
    """index_base=1 sends image_index + 1 while the public index stays 0-based."""
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    async with midvary.Session(api_key=KEY, base_url=BASE, index_base=1, retry=FAST_RETRY) as s:
        handle = await s.vary("parent-1", 3)
    (call,) = api.calls("POST", VARY_URL)
    assert call.kwargs["json"]["imageIndex"] == 4
    assert handle.request is not None
    assert handle.request.image_index == 3


async def test_headers_carry_key_and_user_agent(session: midvary.Session, api: MockAPI) -> None:
    """Every request sends the bearer key and an explicit midvary User-Agent."""
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    await session.vary("parent-1", 0)
    (call,) = api.calls("POST", VARY_URL)
    headers = call.kwargs["headers"]
    assert headers["Authorization"].startswith("Bearer sk-RECOGNISABLE")
    assert headers["User-Agent"] == f"midvary/{midvary.__version__}"
    assert call.kwargs["allow_redirects"] is False


@pytest.mark.parametrize(("code", "cls"), sorted(FINAL_CODES.items()))
@pytest.mark.parametrize("mirrored", [False, True], ids=["in-200", "mirrored"])
async def test_final_codes_raise_at_once(
    session: midvary.Session, api: MockAPI, code: int, cls: type[Exception], mirrored: bool
) -> None:
    """Final envelope codes raise their class after exactly one POST, in 200 or mirrored."""
    api.envelope("POST", VARY_URL, code, msg="nope", status=code if mirrored else 200, repeat=True)
    with pytest.raises(cls) as info:
        await session.vary("parent-1", 0)
    assert info.value.code == code  # type: ignore[attr-defined]
    assert info.value.message == "nope"  # type: ignore[attr-defined]
    assert len(api.calls("POST", VARY_URL)) == 1


async def test_unknown_code_is_plain_api_error(session: midvary.Session, api: MockAPI) -> None:
    """A code outside the table becomes a plain APIError carrying the code."""
    api.envelope("POST", VARY_URL, 418, msg="teapot")
    with pytest.raises(midvary.APIError) as info:
        await session.vary("parent-1", 0)
    assert type(info.value) is midvary.APIError
    assert info.value.code == 418


@pytest.mark.parametrize(
    ("code", "cls"), [(429, midvary.RateLimitError), (455, midvary.ServiceUnavailableError)]
)
@pytest.mark.parametrize("mirrored", [False, True], ids=["in-200", "mirrored"])
async def test_unaccepted_submissions_are_retried(
    session: midvary.Session, api: MockAPI, code: int, cls: type[Exception], mirrored: bool
) -> None:
    """429 and 455 mean 'not accepted': retried, and success follows."""
    api.envelope("POST", VARY_URL, code, msg="busy", status=code if mirrored else 200)
    api.envelope("POST", VARY_URL, code, msg="busy", status=code if mirrored else 200)
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    handle = await session.vary("parent-1", 0)
    assert handle.task_id == "new-1"
    assert len(api.calls("POST", VARY_URL)) == 3


async def test_rate_limit_gives_up_after_the_attempt_budget(
    session: midvary.Session, api: MockAPI
) -> None:
    """A 429 that never ends raises RateLimitError after RetryPolicy.attempts POSTs."""
    api.envelope("POST", VARY_URL, 429, msg="slow down", status=429, repeat=True)
    with pytest.raises(midvary.RateLimitError):
        await session.vary("parent-1", 0)
    assert len(api.calls("POST", VARY_URL)) == session.retry.attempts


async def test_retry_after_is_honoured(session: midvary.Session, api: MockAPI) -> None:
    """A Retry-After header makes the next attempt wait at least that long."""
    api.envelope("POST", VARY_URL, 429, status=429, headers={"Retry-After": "0.3"})
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await session.vary("parent-1", 0)
    assert loop.time() - started >= 0.3
    assert len(api.calls("POST", VARY_URL)) == 2


async def test_bare_429_without_envelope_is_rate_limit(
    session: midvary.Session, api: MockAPI
) -> None:
    """A CDN's bare HTTP 429 with an empty body still counts as rate limiting."""
    api.add(VARY_URL, "POST", status=429, body="")
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    assert (await session.vary("parent-1", 0)).task_id == "new-1"


async def test_connection_refused_is_retried(session: midvary.Session, api: MockAPI) -> None:
    """A connection that could not be opened was never sent, so it is retried."""
    key = aiohttp.client_reqrep.ConnectionKey("api.test", 443, True, True, None, None, None)
    api.add(VARY_URL, "POST", exception=aiohttp.ClientConnectorError(key, OSError(111, "refused")))
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    assert (await session.vary("parent-1", 0)).task_id == "new-1"
    assert len(api.calls("POST", VARY_URL)) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"exception": aiohttp.ServerDisconnectedError()},
        {"exception": aiohttp.ClientOSError(104, "Connection reset by peer")},
        {"exception": TimeoutError()},
        {"status": 200, "body": '{"code": 500, "msg": "internal error", "data": null}'},
        {"status": 500, "body": '{"code": 500, "msg": "internal error", "data": null}'},
        {"status": 502, "body": "<html><body>502 Bad Gateway</body></html>"},
        {"status": 200, "body": ""},
        {"status": 200, "body": '{"code": 200, "msg": "succ'},
        {"status": 200, "body": '{"code": 200, "msg": "success", "data": {}}'},
    ],
    ids=[
        "disconnect",
        "reset",
        "timeout",
        "500-in-200",
        "500",
        "html-502",
        "empty",
        "truncated",
        "no-id",
    ],
)
async def test_lost_answer_is_uncertain_and_never_resent(
    session: midvary.Session, api: MockAPI, answer: dict[str, object]
) -> None:
    """An answer lost after sending raises SubmitUncertainError after exactly one POST."""
    api.add(VARY_URL, "POST", repeat=True, **answer)  # type: ignore[arg-type]
    with pytest.raises(midvary.SubmitUncertainError) as info:
        await session.vary("parent-1", 1)
    assert len(api.calls("POST", VARY_URL)) == 1
    error = info.value
    assert error.request == midvary.VaryRequest(task_id="parent-1", image_index=1)
    assert "may have been accepted and billed" in str(error)
    assert isinstance(error, midvary.TransportError)
    assert error.__cause__ is not None


async def test_submit_after_close_is_a_clear_error(session: midvary.Session, api: MockAPI) -> None:
    """A closed session refuses to submit and sends nothing."""
    await session.aclose()
    with pytest.raises(midvary.SessionClosedError):
        await session.vary("parent-1", 0)
    assert api.count() == 0


class _StopError(Exception):
    """Raised by an on_event hook to end a job at its first limiter wait."""


def _limited_session() -> midvary.Session:
    """A session that allows one submission a minute and never retries one."""
    return midvary.Session(
        api_key=KEY,
        base_url=BASE,
        poll=FAST_POLL,
        retry=attrs.evolve(FAST_RETRY, attempts=1, outage_budget=0.0),
        submit_rate=(1, 60.0),
    )


REFUSALS = {
    "429": {"code": 429},
    "455": {"code": 455},
    "never-sent": None,
}


@pytest.mark.parametrize("refusal", list(REFUSALS), ids=list(REFUSALS))
async def test_unaccepted_posts_give_their_limiter_slot_back(api: MockAPI, refusal: str) -> None:
    """A POST certainly not accepted (429, 455, never sent) leaves the window's budget whole."""
    answer = REFUSALS[refusal]
    if answer is None:
        key = aiohttp.client_reqrep.ConnectionKey("api.test", 443, True, True, None, None, None)
        api.add(VARY_URL, "POST", exception=aiohttp.ClientConnectorError(key, OSError(111, "x")))
    else:
        api.envelope("POST", VARY_URL, code=answer["code"], msg="refused")
    api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
    api.envelope("GET", record_url("new-1"), data=record("new-1", flag=1))
    kinds: list[midvary.JobEventKind] = []
    async with _limited_session() as session:
        with pytest.raises(midvary.MidvaryError) as refused:
            await session.vary("parent-1", 0)
        assert not isinstance(refused.value, midvary.SubmitUncertainError)
        (outcome,) = await session.submit_all(
            [midvary.VaryRequest(task_id="parent-1", image_index=1)],
            on_event=lambda event: kinds.append(event.kind),
        )
    assert outcome.ok
    assert outcome.task_id == "new-1"
    assert midvary.JobEventKind.RATE_LIMITED not in kinds


async def test_uncertain_posts_keep_their_limiter_slot(api: MockAPI) -> None:
    """A POST whose answer was lost may have been accepted: its slot stays counted."""
    api.envelope("POST", VARY_URL, code=500, msg="boom")
    waits: list[float | None] = []

    def stop_at_first_wait(event: midvary.JobEvent) -> None:
        if event.kind is midvary.JobEventKind.RATE_LIMITED:
            waits.append(event.wait)
            raise _StopError

    async with _limited_session() as session:
        with pytest.raises(midvary.SubmitUncertainError):
            await session.vary("parent-1", 0)
        (outcome,) = await session.submit_all(
            [midvary.VaryRequest(task_id="parent-1", image_index=1)], on_event=stop_at_first_wait
        )
    assert isinstance(outcome.error, _StopError)
    (wait, *_rest) = waits
    assert wait is not None
    assert wait > 30.0
    assert len(api.calls("POST", VARY_URL)) == 1


class _ToyStore:
    """A SubmitStore that records what the submitter tells it (the seam of a shared store)."""

    def __init__(self, known: str | None = None) -> None:
        self.known = known
        self.log: list[str] = []
        self.known_uncertain = False
        self.takes_slot = False

    @contextlib.asynccontextmanager
    async def claim(
        self, key: str, *, fingerprint: str, request: object
    ) -> AsyncIterator[_ToyStore]:
        # The stored request comes as its canonical JSON text (dumped once, by identity()).
        assert isinstance(request, str)
        assert json.loads(request) == {
            "path": "/api/v1/mj/generateVary",
            "body": {"taskId": "parent-1", "imageIndex": 0},
        }
        assert len(fingerprint) == 32
        self.log.append(f"claim {key}")
        try:
            yield self
        finally:
            self.log.append("leave")

    @property
    def task_id(self) -> str | None:
        return self.known

    async def before_post(self, on_wait: object = None) -> None:
        self.log.append("sending")

    async def retrying(self) -> None:
        self.log.append("retrying")

    async def accepted(self, task_id: str) -> bool:
        self.log.append(f"accepted {task_id}")
        return True

    async def refused(self) -> None:
        self.log.append("refused")

    async def uncertain(self) -> None:
        self.log.append("uncertain")


@pytest.mark.parametrize(
    ("answer", "known", "log", "posts"),
    [
        ({"data": {"taskId": "new-1"}}, None, ["claim k", "sending", "accepted new-1", "leave"], 1),
        ({"code": 402}, None, ["claim k", "sending", "refused", "leave"], 1),
        ({"code": 500}, None, ["claim k", "sending", "uncertain", "leave"], 1),
        (None, "old-7", ["claim k", "leave"], 0),
    ],
    ids=["accepted", "refused", "uncertain", "known-key"],
)
async def test_a_store_claims_before_the_post_and_hears_the_verdict(
    session: midvary.Session,
    api: MockAPI,
    answer: dict[str, Any] | None,
    known: str | None,
    log: list[str],
    posts: int,
) -> None:
    """The submitter claims the key first, then records the task id, or releases a refusal."""
    if answer is not None:
        api.envelope("POST", VARY_URL, **answer)
    store = _ToyStore(known)
    submitter = Submitter(session._core, limiter=None, tickets=None, store=store)
    request = midvary.VaryRequest(task_id="parent-1", image_index=0, key="k")
    try:
        handle = await submitter.submit(request)
    except midvary.MidvaryError:
        pass
    else:
        assert handle.task_id == (known or "new-1")
    assert store.log == log
    assert len(api.calls("POST", VARY_URL)) == posts
