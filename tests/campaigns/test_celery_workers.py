"""Celery workers on a Redis broker, one SIGKILLed mid-run: every job has a result, 0 duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..store.redis_server import RedisServer
from .celery_fleet import CeleryFigures, celery_campaign


def assert_delivered_once_billed(figures: CeleryFigures) -> None:
    """Every job has a result, nothing billed twice, uncertain only for jobs hit by the kill."""
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
    assert_delivered_once_billed(figures)
