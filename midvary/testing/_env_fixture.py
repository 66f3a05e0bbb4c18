"""The ``midvary_env`` fixture: the fake provider's key and URL in the environment.

For code under test that builds its own ``midvary.Session()`` (which reads
``MIDVARY_API_KEY`` and ``MIDVARY_BASE_URL``). Imported by :mod:`midvary.testing.pytest_plugin`.
"""

from __future__ import annotations

import pytest

from ._provider import FakeProvider


@pytest.fixture
def midvary_env(fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    """Point ``MIDVARY_API_KEY`` / ``MIDVARY_BASE_URL`` at ``fake_provider``; return it.

    ``KIE_API_KEY`` is removed, so no real key is picked up; all three are restored after
    the test.
    """
    monkeypatch.setenv("MIDVARY_API_KEY", fake_provider.api_key)
    monkeypatch.setenv("MIDVARY_BASE_URL", fake_provider.base_url)
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    return fake_provider
