"""Result downloads: file names, temp+rename, skipping, retries, and no key to the CDN."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
from aiohttp import web

import midvary
from midvary._download import file_name
from midvary.testing import PNG_SIGNATURE

from .conftest import FAST_RETRY
from .fanout_support import fake_session, requests


def leftovers(directory: Path) -> list[Path]:
    """Temporary files left in ``directory``."""
    return [p for p in directory.iterdir() if p.name.startswith(".")]


def files(directory: Path) -> list[Path]:
    """Everything in ``directory``."""
    return list(directory.iterdir())


async def test_download_writes_every_image_without_the_key(tmp_path: Path) -> None:
    """Each image lands at <task_id>_<n>.png; the result host never sees the API key."""
    async with fake_session() as (fake, session):
        (outcome,) = await session.submit_all(requests(1))
        assert outcome.record is not None
        paths = await session.download(outcome.record, tmp_path / "out")
        headers = fake.result_request_headers
    assert [p.name for p in paths] == [f"{outcome.task_id}_{n}.png" for n in range(4)]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths)
    assert leftovers(tmp_path / "out") == []
    assert len(headers) == 4
    assert all("Authorization" not in h for h in headers)
    assert all(fake.api_key not in str(dict(h)) for h in headers)
    assert all(h["User-Agent"] == f"midvary/{midvary.__version__}" for h in headers)


async def test_complete_files_are_skipped(tmp_path: Path) -> None:
    """A second download of the same record sends no request and returns the same paths."""
    async with fake_session() as (fake, session):
        (outcome,) = await session.submit_all(requests(1))
        assert outcome.record is not None
        first = await session.download(outcome.record, tmp_path)
        sent = fake.stats.requests["results"]
        first[1].unlink()  # one image missing: only that one is fetched again
        second = await session.download(outcome.record, tmp_path)
        assert fake.stats.requests["results"] == sent + 1
    assert second == first
    assert all(p.is_file() for p in second)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
async def test_downloaded_files_get_the_umask_permissions(
    tmp_path: Path, umask: int, mode: int
) -> None:
    """A downloaded image gets 0o666 & ~umask, like any normally written file (not 0o600)."""
    previous = os.umask(umask)
    try:
        async with fake_session() as (_fake, session):
            (outcome,) = await session.submit_all(requests(1))
            assert outcome.record is not None
            paths = await session.download(outcome.record, tmp_path)
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode] * 4
    assert leftovers(tmp_path) == []


async def test_fanout_downloads_each_success(tmp_path: Path) -> None:
    """submit_all(download=...) fills outcome.paths for every succeeded job."""
    async with fake_session(images_per_task=2) as (_fake, session):
        outcomes = await session.submit_all(requests(5), download=tmp_path)
    assert all(len(o.paths) == 2 and all(p.is_file() for p in o.paths) for o in outcomes)
    assert len(files(tmp_path)) == 10


@contextlib.asynccontextmanager
async def cdn(handler: Callable[[web.Request], object]) -> AsyncIterator[str]:
    """A tiny result host on loopback; yields its base URL."""
    app = web.Application()
    app.router.add_get("/{name}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def record_with(*urls: str) -> midvary.TaskRecord:
    """A succeeded record whose images are ``urls``."""
    return midvary.TaskRecord(
        task_id="task-1", status=midvary.TaskStatus.SUCCESS, image_urls=tuple(urls)
    )


async def test_transient_failures_are_retried(tmp_path: Path) -> None:
    """503 and 429 answers are retried; the file appears once and complete."""
    answers = [503, 429, 200]
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        status = answers[len(seen)]
        seen.append(status)
        if status != 200:
            return web.Response(status=status, text="busy")
        return web.Response(body=b"JPEGDATA" * 1000, content_type="image/jpeg")

    async with (
        cdn(handler) as base,
        midvary.Session(api_key="sk-secret", retry=FAST_RETRY) as session,
    ):
        (path,) = await session.download(record_with(f"{base}/a.JPG?sig=1"), tmp_path)
    assert seen == [503, 429, 200]
    assert path.name == "task-1_0.jpg"
    assert path.read_bytes() == b"JPEGDATA" * 1000
    assert leftovers(tmp_path) == []


# Not 401/403/404/410: those ask the API for a fresh link (tests/test_download_fresh.py).
@pytest.mark.parametrize(("status", "attempts"), [(400, 1), (500, FAST_RETRY.attempts)])
async def test_http_errors_become_download_errors(
    tmp_path: Path, status: int, attempts: int
) -> None:
    """HTTP errors raise DownloadError (final ones at once) and leave no file behind."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(status=status)

    async with (
        cdn(handler) as base,
        midvary.Session(api_key="sk-secret", retry=FAST_RETRY) as session,
    ):
        with pytest.raises(midvary.DownloadError) as info:
            await session.download(record_with(f"{base}/img?token=SIGNED"), tmp_path)
    assert info.value.http_status == status
    assert "SIGNED" not in str(info.value)
    assert len(seen) == attempts
    assert files(tmp_path) == []


async def test_a_cut_body_is_a_transport_error_and_retried(tmp_path: Path) -> None:
    """A body shorter than its Content-Length is retried, then a TransportError; no file."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return response

    async with (
        cdn(handler) as base,
        midvary.Session(api_key="sk-secret", retry=FAST_RETRY) as session,
    ):
        with pytest.raises(midvary.TransportError):
            await session.download(record_with(f"{base}/x.png"), tmp_path)
    assert files(tmp_path) == []


async def test_no_images_means_no_download(tmp_path: Path) -> None:
    """A record without image URLs downloads nothing and creates nothing."""
    async with midvary.Session(api_key="k") as session:
        assert await session.download(record_with(), tmp_path / "none") == ()
    assert not (tmp_path / "none").exists()


async def test_bad_download_arguments(tmp_path: Path) -> None:
    """download() refuses a non-record, a non-path and a concurrency below 1."""
    async with midvary.Session(api_key="k") as session:
        with pytest.raises(TypeError):
            await session.download("task-1", tmp_path)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await session.download(record_with("http://h/x.png"), 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="concurrency"):
            await session.download(record_with("http://h/x.png"), tmp_path, concurrency=0)


def test_file_names_are_safe() -> None:
    """Task ids cannot escape the directory; odd suffixes fall back to .png."""
    unsafe = file_name("../../etc/x", 0, "http://h/a.webp")
    assert unsafe.startswith("_.._etc_x~")
    assert unsafe.endswith("_0.webp")
    assert "/" not in unsafe
    assert file_name("t", 2, "http://h/noext") == "t_2.png"
    assert file_name("t", 1, "http://h/a.this-is-not-an-ext") == "t_1.png"


def test_file_names_are_readable_collision_free_and_bounded() -> None:
    """A normal id is kept; ids that had to change get a hash; no name is too long."""
    url = "http://h/a.png"
    assert file_name("task-1.A_b", 3, url) == "task-1.A_b_3.png"
    names = {file_name(task_id, 0, url) for task_id in ("x/y", "x_y", "x y", "x\\y", ".x_y")}
    assert len(names) == 5
    assert "x_y_0.png" in names
    long = file_name("a" * 300, 0, url)
    assert len(long) < 150
    assert long != file_name("a" * 301, 0, url)
    assert long.startswith("a" * 100 + "~")


async def test_records_whose_ids_sanitise_alike_get_their_own_files(tmp_path: Path) -> None:
    """Records x/y, x_y and a 300-character id are each downloaded, none skipped or refused."""
    async with fake_session() as (fake, session):
        (outcome,) = await session.submit_all(requests(1))
        assert outcome.record is not None
        got: list[Path] = []
        for task_id in ("x/y", "x_y", "t" * 300):
            before = fake.stats.requests["results"]
            record = attrs.evolve(outcome.record, task_id=task_id)
            got += await session.download(record, tmp_path)
            assert fake.stats.requests["results"] == before + 4
    assert len(set(got)) == 12
    assert sorted(got) == sorted(files(tmp_path))
