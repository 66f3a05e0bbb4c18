"""The provider object: lifecycle, settings validation, runtime changes, images, public names."""

from __future__ import annotations

import asyncio
import inspect
import struct
import zlib
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

import midvary.testing
from midvary.testing import (
    PNG_SIGNATURE,
    FakeProvider,
    FakeSettings,
    ManualClock,
)
from midvary.testing._images import png_bytes

from .conftest import Client


async def test_close_leaves_nothing_pending(http: aiohttp.ClientSession) -> None:
    """close() cancels the scheduler and deliveries, closes sessions; only our task is left."""
    before = asyncio.all_tasks()
    clock = ManualClock()
    fake = FakeProvider(
        settings=FakeSettings(task_duration=(1.0, 1.0), submit_limit=None), clock=clock
    )
    async with fake:
        client = Client(http, fake)
        for _ in range(3):
            await client.submit_ok(callBackUrl="http://127.0.0.1:9/hook")
        assert fake.pending_callbacks == 3
        clock.advance(0.5)
    assert asyncio.all_tasks() == before
    await fake.close()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.submit()


async def test_close_with_deliveries_in_flight(http: aiohttp.ClientSession) -> None:
    """Closing while callbacks are being delivered cancels them cleanly."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_hook(_request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", slow_hook)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    clock = ManualClock()
    try:
        async with FakeProvider(settings=FakeSettings(submit_limit=None), clock=clock) as fake:
            task_id = await Client(http, fake).submit_ok(callBackUrl=hook)
            clock.advance(fake.task(task_id).finished_at - clock())
            async with asyncio.timeout(5):
                await arrived.wait()
            assert fake.pending_callbacks == 1  # in flight
    finally:
        release.set()
        await runner.cleanup()
    assert fake.pending_callbacks == 0


async def test_start_and_urls() -> None:
    """Before start the URLs are an error; start() twice is an error; URLs have no slash."""
    fake = FakeProvider(api_key="given")
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.base_url
    await fake.start()
    try:
        assert fake.base_url.startswith("http://127.0.0.1:")
        assert not fake.base_url.endswith("/")
        assert fake.results_base_url.startswith("http://127.0.0.1:")
        assert fake.results_base_url != fake.base_url
        assert fake.api_key == "given"
        assert "given" not in repr(fake)
        with pytest.raises(RuntimeError):
            await fake.start()
    finally:
        await fake.close()
    with pytest.raises(RuntimeError):
        await fake.start()


def test_generated_keys_look_fake() -> None:
    """Without api_key the fake makes a fresh fake-... key."""
    first, second = FakeProvider(), FakeProvider()
    assert first.api_key.startswith("fake-")
    assert first.api_key != second.api_key


BAD_SETTINGS: list[dict[str, Any]] = [
    {"task_duration": (2.0, 1.0)},
    {"task_duration": (-1.0, 1.0)},
    {"task_duration": (1.0,)},
    {"failure_rate": 1.5},
    {"failure_rate": "0.1"},
    {"create_failure_share": -0.1},
    {"images_per_task": 0},
    {"images_per_task": 5},
    {"invisible_for": -1},
    {"not_found_style": 404},
    {"time_format": "rfc2822"},
    {"index_base": 2},
    {"index_base": True},
    {"parent_prefix": ""},
    {"submit_limit": (0, 10.0)},
    {"submit_limit": (20, 0)},
    {"submit_limit": (True, 10.0)},
    {"credits": -1},
    {"maintenance": [(5.0, 1.0)]},
    {"latency": -0.1},
    {"fault_rate": 2},
    {"fault_kinds": ["bogus"]},
    {"fault_kinds": [], "fault_rate": 0.5},
    {"fault_endpoints": ["generateVary"]},
    {"drop_submit_answer_rate": 1.1},
    {"callback_hmac_key": ""},
    {"callback_duplicates": 0},
    {"callback_timeout": 0},
    {"callback_retry_delays": [-1.0]},
    {"mirror_http_status": 1},
]


@pytest.mark.parametrize("changes", BAD_SETTINGS, ids=[str(c) for c in BAD_SETTINGS])
def test_invalid_settings_are_refused(changes: dict[str, Any]) -> None:
    """FakeSettings validates every knob on construction."""
    with pytest.raises((ValueError, TypeError)):
        FakeSettings(**changes)


def test_settings_accept_json_shapes_and_hide_the_key() -> None:
    """Lists (as JSON sends them) become tuples/sets; the HMAC key is not in the repr."""
    settings = FakeSettings(
        task_duration=[0, 1],
        submit_limit=[3, 1],
        maintenance=[[1, 2]],
        latency=[0.1, 0.2],
        fault_kinds="reset",
        callback_hmac_key="hidden-key",
    )
    assert settings.task_duration == (0.0, 1.0)
    assert settings.submit_limit == (3, 1.0)
    assert settings.maintenance == ((1.0, 2.0),)
    assert settings.latency == (0.1, 0.2)
    assert settings.fault_kinds == {"reset"}
    assert "hidden-key" not in repr(settings)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.failure_rate = 0.5  # type: ignore[misc]


async def test_runtime_settings_changes() -> None:
    """update() and the settings setter swap the knobs; a non-FakeSettings is refused."""
    async with FakeProvider() as fake:
        new = fake.update(failure_rate=0.25, credits=3)
        assert fake.settings is new
        assert (new.failure_rate, fake.credits_left) == (0.25, 3)
        fake.settings = attrs.evolve(new, failure_rate=0.0)
        assert fake.credits_left == 3  # unchanged credits keep the balance
        with pytest.raises(TypeError):
            fake.settings = {"failure_rate": 0.1}  # type: ignore[assignment]
        with pytest.raises(ValueError, match="failure_rate"):
            fake.update(failure_rate=7)


def test_png_bytes_are_valid_pngs() -> None:
    """The result images are well-formed PNGs: signature, CRCs, and a decodable IDAT."""
    data = png_bytes("task-1", 2)
    assert data.startswith(PNG_SIGNATURE)
    offset, kinds = len(PNG_SIGNATURE), []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        kinds.append(kind)
        if kind == b"IHDR":
            assert struct.unpack(">IIBBBBB", body) == (64, 64, 8, 2, 0, 0, 0)
        if kind == b"IDAT":
            assert len(zlib.decompress(body)) == 64 * (1 + 64 * 3)
        offset += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


def test_every_task_and_index_has_its_own_picture() -> None:
    """The four images of a task differ, and so do two tasks' images at the same index."""
    images = {png_bytes(task, index) for task in ("task-1", "task-2") for index in range(4)}
    assert len(images) == 8
    assert png_bytes("task-1", 0) == png_bytes("task-1", 0)


def test_all_is_sorted_and_complete() -> None:
    """midvary.testing.__all__ lists every public name once, sorted, each one existing."""
    module = midvary.testing
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public <= set(module.__all__), public - set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)
    assert len(module.__all__) == len(set(module.__all__))
    assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), n))
