"""Campaign R10: arq workers on one Redis, SIGKILLed mid-run and restarted; no double billing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..store.redis_server import RedisServer
from .fleet import ArqFigures, arq_campaign


def assert_r10(figures: ArqFigures) -> None:
    """Every job has a result, nothing billed twice, uncertain only for jobs hit by a kill."""
    assert figures.missing == {}
    assert len(figures.results) == figures.jobs
    assert figures.duplicates == 0
    assert set(figures.states()) <= {"succeeded", "uncertain"}, figures.states()
    assert figures.uncertain() <= figures.in_flight_at_kills
    succeeded = [r for r in figures.results.values() if r["state"] == "succeeded"]
    task_ids = [r["task_id"] for r in succeeded]
    assert all(task_ids)
    assert len(set(task_ids)) == len(task_ids)
    assert all(r["image_urls"] and r["error"] is None for r in succeeded)
    # Each uncertain key billed at most once (its POST may or may not have been accepted).
    assert len(succeeded) <= figures.tasks_created <= len(succeeded) + len(figures.uncertain())


async def test_r10_one_kill(redis_server: RedisServer, tmp_path: Path) -> None:
    """20 jobs on two workers, one SIGKILLed mid-run and restarted: R10 holds."""
    figures = await arq_campaign(
        jobs=20, kills=1, seed=7, redis_url=redis_server.url, workdir=tmp_path,
        fake_args=("--duration", "0.5", "1.5", "--latency", "0.1", "0.4", "--no-submit-limit"),
    )  # fmt: skip
    assert figures.kills == 1
    assert figures.in_flight_at_kills
    assert_r10(figures)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
async def test_r10_three_kills(redis_server: RedisServer, tmp_path: Path, seed: int) -> None:
    """40 jobs on two workers, a worker SIGKILLed three times and restarted: R10 holds."""
    figures = await arq_campaign(
        jobs=40, kills=3, seed=seed, redis_url=redis_server.url, workdir=tmp_path,
        fake_args=("--duration", "0.5", "1.5", "--latency", "0.1", "0.4", "--no-submit-limit"),
    )  # fmt: skip
    assert figures.kills == 3
    assert_r10(figures)
