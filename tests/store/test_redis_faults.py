"""RedisStore against a real server that stops, comes back, forgets, or wants a password."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import redis.asyncio

import midvary
from midvary._store import (
    ClaimState,
    RedisStore,
    SlotRequest,
    SQLiteStore,
    account_namespace,
    holding,
)

from .redis_server import RedisServer, server_or_skip

REQ = {"taskId": "parent-1", "imageIndex": 0}
API_KEY = "sk-live-0123456789abcdef-secret"


def sqlite_bytes(directory: Path) -> bytes:
    """Every byte of the SQLite store's files (database, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in directory.glob("store.sqlite*"))


async def claim(store: RedisStore, key: str, holder: str = "h") -> ClaimState:
    result = await store.claim(
        "ns", key, fingerprint="fp", request=REQ, holder=holder, lease_s=30.0
    )
    return result.state


async def test_unreachable_then_back(redis_server: RedisServer) -> None:
    """A stopped server raises StoreError; once restarted (with AOF) the same store works."""
    async with RedisStore(redis_server.url) as store:
        assert await claim(store, "k") is ClaimState.CLAIMED
        assert await store.record_task("ns", "k", holder="h", task_id="t-1")
        redis_server.stop()
        with pytest.raises(midvary.StoreError, match="claim of key 'k2'") as info:
            await claim(store, "k2")
        assert info.value.__cause__ is not None
        redis_server.start(persistent=True)
        assert await claim(store, "k", holder="other") is ClaimState.KNOWN
        assert await claim(store, "k2") is ClaimState.CLAIMED


async def test_a_server_that_stops_answering_times_out(redis_server: RedisServer) -> None:
    """A frozen server (connected, silent) fails the call after socket_timeout, then recovers."""
    async with RedisStore(redis_server.url, socket_timeout=0.3) as store:
        assert await claim(store, "k") is ClaimState.CLAIMED  # the pipe's connection is up
        redis_server.freeze()
        try:
            with pytest.raises(midvary.StoreError, match="claim of key 'k2'") as info:
                await claim(store, "k2")
        finally:
            redis_server.thaw()
        assert "did not answer in time" in str(info.value)
        assert await claim(store, "k3") is ClaimState.CLAIMED


async def test_restart_without_persistence_is_lost_data(redis_server: RedisServer) -> None:
    """A server restarted without its data makes this process's submissions stop."""
    async with RedisStore(redis_server.url) as store:
        assert await claim(store, "k") is ClaimState.CLAIMED
        redis_server.stop()
        redis_server.start(persistent=False)
        with pytest.raises(midvary.StoreError, match="lost its data"):
            await claim(store, "k")
        with pytest.raises(midvary.StoreError, match="lost its data"):
            await claim(store, "new-key")


async def test_unreachable_at_open(tmp_path: Path) -> None:
    """Opening a store on a server that is not running raises StoreError."""
    server = RedisServer(server_or_skip(), tmp_path)  # never started
    with pytest.raises(midvary.StoreError, match="connecting"):
        await RedisStore(server.url, socket_timeout=2.0).open()


async def test_holding_fails_closed_when_unreachable(redis_server: RedisServer) -> None:
    """No claim can be recorded: holding() raises StoreError before anything may be sent."""
    async with RedisStore(redis_server.url) as store:
        redis_server.stop()
        with pytest.raises(midvary.StoreError):
            async with holding(store, "ns", "k", fingerprint="fp", request=REQ):
                pytest.fail("the body must not run without a recorded claim")


async def test_password_never_shown(tmp_path: Path) -> None:
    """A URL's password is in no repr and no error, whether it is wrong or the server is down."""
    server = RedisServer(server_or_skip(), tmp_path, password="hunter2-very-secret")
    server.start()
    try:
        store = RedisStore(server.url)
        assert "hunter2" not in repr(store)
        async with store:
            assert await claim(store, "k") is ClaimState.CLAIMED
            server.stop()
            with pytest.raises(midvary.StoreError) as down:
                await claim(store, "k2")
        wrong = RedisStore(server.url.replace("hunter2", "wrong-hunter3"))
        server.start()
        with pytest.raises(midvary.StoreError) as refused:
            await wrong.open()
    finally:
        server.stop()
    for error in (down.value, refused.value):
        chain = f"{error!s} {error!r} {error.__cause__!s} {error.__cause__!r}"
        assert "hunter2" not in chain
        assert "hunter3" not in chain


async def test_borrowed_client_is_not_closed(redis_server: RedisServer) -> None:
    """A store made from a client uses it and leaves it open when the store closes."""
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    async with RedisStore(client, namespace="team") as store:
        assert store.namespace_for(API_KEY) == "team"
        assert await claim(store, "k") is ClaimState.CLAIMED
    assert await client.ping()
    await client.aclose()


async def test_api_key_never_written(redis_server: RedisServer, tmp_path: Path) -> None:
    """Nothing of the API key is in any Redis key or value, nor in the SQLite file's bytes."""
    ns = account_namespace(API_KEY)
    assert API_KEY[:12] not in ns
    path = tmp_path / "store.sqlite"
    async with RedisStore(redis_server.url) as rstore, SQLiteStore(path) as sstore:
        for store in (rstore, sstore):
            slot = SlotRequest(slot_id="s", rate=(5, 1.0))
            result = await store.claim(
                ns, "order-1", fingerprint="fp", request=REQ, holder="h", lease_s=5, slot=slot
            )
            assert result.sending
            await store.record_task(ns, "order-1", holder="h", task_id="t", slot_id="s")
            await store.slow_down(ns, rate=(5, 1.0), pause_s=0.1)
        client = redis.asyncio.from_url(redis_server.url)
        dump = []
        async for name in client.scan_iter():
            dump.append(name)
            kind = (await client.type(name)).decode()
            if kind == "string":
                dump.append(await client.get(name))
            elif kind == "hash":
                dump.extend(v for kv in (await client.hgetall(name)).items() for v in kv)
            else:
                dump.extend(await client.zrange(name, 0, -1))
        await client.aclose()
    assert len(dump) > 5
    fragments = [API_KEY, API_KEY[-12:], API_KEY[:12]]
    blob = b" ".join(dump)
    assert not any(f.encode() in blob for f in fragments)
    files = sqlite_bytes(tmp_path)
    assert ns.encode() in files  # the namespace is there: the scan reads the real bytes
    assert not any(f.encode() in files for f in fragments)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM midvary_keys").fetchone() == (1,)


async def test_concurrent_calls_get_their_own_answers(redis_server: RedisServer) -> None:
    """Calls made together (one write on the pipelined connection) each get their own reply."""
    async with RedisStore(redis_server.url) as store:
        keys = [f"k{n}" for n in range(50)]
        states = await asyncio.gather(*(claim(store, key, holder=key) for key in keys))
        assert set(states) == {ClaimState.CLAIMED}
        done = await asyncio.gather(
            *(store.record_task("ns", key, holder=key, task_id=f"t-{key}") for key in keys)
        )
        assert all(done)
        found = await asyncio.gather(
            *(
                store.claim("ns", key, fingerprint="fp", request=REQ, holder="x", lease_s=30.0)
                for key in keys
            )
        )
        assert [f.task_id for f in found] == [f"t-{key}" for key in keys]


async def test_cancelled_call_leaves_the_others_intact(redis_server: RedisServer) -> None:
    """A caller cancelled while its call is in flight does not shift the others' answers."""
    async with RedisStore(redis_server.url) as store:
        first = asyncio.ensure_future(claim(store, "a", holder="a"))
        second = asyncio.ensure_future(claim(store, "b", holder="b"))
        await asyncio.sleep(0)
        first.cancel()
        assert await second is ClaimState.CLAIMED
        assert await store.record_task("ns", "b", holder="b", task_id="t-b")
        assert await claim(store, "b") is ClaimState.KNOWN


async def test_script_forgotten_by_the_server_is_loaded_again(redis_server: RedisServer) -> None:
    """SCRIPT FLUSH (as after a restart) costs a reload, not an error."""
    async with RedisStore(redis_server.url) as store:
        assert await claim(store, "k") is ClaimState.CLAIMED
        client = redis.asyncio.Redis(port=redis_server.port)
        await client.script_flush()
        await client.aclose()
        assert await claim(store, "k2") is ClaimState.CLAIMED
