"""Campaign 2: 429 storms, lost and faulted submit answers: never a duplicate, never lost."""

from __future__ import annotations

import pytest

import midvary
from midvary.testing import FAULT_KINDS

from .scenarios import Kind, StormRun, key_of, submit_storm


def assert_storm_accounted(run: StormRun) -> None:
    """0 duplicates; each job done, uncertain (with its request) or refused; none lost."""
    figures = run.figures
    assert figures.duplicates == 0
    assert figures.lost == 0
    assert [o.index for o in run.outcomes] == list(range(figures.jobs))
    created_for_uncertain = 0
    for outcome in run.outcomes:
        tasks = run.fake_tasks.get(key_of(outcome.request), [])
        if outcome.ok:
            assert tasks == [outcome.task_id]
        elif outcome.uncertain:
            assert isinstance(outcome.error, midvary.SubmitUncertainError)
            assert outcome.error.request == outcome.request
            assert outcome.task_id is None
            assert len(tasks) <= 1
            created_for_uncertain += len(tasks)
        else:  # refused beyond the retry budget: certainly not accepted, nothing billed
            assert isinstance(outcome.error, midvary.RateLimitError), outcome
            assert tasks == []
    assert figures.tasks_created == figures.done + created_for_uncertain
    # Nothing was re-sent after an answer that was not a refusal: each job's POSTs are its
    # 429s plus one, and the fake saw exactly the POSTs the jobs announced.
    for index, counts in run.events.counts.items():
        assert counts[Kind.SUBMITTING] == run.events.refusals[index] + 1, (index, counts)
    assert run.submit_posts == sum(c[Kind.SUBMITTING] for c in run.events.counts.values())
    # The storm happened; each faulted or lost answer made exactly one job uncertain.
    assert figures.faults["429"] > 0
    faulted = sum(figures.faults.get(kind, 0) for kind in FAULT_KINDS)
    assert figures.uncertain == faulted + figures.faults["lost answer"] > 0


@pytest.mark.parametrize(
    "session_rate", [None, (10, 0.1)], ids=["client-unlimited", "client-limit-too-high"]
)
async def test_submit_storm_100_jobs(session_rate: tuple[int, float] | None) -> None:
    """100 jobs under a 429 storm with 5% lost and 5% faulted answers: all accounted for."""
    run = await submit_storm(100, seed=2, concurrency=32, session_rate=session_rate)
    assert_storm_accounted(run)
    assert run.figures.done + run.figures.uncertain == run.figures.jobs
    if session_rate is None:  # most submissions were refused for a while
        assert run.figures.faults["429"] > run.figures.jobs // 2
    else:  # the client's limiter halved itself: few 429s came back
        assert 0 < run.figures.faults["429"] < run.figures.jobs // 2


async def test_retry_budget_exhausted_by_429s_bills_nothing() -> None:
    """With 3 attempts against the storm, refused jobs fail with RateLimitError, unbilled."""
    run = await submit_storm(40, seed=3, concurrency=40, session_rate=None, attempts=3)
    assert_storm_accounted(run)
    assert run.figures.failed > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "session_rate", [None, (10, 0.1)], ids=["client-unlimited", "client-limit-too-high"]
)
async def test_submit_storm_1000_jobs(session_rate: tuple[int, float] | None) -> None:
    """1,000 jobs under a 429 storm with lost and faulted answers: all accounted for."""
    run = await submit_storm(1000, seed=12, concurrency=64, session_rate=session_rate)
    assert_storm_accounted(run)
