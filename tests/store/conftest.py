"""Fixtures of the store tests: every backend, and real Redis servers."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from midvary._store import MemoryStore, RedisStore, SQLiteStore, Store

from .redis_server import RedisServer, server_or_skip

BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(scope="session")
def redis_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis server for the whole session (tests use their own namespaces)."""
    binary = server_or_skip()
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis server of this test's own, with persistence, for stopping and restarting."""
    server = RedisServer(server_or_skip(), tmp_path)
    server.start()
    yield server
    server.stop()


def _wipe_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for table in ("midvary_keys", "midvary_windows", "midvary_epochs"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"


class Backend:
    """A store under test, with a way to make it lose its data and to make another one."""

    def __init__(
        self, store: Store, wipe: Callable[[], Awaitable[None]], sibling: Callable[[], Store]
    ) -> None:
        self.store = store
        self.wipe = wipe
        self.sibling = sibling


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each store implementation, open, with its data-loss fault."""
    kind = request.param
    if kind == "memory":
        memory = MemoryStore()

        async def wipe() -> None:
            memory._lose_data()

        yield Backend(memory, wipe, MemoryStore)
        return
    if kind == "sqlite":
        path = tmp_path / "store.sqlite"
        async with SQLiteStore(path) as store:

            async def wipe() -> None:
                _wipe_sqlite(path)

            yield Backend(store, wipe, lambda: SQLiteStore(path))
        return
    server: RedisServer = request.getfixturevalue("redis_session_server")
    async with RedisStore(server.url) as redis_store:

        async def wipe() -> None:
            client = redis.asyncio.from_url(server.url)
            await client.flushall()
            await client.aclose()

        yield Backend(redis_store, wipe, lambda: RedisStore(server.url))
