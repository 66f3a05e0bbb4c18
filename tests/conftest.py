"""Shared fixtures for midvary's own tests."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

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

# The Ctrl-C tests send SIGINT to this process and to the CLI's: a shell that starts the suite
# in the background without job control (`(make test &)`) makes every process it starts
# ignore SIGINT, and the xdist workers and the CLI processes would inherit that.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: The fast test mode (milliseconds, no jitter), as users of midvary.testing get it.
FAST_POLL = midvary.testing.FAST_POLL
FAST_RETRY = midvary.testing.FAST_RETRY


@pytest.fixture(autouse=True)
def no_blocking_calls() -> Iterator[BlockBuster]:
    """Fail any test in which midvary's code blocks a running event loop.

    aiohttp's own suite does the same: a blocking call (file or SQLite I/O, ``time.sleep``,
    a blocking lock or socket call...) made from a ``midvary`` frame on a thread that runs
    an event loop raises ``blockbuster.BlockingError``. That covers the library and the CLI
    (whose in-process runs use their own loop in a worker thread); the fake provider
    (``midvary.testing``) and the tests themselves are not scanned. Work that must block
    runs in a worker thread (``asyncio.to_thread`` or a store's own thread), where no loop
    runs.
    """
    with blockbuster_ctx("midvary", excluded_modules=["midvary.testing"]) as guard:
        # The one allowed: checking a download= directory is one stat, made when the
        # argument is validated so that a file there is a ValueError at the call, before
        # anything starts (submit_many validates synchronously).
        guard.functions["os.stat"].can_block_in("midvary/_validate.py", {"directory"})
        # An import's own reads (its files, a package's metadata) happen once per process:
        # midvary imports its optional dependencies (redis-py, rich) when first used, on
        # purpose, so the first use may be on a loop.
        for function in guard.functions.values():
            function.can_block_in("<frozen importlib._bootstrap>", {"_find_and_load"})
        # SyncSession is the blocking API: its calls wait for its own loop's thread, and a
        # caller on an event loop blocks that loop by its own choice (Jupyter, its tests).
        for name in ("threading.Lock.acquire", "threading.Lock.acquire_lock"):
            guard.functions[name].can_block_in("midvary/_sync.py", {"__init__", "run", "close"})
        yield guard


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
