"""Session configuration, ownership of the HTTP session, lifecycle and secrets."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

import midvary
from midvary.testing import FakeProvider

from .conftest import FAST_POLL, FAST_RETRY
from .mockapi import BASE, KEY, VARY_URL, MockAPI, record, record_url


async def test_key_from_environment(monkeypatch: pytest.MonkeyPatch, api: MockAPI) -> None:
    """api_key=None reads MIDVARY_API_KEY, falling back to KIE_API_KEY."""
    monkeypatch.delenv("MIDVARY_API_KEY", raising=False)
    monkeypatch.setenv("KIE_API_KEY", "kie-key")
    sent: list[str] = []
    for key in ("kie-key", "midvary-key"):
        if key == "midvary-key":
            monkeypatch.setenv("MIDVARY_API_KEY", key)
        api.envelope("POST", VARY_URL, data={"taskId": "new-1"})
        async with midvary.Session(base_url=BASE, retry=FAST_RETRY) as session:
            await session.vary("parent-1", 0)
        sent.append(api.calls("POST", VARY_URL)[-1].kwargs["headers"]["Authorization"])
    assert sent == ["Bearer kie-key", "Bearer midvary-key"]


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key anywhere fails at construction and names both variables."""
    monkeypatch.delenv("MIDVARY_API_KEY", raising=False)
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="MIDVARY_API_KEY") as info:
        midvary.Session()
    assert "KIE_API_KEY" in str(info.value)


def test_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """base_url=None reads MIDVARY_BASE_URL, else the kie.ai default; trailing slash dropped."""
    monkeypatch.delenv("MIDVARY_BASE_URL", raising=False)
    assert midvary.Session(api_key="k").base_url == "https://api.kie.ai"
    monkeypatch.setenv("MIDVARY_BASE_URL", "https://api.midapi.ai/")
    assert midvary.Session(api_key="k").base_url == "https://api.midapi.ai"


async def test_injected_http_session_is_used_and_not_closed(api: MockAPI) -> None:
    """A borrowed aiohttp session is used for requests and left open on close."""
    api.envelope("GET", record_url("t1"), data=record(flag=1))
    async with aiohttp.ClientSession() as http:
        async with midvary.Session(api_key=KEY, base_url=BASE, http_session=http) as session:
            await session.get_task("t1")
        assert not http.closed
        assert session.closed
    assert len(api.calls("GET", record_url("t1"))) == 1


async def test_closed_session_cannot_reopen(api: MockAPI) -> None:
    """Entering a closed session again raises SessionClosedError."""
    session = midvary.Session(api_key=KEY, base_url=BASE)
    async with session:
        pass
    with pytest.raises(midvary.SessionClosedError, match="cannot be reopened"):
        async with session:
            pass
    await session.aclose()  # closing twice is harmless


async def test_session_works_without_context_manager(api: MockAPI) -> None:
    """A session used without `async with` opens lazily and closes with aclose()."""
    api.envelope("GET", record_url("t1"), data=record(flag=1))
    session = midvary.Session(api_key=KEY, base_url=BASE)
    try:
        assert (await session.get_task("t1")).status is midvary.TaskStatus.SUCCESS
    finally:
        await session.aclose()


async def test_key_never_appears_in_reprs_messages_or_logs(
    api: MockAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """The key is absent from reprs, str() and messages of errors, and DEBUG logs."""
    caplog.set_level(logging.DEBUG, logger="midvary")
    api.envelope("POST", VARY_URL, 401, msg=f"invalid key {KEY}")  # a body that echoes the key
    api.add(VARY_URL, "POST", status=502, body=f"<html>{KEY}</html>")
    api.envelope("POST", VARY_URL, data={"taskId": "t1"})
    api.envelope("GET", record_url("t1"), data=record(flag=3))
    seen: list[str] = []
    async with midvary.Session(
        api_key=KEY, base_url=BASE, poll=FAST_POLL, retry=FAST_RETRY
    ) as session:
        seen += [repr(session), str(session)]
        for _ in range(2):
            with pytest.raises(midvary.MidvaryError) as info:
                await session.vary("parent-1", 0)
            seen += [str(info.value), repr(info.value), str(info.value.__cause__)]
        handle = await session.vary("parent-1", 0)
        with pytest.raises(midvary.TaskFailedError) as failed:
            await handle
        seen += [repr(handle), str(failed.value), repr(failed.value.record)]
        seen += [repr(session._core), repr(session._core.open())]
    seen += [r.getMessage() for r in caplog.records]
    assert caplog.records, "DEBUG logging produced no lines to check"
    for text in seen:
        assert KEY not in text
        assert "RECOGNISABLE" not in text


async def test_key_is_not_in_the_aiohttp_error_chained_to_a_malformed_answer() -> None:
    """An answer aiohttp cannot parse: its chained error's request_info does not hold the key."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with midvary.Session(api_key=KEY, base_url=base_url, retry=FAST_RETRY) as session:
            with pytest.raises(midvary.TransportError) as info:
                await session.get_task("t1")
    finally:
        server.close()
        await server.wait_closed()
    cause = info.value.__cause__
    assert isinstance(cause, aiohttp.ClientResponseError)
    assert cause.request_info.url.path == "/api/v1/mj/record-info"  # the rest is kept
    assert KEY not in repr(cause)
    assert KEY not in repr(cause.request_info.headers)
    assert KEY not in repr(cause.args)


async def test_run_submits_and_waits_in_one_call(
    midvary_session: midvary.Session, fake_provider: FakeProvider
) -> None:
    """run() returns the final record of the task it submitted; a failed task raises."""
    record = await midvary_session.run(midvary.GenerateRequest(prompt="a red fox"))
    assert record.status is midvary.TaskStatus.SUCCESS
    assert fake_provider.stats.tasks_created == 1
    fake_provider.update(failure_rate=1.0, create_failure_share=0.0)
    with pytest.raises(midvary.TaskFailedError) as failed:
        await midvary_session.run(
            midvary.VaryRequest(task_id=record.task_id, image_index=1), timeout=10.0
        )
    assert failed.value.record.status is midvary.TaskStatus.GENERATE_FAILED


def test_a_status_prints_as_a_person_reads_it() -> None:
    """str(TaskStatus.X) is a lower-case phrase, not the enum's repr."""
    assert str(midvary.TaskStatus.SUCCESS) == "success"
    assert f"{midvary.TaskStatus.GENERATE_FAILED}" == "generate failed"
