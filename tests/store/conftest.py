"""Fixtures of the store tests: every backend, and real Redis servers."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio

from midvary._store import MemoryStore, RedisStore, SQLiteStore, Store

from .redis_server import RedisServer

BACKENDS = ["memory", "sqlite", "redis"]


def _wipe_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for table in ("midvary_keys", "midvary_done", "midvary_windows", "midvary_epochs"):
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
