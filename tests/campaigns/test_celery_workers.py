"""Celery workers on a Redis broker, one SIGKILLed mid-run: every job has a result, 0 duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..store.redis_server import RedisServer
from .celery_fleet import celery_campaign
from .fleet import assert_billed_once


@pytest.mark.timeout(120)
async def test_a_killed_worker_jobs_are_redelivered_and_billed_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """20 jobs on two prefork workers, one SIGKILLed mid-run: its jobs come again, 0 duplicates."""
    figures = await celery_campaign(
        jobs=20, redis_url=redis_server.url, workdir=tmp_path, workers=2, kills=1, seed=3
    )
    assert figures.kills == 1
    assert figures.in_flight_at_kills
    # The killed worker's jobs were delivered again (by the broker, after the timeout); a
    # job its transport popped and never recorded was lost by the broker and sent again by
    # the client with its key (it never reached a worker before: it is not in flight).
    assert figures.in_flight_at_kills <= figures.redelivered
    assert not figures.lost & figures.in_flight_at_kills
    assert figures.deliveries >= figures.jobs + len(figures.in_flight_at_kills)
    assert_billed_once(figures)
