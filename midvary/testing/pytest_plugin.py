"""pytest fixtures that run midvary against the fake provider (opt-in).

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["midvary.testing.pytest_plugin"]

They need pytest-asyncio. Fixtures (all function-scoped):

- ``fake_settings``: the :class:`~midvary.testing.FakeSettings` of ``fake_provider``: fast
  tasks (0.05 to 0.2 s), 0.01 s of invisibility, no faults, no failures and no submit limit.
  Override this fixture in a conftest to change the knobs for a directory of tests, or call
  ``fake_provider.update(...)`` inside one test.
- ``fake_provider``: a started :class:`~midvary.testing.FakeProvider`, closed afterwards.
- ``midvary_session``: an open ``midvary.Session`` pointed at ``fake_provider`` with the
  fast test mode (:data:`~midvary.testing.FAST_POLL`, :data:`~midvary.testing.FAST_RETRY`),
  closed afterwards.
- ``midvary_env``: sets ``MIDVARY_API_KEY`` and ``MIDVARY_BASE_URL`` to ``fake_provider``'s
  (and removes ``KIE_API_KEY``) for code that builds its own ``Session()``; returns the
  provider. Undone after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from .._testmode import FAST_POLL, FAST_RETRY
from ._provider import FakeProvider
from ._settings import FakeSettings

if TYPE_CHECKING:
    import midvary

#: The settings ``fake_settings`` returns: quick, clean, unlimited.
FAST_SETTINGS = FakeSettings(
    task_duration=(0.05, 0.2),
    invisible_for=0.01,
    submit_limit=None,
)


@pytest.fixture
def fake_settings() -> FakeSettings:
    """The knobs of ``fake_provider``: fast tasks and nothing going wrong."""
    return FAST_SETTINGS


@pytest_asyncio.fixture
async def fake_provider(fake_settings: FakeSettings) -> AsyncIterator[FakeProvider]:
    """A started fake provider on loopback, closed after the test."""
    async with FakeProvider(settings=fake_settings) as fake:
        yield fake


@pytest_asyncio.fixture
async def midvary_session(fake_provider: FakeProvider) -> AsyncIterator[midvary.Session]:
    """An open ``midvary.Session`` talking to ``fake_provider``, with fast policies."""
    # Imported here so that importing the plugin never imports the client.
    import midvary  # noqa: PLC0415

    async with midvary.Session(
        api_key=fake_provider.api_key,
        base_url=fake_provider.base_url,
        poll=FAST_POLL,
        retry=FAST_RETRY,
        # FAST_SETTINGS has no submit limit: neither has the client, so tests never wait.
        submit_rate=None,
    ) as session:
        yield session


@pytest.fixture
def midvary_env(fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    """Point ``MIDVARY_API_KEY`` / ``MIDVARY_BASE_URL`` at ``fake_provider``; return it.

    For code under test that builds its own ``midvary.Session()``. ``KIE_API_KEY`` is
    removed, so no real key is picked up; all three are restored after the test.
    """
    monkeypatch.setenv("MIDVARY_API_KEY", fake_provider.api_key)
    monkeypatch.setenv("MIDVARY_BASE_URL", fake_provider.base_url)
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    return fake_provider
