"""The resume recipe of docs/guides/stores.md, run as written: killed, run again, done once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from midvary.testing import FakeProvider, FakeSettings

README = Path(__file__).resolve().parents[2] / "docs" / "guides" / "stores.md"
MARKER = "<!-- recipe: resume -->"


def recipe() -> str:
    """The Python block that follows the recipe marker in the README."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(MARKER) + len(MARKER) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def test_the_recipe_is_in_the_readme() -> None:
    """The recipe block exists, uses keys and a SQLiteStore, and has 100 jobs."""
    code = recipe()
    assert "midvary.SQLiteStore(" in code
    assert "key=" in code
    compile(code, "recipe.py", "exec")


@pytest.fixture
def fake_settings() -> FakeSettings:
    """The provider's real limit (20 per 10 s) and fast tasks."""
    return FakeSettings(task_duration=(0.05, 0.2), invisible_for=0.01, submit_limit=(20, 10.0))


async def _run(script: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=script.parent, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_recipe_killed_then_rerun(fake_provider: FakeProvider, tmp_path: Path) -> None:
    """Killed during its limiter wait, then run again: 100 jobs ok, 100 tasks, 0 duplicates."""
    script = tmp_path / "recipe.py"
    script.write_text(recipe(), encoding="utf-8")
    env = {
        **os.environ,
        "MIDVARY_BASE_URL": fake_provider.base_url,
        "MIDVARY_API_KEY": fake_provider.api_key,
    }
    first = await _run(script, env)
    async with asyncio.timeout(60):
        while fake_provider.stats.tasks_created < 20:  # noqa: ASYNC110 - the fake counts
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # now waiting for the next window: nothing in flight
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert (tmp_path / "midvary-state.sqlite").exists()
    second = await _run(script, env)
    out, err = await asyncio.wait_for(second.communicate(), timeout=240)
    assert second.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 100
    assert all(line.endswith(" ok") for line in lines), [x for x in lines if "ok" not in x]
    assert len({line.split()[0] for line in lines}) == 100
    stats = fake_provider.stats
    assert stats.tasks_created == 100
    assert stats.duplicate_submissions == 0
