"""Shared fixtures for midvary's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import midvary
import midvary.testing

from .mockapi import BASE, KEY, MockAPI
from .store.redis_server import RedisServer, server_or_skip

# The fake provider's fixtures (fake_provider, midvary_session, ...), as users enable them.
pytest_plugins = ["midvary.testing.pytest_plugin"]

# The test mode for the whole run, as users turn it on: every session built without
# policies, in this process and in every process a test starts (the CLI, workers), polls and
# retries in milliseconds. Tests of the production defaults turn it off for their block.
midvary.testing.set_testing(True)

#: The fast test mode (milliseconds, no jitter), as users of midvary.testing get it.
FAST_POLL = midvary.testing.FAST_POLL
FAST_RETRY = midvary.testing.FAST_RETRY


@pytest.fixture
def api() -> Iterator[MockAPI]:
    """A mocked provider (aioresponses) that lets nothing reach the network."""
    with MockAPI() as mock:
        yield mock


@pytest.fixture
async def session(api: MockAPI) -> AsyncIterator[midvary.Session]:
    """A session against the mocked provider with fast policies."""
    async with midvary.Session(
        api_key=KEY, base_url=BASE, poll=FAST_POLL, retry=FAST_RETRY, seed=1
    ) as s:
        yield s


@pytest.fixture(scope="session")
def redis_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis server for the whole session (tests use their own namespaces)."""
    server = RedisServer(server_or_skip(), tmp_path_factory.mktemp("redis"))
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
