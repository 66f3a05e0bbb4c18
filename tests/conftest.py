"""Shared fixtures for midvary's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import midvary
import midvary.testing

from .mockapi import BASE, KEY, MockAPI

# The fake provider's fixtures (fake_provider, midvary_session, ...), as users enable them.
pytest_plugins = ["midvary.testing.pytest_plugin"]

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
