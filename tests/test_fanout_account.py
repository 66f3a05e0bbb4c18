"""A fan-out and the account: stop on 401/402/505, and cap what may be billed (max_tasks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import midvary

from .fanout_support import fake_session, requests


def counted(
    items: Iterator[midvary.VaryRequest], pulled: list[int]
) -> Iterator[midvary.VaryRequest]:
    """``items``, counting in ``pulled[0]`` how many the fan-out read."""
    for item in items:
        pulled[0] += 1
        yield item


async def test_submit_all_raises_402_after_the_jobs_in_flight_and_sends_nothing_more() -> None:
    """Credits for 5 of 40 jobs: 5 tasks, at most `concurrency` 402s, the error raised."""
    async with fake_session(credits=5) as (fake, session):
        with pytest.raises(midvary.InsufficientCreditsError):
            await session.submit_all(requests(40), concurrency=4)

    assert fake.stats.tasks_created == 5
    # Every POST after the first 402 gets a 402 too: at most the others in flight.
    assert 1 <= fake.stats.codes[402] <= 4
    assert fake.stats.requests["submit"] == 5 + fake.stats.codes[402]


async def test_submit_many_yields_what_finished_then_raises_and_lists_the_rest() -> None:
    """The sent jobs' outcomes come first; the refused and held-back jobs are not sent."""
    jobs = list(requests(30))
    async with fake_session(credits=6) as (fake, session):
        outcomes: list[midvary.JobOutcome] = []
        fanout = session.submit_many(jobs, concurrency=5)

        async def drain() -> None:
            async for outcome in fanout:
                outcomes.append(outcome)  # noqa: PERF401 - kept when the loop raises

        with pytest.raises(midvary.InsufficientCreditsError):
            await drain()
        assert fanout.stopped_by is not None
        assert isinstance(fanout.stopped_by, midvary.InsufficientCreditsError)
        unfinished = fanout.unfinished

        assert len(outcomes) == 6
        assert all(o.ok for o in outcomes)
        assert {o.task_id for o in outcomes} == set(fake.tasks)
        assert unfinished
        assert all(j.not_sent and j.task_id is None and not j.uncertain for j in unfinished)
        assert {o.index for o in outcomes}.isdisjoint(j.index for j in unfinished)

        # After a top-up, the jobs without an outcome are sent once each: no duplicate.
        fake.update(credits=100)
        done = {o.index for o in outcomes}
        rest = [job for n, job in enumerate(jobs) if n not in done]
        again = await session.submit_all(rest, concurrency=5)
    assert all(o.ok for o in again)
    assert fake.stats.tasks_created == 30
    assert fake.stats.duplicate_submissions == 0


async def test_a_wrong_key_stops_the_fan_out_after_the_posts_in_flight() -> None:
    """50 jobs with a wrong key: AuthenticationError, at most `concurrency` POSTs."""
    async with fake_session() as (fake, good):
        bad = midvary.Session(
            api_key="fake-wrong-fanout-key", base_url=fake.base_url, submit_rate=None
        )
        async with bad:
            with pytest.raises(midvary.AuthenticationError) as info:
                await bad.submit_all(requests(50), concurrency=8)
        assert "fake-wrong-fanout-key" not in str(info.value)
        assert 1 <= fake.stats.requests["submit"] <= 8
        assert fake.stats.tasks_created == 0
        del good


async def test_a_validation_refusal_is_the_job_s_outcome_and_does_not_stop() -> None:
    """A 422 (unknown parent) fails that job only; the others run."""
    jobs = [*requests(3), midvary.VaryRequest(task_id="unknown-parent", image_index=0)]
    async with fake_session() as (fake, session):
        outcomes = await session.submit_all(jobs, concurrency=2)
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert isinstance(outcomes[3].error, midvary.ValidationError)
    assert fake.stats.tasks_created == 3


async def test_max_tasks_caps_the_tasks_and_stops_reading_the_input() -> None:
    """max_tasks=3 of 20: 3 tasks, a full iteration, the held-back jobs listed not sent."""
    pulled = [0]
    async with fake_session() as (fake, session):
        fanout = session.submit_many(counted(requests(20), pulled), concurrency=2, max_tasks=3)
        outcomes = [outcome async for outcome in fanout]
        unfinished = fanout.unfinished
        assert fanout.capped
        assert fanout.billable == 3
        assert fanout.stopped_by is None
    assert len(outcomes) == 3
    assert all(o.ok for o in outcomes)
    assert fake.stats.tasks_created == 3
    assert fake.stats.requests["submit"] == 3
    assert all(j.not_sent for j in unfinished)
    assert pulled[0] <= 3 + 2  # read as slots free up, then no further


async def test_max_tasks_does_not_count_refused_submissions() -> None:
    """Refused submissions (422) are not billed: the cap counts accepted ones only."""
    bad = [midvary.VaryRequest(task_id="unknown-parent", image_index=n) for n in range(3)]
    jobs = [*bad, *requests(10)]
    async with fake_session() as (fake, session):
        outcomes = await session.submit_all(jobs, concurrency=1, max_tasks=4)
    assert fake.stats.tasks_created == 4
    assert sum(o.ok for o in outcomes) == 4
    assert sum(isinstance(o.error, midvary.ValidationError) for o in outcomes) == 3


async def test_max_tasks_counts_uncertain_submissions() -> None:
    """A submission whose answer was lost may be billed: it counts against the cap."""
    async with fake_session(drop_submit_answer_rate=1.0) as (fake, session):
        outcomes = await session.submit_all(requests(10), concurrency=1, max_tasks=2)
    assert [o.uncertain for o in outcomes] == [True, True]
    assert fake.stats.tasks_created == 2


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)]
)
async def test_a_bad_max_tasks_is_refused_before_anything_is_sent(
    value: object, error: type[Exception]
) -> None:
    """max_tasks must be an int >= 1 (or None); the message names it."""
    async with fake_session() as (fake, session):
        with pytest.raises(error, match="max_tasks"):
            session.submit_many(requests(2), max_tasks=value)  # type: ignore[arg-type]
        with pytest.raises(error, match="max_tasks"):
            await session.submit_all(requests(2), max_tasks=value)
    assert fake.stats.requests["submit"] == 0
