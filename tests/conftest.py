"""Shared fixtures for midvary's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import midvary

from .mockapi import BASE, KEY, MockAPI

# The fake provider's fixtures (fake_provider, midvary_session, ...), as users enable them.
pytest_plugins = ["midvary.testing.pytest_plugin"]

#: Policies that keep unit tests fast: milliseconds instead of seconds, no jitter.
FAST_POLL = midvary.PollPolicy(
    initial_delay=0.01, factor=1.5, max_delay=0.02, jitter=0.0, timeout=5.0, not_found_grace=1.0
)
FAST_RETRY = midvary.RetryPolicy(attempts=4, wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)


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
