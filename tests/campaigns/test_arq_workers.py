"""Campaign R10: arq workers on one Redis, SIGKILLed mid-run and restarted; no double billing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..store.redis_server import RedisServer
from .fleet import ArqFigures, arq_campaign, assert_billed_once


def assert_r10(figures: ArqFigures) -> None:
    """Every job has a result, nothing billed twice, uncertain only for jobs hit by a kill."""
    assert_billed_once(figures)


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
