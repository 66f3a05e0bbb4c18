"""The opt-in pytest plugin's fixtures, as a user's test would use them."""

from __future__ import annotations

import midvary
from midvary.testing import FakeProvider, FakeSettings
from midvary.testing.pytest_plugin import FAST_SETTINGS


def test_fake_settings_fixture_is_fast_and_clean(fake_settings: FakeSettings) -> None:
    """The default knobs: short tasks, tiny invisibility, no faults, failures or limit."""
    assert fake_settings is FAST_SETTINGS
    assert fake_settings.task_duration[1] <= 0.2
    assert fake_settings.invisible_for <= 0.01
    assert (fake_settings.fault_rate, fake_settings.failure_rate) == (0.0, 0.0)
    assert fake_settings.submit_limit is None


async def test_midvary_session_talks_to_fake_provider(
    fake_provider: FakeProvider, midvary_session: midvary.Session
) -> None:
    """The session fixture is wired to the started fake: a vary task runs to SUCCESS."""
    handle = await midvary_session.vary("parent-plugin", 1)
    record = await handle
    assert record.status is midvary.TaskStatus.SUCCESS
    assert len(record.image_urls) == 4
    assert all(url.startswith(fake_provider.results_base_url) for url in record.image_urls)
    assert fake_provider.stats.tasks_created == 1


async def test_midvary_session_stays_fast_after_learning(
    fake_provider: FakeProvider, midvary_session: midvary.Session
) -> None:
    """Many tasks in one session (enough for its poll schedule to learn) all succeed."""
    handles = [await midvary_session.vary("parent-plugin", i % 4) for i in range(8)]
    records = [await handle for handle in handles]
    records.append(await (await midvary_session.vary("parent-plugin", 0)))
    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)
    assert fake_provider.stats.tasks_created == 9
