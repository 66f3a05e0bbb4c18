"""Campaign 1: 20% of polls faulted (every kind) and two maintenance windows; every job done."""

from __future__ import annotations

import pytest

from midvary.testing import FAULT_KINDS

from .scenarios import Figures, faulted_polls


def assert_every_job_done(figures: Figures) -> None:
    """Every job succeeded once: none failed, uncertain, lost or billed twice."""
    assert figures.done == figures.jobs, figures
    assert (figures.failed, figures.uncertain, figures.lost, figures.duplicates) == (0, 0, 0, 0)
    assert figures.tasks_created == figures.jobs
    # The campaign did what it says: every fault kind and both windows hit polls.
    assert all(figures.faults.get(kind, 0) > 0 for kind in FAULT_KINDS), figures.faults
    assert figures.faults["455"] > 0
    assert figures.poll_retries > 0


@pytest.mark.parametrize("collect", ["submit_all", "submit_many"])
async def test_faulted_polls_100_jobs(collect: str) -> None:
    """100 jobs through the fan-out under faulted polls and maintenance all succeed, once."""
    figures = await faulted_polls(
        100, seed=1, concurrency=32, maintenance=[(0.2, 0.2), (0.6, 0.2)], collect=collect
    )
    assert_every_job_done(figures)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_faulted_polls_1000_jobs() -> None:
    """1,000 jobs under faulted polls and two maintenance windows all succeed, once."""
    figures = await faulted_polls(
        1000, seed=11, concurrency=64, maintenance=[(0.2, 1.0), (0.6, 1.0)]
    )
    assert_every_job_done(figures)
