"""Every read is bounded: a hostile provider (an aiohttp app of this suite) cannot harm.

It cannot grow memory or fill a disk through midvary, nor make it fetch anything but http(s)
result files. API answers are capped (an envelope is a few KiB), a result file's size is capped
(``Session(max_download_bytes=...)``, the ``Content-Length`` checked first), a record with
absurdly many result URLs is refused, and a result URL that is not http(s) is refused at
once, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import midvary
from midvary._transport import MAX_ANSWER_BYTES

from .conftest import FAST_POLL, FAST_RETRY

KEY = "sk-BOUNDED-TEST-KEY"
CHUNK = b"x" * 65536
BIG = 2 * 1024 * 1024


def envelope(data: Any, padding: int = 0) -> bytes:
    """A success envelope around ``data``, with ``padding`` bytes of an unknown field."""
    return json.dumps({"code": 200, "msg": "success", "data": data, "pad": "x" * padding}).encode()


def success(task_id: str, urls: list[str]) -> dict[str, Any]:
    """A succeeded vary record listing ``urls``."""
    info = {"resultUrls": [{"resultUrl": url} for url in urls]}
    return {"taskId": task_id, "successFlag": 1, "resultInfoJson": info, "paramJson": "{}"}


class Hostile:
    """Answers chosen per test: ``record`` is what record-info sends, ``submit`` the POST's."""

    def __init__(self) -> None:
        self.url = ""
        self.record: str = "plain"
        self.urls: list[str] = []
        self.requests: dict[str, int] = {}

    def _count(self, request: web.Request) -> None:
        self.requests[request.path] = self.requests.get(request.path, 0) + 1

    async def submit(self, request: web.Request) -> web.Response:
        """An acceptance (task t-1) padded past the answer limit."""
        self._count(request)
        return web.Response(
            body=envelope({"taskId": "t-1"}, MAX_ANSWER_BYTES), content_type="application/json"
        )

    async def record_info(self, request: web.Request) -> web.StreamResponse:
        """The record of ``request``'s task, as hostile as ``self.record`` says."""
        self._count(request)
        task_id = request.query["taskId"]
        if self.record == "big":
            body = envelope(success(task_id, []), MAX_ANSWER_BYTES)
            return web.Response(body=body, content_type="application/json")
        if self.record in ("endless", "declared"):
            response = web.StreamResponse()
            if self.record == "declared":
                response.content_length = 200 * 1024 * 1024
            await response.prepare(request)
            await response.write(b'{"code": 200, "data": {"pad": "')
            while self.record == "endless":
                await response.write(CHUNK)
            # Never finishes: the handler is cancelled when the client hangs up.
            await asyncio.get_running_loop().create_future()
            return response
        return web.Response(body=envelope(success(task_id, self.urls)))

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A result file: 1 KiB, or 2 MiB with a Content-Length, or 2 MiB chunked."""
        self._count(request)
        if request.path == "/small.png":
            return web.Response(body=b"s" * 1024, content_type="image/png")
        response = web.StreamResponse()
        if request.path == "/declared.png":
            response.content_length = BIG
        await response.prepare(request)
        for _ in range(BIG // len(CHUNK)):
            await response.write(CHUNK)
        return response

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Hostile]:
        """Serve on a free loopback port until the block ends."""
        app = web.Application()
        app.router.add_post("/api/v1/mj/generateVary", self.submit)
        app.router.add_get("/api/v1/mj/record-info", self.record_info)
        app.router.add_get("/{name}.png", self.file)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site.port}"
        try:
            yield self
        finally:
            await runner.cleanup()


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    """A hostile provider on loopback."""
    async with Hostile().serving() as server:
        yield server


def session_for(hostile: Hostile, **options: Any) -> midvary.Session:
    """A session against ``hostile`` that gives up quickly."""
    options = {"retry": FAST_RETRY, "poll": FAST_POLL, "request_timeout": 10.0, **options}
    return midvary.Session(api_key=KEY, base_url=hostile.url, **options)


@pytest.mark.parametrize("kind", ["big", "endless", "declared"])
async def test_an_api_answer_over_the_limit_is_a_protocol_error(
    hostile: Hostile, kind: str
) -> None:
    """A 4 MiB+ record-info answer (whole, endless, or announced) is refused, read no further."""
    hostile.record = kind
    async with session_for(hostile) as session:
        with pytest.raises(midvary.ProtocolError, match=f"over {MAX_ANSWER_BYTES} bytes"):
            await session.get_task("t-1")


async def test_a_submission_answer_over_the_limit_leaves_it_uncertain(hostile: Hostile) -> None:
    """An oversized answer to a POST is not read: the submission is uncertain, not re-sent."""
    async with session_for(hostile) as session:
        with pytest.raises(midvary.SubmitUncertainError) as info:
            await session.vary("parent-1", 0, key="k/0")
        assert isinstance(info.value.__cause__, midvary.ProtocolError)
        with pytest.raises(midvary.SubmitUncertainError):
            await session.vary("parent-1", 0, key="k/0")
    assert hostile.requests["/api/v1/mj/generateVary"] == 1


async def test_a_record_with_absurdly_many_urls_is_refused(hostile: Hostile) -> None:
    """10,000 result URLs for one task is a ProtocolError, not 10,000 files."""
    hostile.urls = [f"{hostile.url}/small.png?n={n}" for n in range(10_000)]
    async with session_for(hostile) as session:
        with pytest.raises(midvary.ProtocolError, match="10000 result URLs"):
            await session.get_task("t-1")
    assert "/small.png" not in hostile.requests


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "javascript:alert(1)", "//x/a.png"]
)
async def test_a_result_url_that_is_not_http_is_refused_at_once(
    hostile: Hostile, tmp_path: Path, url: str
) -> None:
    """A file:, ftp: or javascript: result URL is a DownloadError, nothing fetched or written."""
    hostile.urls = [f"{hostile.url}/small.png", url]
    async with session_for(hostile) as session:
        record = await session.get_task("t-1")
        with pytest.raises(midvary.DownloadError, match="http:// or https://") as info:
            await session.download(record, tmp_path)
    assert info.value.http_status is None
    assert not info.value.transient
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    assert "/small.png" not in hostile.requests


async def test_a_result_file_over_the_limit_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    """Over max_download_bytes (announced or not): DownloadError, once, and no file left."""
    hostile.urls = [f"{hostile.url}/declared.png", f"{hostile.url}/chunked.png"]
    async with session_for(hostile, max_download_bytes=1024 * 1024) as session:
        record = await session.get_task("t-1")
        with pytest.raises(midvary.DownloadError, match="over the 1048576-byte limit") as info:
            await session.download(record, tmp_path / "big")
        assert not info.value.transient
        hostile.urls = [f"{hostile.url}/small.png"]
        small = await session.download(await session.get_task("t-1"), tmp_path / "small")
        with pytest.raises(midvary.DownloadError, match="over the 512-byte limit"):
            await session.download(await session.get_task("t-1"), tmp_path / "c", max_bytes=512)
        unbounded = await session.download(record, tmp_path / "all", max_bytes=None)
    assert [path.stat().st_size for path in unbounded] == [BIG, BIG]
    assert [path.stat().st_size for path in small] == [1024]
    assert await asyncio.to_thread(os.listdir, tmp_path / "big") == []
    # Each refused once (never retried), then fetched once more without a limit.
    assert hostile.requests["/declared.png"] == hostile.requests["/chunked.png"] == 2


def test_max_download_bytes_is_checked() -> None:
    """max_download_bytes must be an int >= 1 or None, before anything is sent."""
    with pytest.raises(ValueError, match="max_download_bytes"):
        midvary.Session(api_key=KEY, max_download_bytes=0)
    with pytest.raises(TypeError, match="max_download_bytes"):
        midvary.Session(api_key=KEY, max_download_bytes=1.5)  # type: ignore[arg-type]
    assert midvary.Session(api_key=KEY, max_download_bytes=None)
