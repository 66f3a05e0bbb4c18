"""The opt-in pytest plugin's fixtures, as a user's test would use them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import midvary
from midvary.testing import FAST_POLL, FakeProvider, FakeSettings
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


async def test_midvary_env_lets_code_build_its_own_session(midvary_env: FakeProvider) -> None:
    """With midvary_env, a bare Session() reaches the fake and its vary succeeds."""
    async with midvary.Session(poll=FAST_POLL) as session:  # key and URL from the environment
        record = await session.vary("parent-1", 0)
        assert session.base_url == midvary_env.base_url
        assert (await record.wait()).status is midvary.TaskStatus.SUCCESS
    assert midvary_env.stats.tasks_created == 1


def test_the_testing_extra_has_what_the_plugin_needs() -> None:
    """The testing extra in pyproject.toml names pytest and pytest-asyncio."""
    pyproject = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    )
    testing = pyproject["project"]["optional-dependencies"]["testing"]
    assert {re.split(r"[<>=]", spec)[0] for spec in testing} == {"pytest", "pytest-asyncio"}
