"""Fan-out against the fake provider: order, isolation of failures, bounds, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

import midvary

from .fanout_support import fake_session, requests

Kind = midvary.JobEventKind


class Countdown:
    """An on_event hook that sets ``reached`` once ``count`` events of ``kind`` arrived."""

    def __init__(self, kind: midvary.JobEventKind, count: int) -> None:
        self.kind = kind
        self.left = count
        self.reached = asyncio.Event()

    def __call__(self, event: midvary.JobEvent) -> None:
        """Count ``event`` if it is of the awaited kind."""
        if event.kind is self.kind:
            self.left -= 1
            if self.left <= 0:
                self.reached.set()


def fanout_tasks() -> list[asyncio.Task[object]]:
    """The tasks of this loop that run a fan-out's driver or one of its jobs."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith("FanOut.")
    ]


async def test_submit_all_returns_outcomes_in_input_order() -> None:
    """submit_all gives one successful outcome per request, in input order, with task ids."""
    async with fake_session(task_duration=(0.01, 0.3)) as (fake, session):
        jobs = list(requests(24))
        outcomes = await session.submit_all(jobs, concurrency=8)
    assert [o.index for o in outcomes] == list(range(24))
    assert [o.request for o in outcomes] == jobs
    assert all(o.ok and o.error is None and o.record is not None for o in outcomes)
    assert all(o.record is not None and o.record.task_id == o.task_id for o in outcomes)
    assert {o.task_id for o in outcomes} == set(fake.tasks)
    assert all(o.paths == () for o in outcomes)


async def test_submit_many_yields_in_completion_order() -> None:
    """submit_many hands out outcomes as jobs end: a bad last item comes out first."""
    events: list[midvary.JobEvent] = []
    async with fake_session(task_duration=(0.1, 0.2)) as (_fake, session):
        items: list[object] = [*requests(5), "not a request"]
        got = [o async for o in session.submit_many(items, on_event=events.append)]  # type: ignore[arg-type]
    assert got[0].index == 5
    assert isinstance(got[0].error, TypeError)
    assert "VaryRequest" in str(got[0].error)
    assert got[0].request is None
    ended = [e.index for e in events if e.kind in (Kind.DONE, Kind.FAILED)]
    assert [o.index for o in got] == ended
    assert sorted(ended) == list(range(6))


async def test_failures_are_outcomes_and_never_sink_the_batch() -> None:
    """Failed tasks and final API errors become their jobs' outcomes; the rest succeed."""
    async with fake_session(failure_rate=0.4, seed=3) as (fake, session):
        jobs = [*requests(16), midvary.VaryRequest(task_id="unknown-parent", image_index=0)]
        outcomes = await session.submit_all(jobs, concurrency=6)
    failed_tasks = [o for o in outcomes if isinstance(o.error, midvary.TaskFailedError)]
    assert failed_tasks  # the seed makes some tasks fail
    assert all(o.task_id is not None and o.record is None for o in failed_tasks)
    refused = outcomes[-1]
    assert isinstance(refused.error, midvary.ValidationError)
    assert refused.task_id is None
    succeeded = [o for o in outcomes if o.ok]
    assert len(succeeded) + len(failed_tasks) + 1 == len(jobs)
    assert fake.stats.tasks_created == len(jobs) - 1


async def test_uncertain_submissions_are_outcomes_and_never_resent() -> None:
    """Lost submit answers become uncertain outcomes; nothing is submitted twice."""
    async with fake_session(drop_submit_answer_rate=0.3, seed=5) as (fake, session):
        outcomes = await session.submit_all(requests(20), concurrency=8)
    uncertain = [o for o in outcomes if o.uncertain]
    assert len(uncertain) == fake.stats.dropped_submit_answers > 0
    assert all(o.task_id is None and o.record is None for o in uncertain)
    assert all(isinstance(o.error, midvary.SubmitUncertainError) for o in uncertain)
    assert sum(o.ok for o in outcomes) == 20 - len(uncertain)
    assert fake.stats.duplicate_submissions == 0
    assert fake.stats.requests["submit"] == 20


async def test_concurrency_bounds_jobs_in_flight() -> None:
    """No more than `concurrency` jobs are between SUBMITTING and their end at any time."""
    in_flight: set[int] = set()
    peak = 0

    def on_event(event: midvary.JobEvent) -> None:
        nonlocal peak
        if event.kind is Kind.SUBMITTING:
            in_flight.add(event.index)
            peak = max(peak, len(in_flight))
        elif event.kind in (Kind.DONE, Kind.FAILED):
            in_flight.discard(event.index)

    async with fake_session(task_duration=(0.05, 0.15)) as (_fake, session):
        outcomes = await session.submit_all(requests(30), concurrency=5, on_event=on_event)
    assert all(o.ok for o in outcomes)
    assert peak == 5


async def test_limiter_keeps_within_the_providers_submit_limit() -> None:
    """Told the provider's limit, the client waits instead of collecting 429s."""
    events: list[midvary.JobEvent] = []
    async with fake_session(submit_limit=(8, 0.5), submit_rate=(8, 0.5)) as (fake, session):
        outcomes = await session.submit_all(requests(24), concurrency=24, on_event=events.append)
    assert all(o.ok for o in outcomes)
    assert fake.stats.rate_limited == 0
    waits = [e for e in events if e.kind is Kind.RATE_LIMITED]
    assert waits
    assert all(e.error is None and e.wait is not None for e in waits)


async def test_429_slows_the_limiter_down() -> None:
    """429s that come back are reported and slow the limiter, which saves every job."""
    events: list[midvary.JobEvent] = []
    # The client believes in ten times the provider's real limit.
    async with fake_session(submit_limit=(4, 0.4), submit_rate=(40, 0.4)) as (fake, session):
        outcomes = await session.submit_all(requests(16), concurrency=16, on_event=events.append)
        assert session._submitter.limiter.allowance < 40
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if o.error]
    told = [e for e in events if e.kind is Kind.RATE_LIMITED and e.error is not None]
    assert all(isinstance(e.error, midvary.RateLimitError) for e in told)
    assert len(told) == fake.stats.rate_limited > 0
    assert fake.stats.duplicate_submissions == 0

    # Without a limiter to slow down, the same burst spends its retries and jobs fail.
    async with fake_session(submit_limit=(4, 0.4), submit_rate=None) as (_fake, session):
        unlimited = await session.submit_all(requests(16), concurrency=16)
    assert any(isinstance(o.error, midvary.RateLimitError) for o in unlimited)


async def test_cancelling_the_iteration_cancels_jobs_and_keeps_task_ids() -> None:
    """Cancelling the consumer cancels the jobs in flight; unfinished names their task ids."""
    submitted: list[str] = []
    enough = asyncio.Event()

    def on_event(event: midvary.JobEvent) -> None:
        if event.kind is Kind.SUBMITTED and event.task_id is not None:
            submitted.append(event.task_id)
            if len(submitted) == 4:
                enough.set()

    async with fake_session(task_duration=(30.0, 30.0)) as (fake, session):
        fanout = session.submit_many(requests(1000), concurrency=4, on_event=on_event)

        async def consume() -> None:
            async for _outcome in fanout:
                pytest.fail("no job can finish")

        consumer = asyncio.create_task(consume())
        await enough.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        unfinished = fanout.unfinished
        assert sorted(job.task_id for job in unfinished if job.task_id) == sorted(submitted)
        assert [job.index for job in unfinished] == [0, 1, 2, 3]
        assert not any(job.uncertain for job in unfinished)
        assert fake.stats.tasks_created == 4
        assert fanout_tasks() == []
        handle = session.task(submitted[0])  # the session is still usable
        assert handle.task_id == submitted[0]
        assert [o async for o in fanout] == []


async def test_lazy_input_is_pulled_only_as_slots_free_up() -> None:
    """A generator of 100,000 requests is consumed a slot at a time, not up front."""
    pulled = 0

    def generate() -> Iterator[midvary.VaryRequest]:
        nonlocal pulled
        for request in requests(100_000):
            pulled += 1
            yield request

    async with fake_session() as (_fake, session):
        async with session.submit_many(generate(), concurrency=3) as fanout:
            first: list[midvary.JobOutcome] = []
            async for outcome in fanout:
                first.append(outcome)
                if len(first) == 5:
                    break
        assert all(o.ok for o in first)
        # 5 handed out, at most 3 in flight, and one more pulled while waiting for a slot.
        assert pulled <= 5 + 3
        assert fanout.unfinished  # the break abandoned the jobs in flight
        assert fanout_tasks() == []


async def test_async_iterable_input() -> None:
    """An async generator of requests works like a list."""

    async def generate() -> AsyncIterator[midvary.VaryRequest]:
        for request in requests(6):
            await asyncio.sleep(0)
            yield request

    async with fake_session() as (_fake, session):
        outcomes = await session.submit_all(generate(), concurrency=2)
    assert [o.index for o in outcomes] == list(range(6))
    assert all(o.ok for o in outcomes)


async def test_input_that_raises_ends_after_the_jobs_already_started() -> None:
    """An input iterable's own error is raised after the outcomes of the jobs it gave."""

    def generate() -> Iterator[midvary.VaryRequest]:
        yield from requests(3)
        raise RuntimeError("broken input")

    got: list[midvary.JobOutcome] = []

    async def consume(fanout: midvary.FanOut) -> None:
        async for outcome in fanout:
            got.append(outcome)  # noqa: PERF401 - keep those before the error

    async with fake_session() as (_fake, session):
        with pytest.raises(RuntimeError, match="broken input"):
            await consume(session.submit_many(generate()))
    assert sorted(o.index for o in got) == [0, 1, 2]
    assert all(o.ok for o in got)


async def test_hook_failing_at_submitting_sends_nothing() -> None:
    """A SUBMITTING hook that raises stops that POST: the job fails, nothing is sent."""

    def on_event(event: midvary.JobEvent) -> None:
        if event.kind is Kind.SUBMITTING and event.index == 1:
            raise OSError("journal disk full")

    async with fake_session() as (fake, session):
        outcomes = await session.submit_all(requests(3), on_event=on_event)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, OSError)
    assert outcomes[1].task_id is None
    assert not outcomes[1].uncertain
    assert fake.stats.requests["submit"] == 2


async def test_events_carry_the_story_of_each_job() -> None:
    """Each job reports SUBMITTING, then SUBMITTED with its task id, then DONE."""
    events: list[midvary.JobEvent] = []
    async with fake_session() as (_fake, session):
        (outcome,) = await session.submit_all(requests(1), on_event=events.append)
    assert [e.kind for e in events] == [Kind.SUBMITTING, Kind.SUBMITTED, Kind.DONE]
    assert events[0].task_id is None
    assert events[1].task_id == events[2].task_id == outcome.task_id
    assert events[2].outcome == outcome
    assert all(e.request == outcome.request and e.index == 0 for e in events)


async def test_reattached_handles_are_awaited_without_submitting() -> None:
    """A TaskHandle item is awaited as is: no new submission."""
    async with fake_session() as (fake, session):
        first = await session.submit_all(requests(2))
        again = await session.submit_all([session.task(o.task_id or "") for o in first])
    assert [o.task_id for o in again] == [o.task_id for o in first]
    assert all(o.ok and o.request is None for o in again)
    assert fake.stats.requests["submit"] == 2


async def test_closing_the_session_cancels_a_running_fanout() -> None:
    """Session close cancels and awaits the fan-out's jobs; iteration then stops."""
    both = Countdown(Kind.SUBMITTED, 2)
    async with fake_session(task_duration=(30.0, 30.0)) as (_fake, session):
        fanout = session.submit_many(requests(10), concurrency=2, on_event=both)
        consumer = asyncio.create_task(anext(fanout, None))
        await both.reached.wait()
        await session.aclose()
        assert await consumer is None
        assert len(fanout.unfinished) == 2
        assert all(job.task_id for job in fanout.unfinished)
        assert fanout_tasks() == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"requests": "parent-1"}, TypeError),
        ({"requests": 5}, TypeError),
        ({"concurrency": 0}, ValueError),
        ({"concurrency": 2.5}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"download": 3}, TypeError),
    ],
)
async def test_bad_arguments_raise_before_anything_is_sent(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    """Invalid fan-out arguments raise TypeError/ValueError at once."""
    async with fake_session() as (fake, session):
        arguments: dict[str, object] = {"requests": list(requests(2)), **kwargs}
        with pytest.raises(error):
            session.submit_many(**arguments)  # type: ignore[arg-type]
    assert fake.stats.requests["submit"] == 0


@pytest.mark.parametrize("rate", [(0, 1.0), (5, 0), "20/10", (5,), (True, 1.0)])
def test_bad_submit_rate_is_refused(rate: object) -> None:
    """Session(submit_rate=...) accepts only (count >= 1, seconds > 0) or None."""
    with pytest.raises((TypeError, ValueError)):
        midvary.Session(api_key="k", submit_rate=rate)  # type: ignore[arg-type]


async def test_no_outcome_is_lost_when_closed_early() -> None:
    """Outcomes finished but not taken when the fan-out closes are listed as unfinished."""
    all_done = Countdown(Kind.DONE, 3)
    async with fake_session() as (_fake, session):
        fanout = session.submit_many(requests(3), concurrency=3, on_event=all_done)
        async with contextlib.aclosing(fanout):
            first = await anext(fanout)
            await all_done.reached.wait()
        assert first.ok
        assert {j.index for j in fanout.unfinished} == {0, 1, 2} - {first.index}
        assert all(j.task_id for j in fanout.unfinished)


async def test_cancelling_during_a_post_reports_it_uncertain() -> None:
    """A job cancelled while its POST is unanswered is listed as uncertain (may be billed)."""
    posting = asyncio.Event()

    def on_event(event: midvary.JobEvent) -> None:
        if event.kind is Kind.SUBMITTING:
            posting.set()

    async with fake_session(latency=0.5) as (_fake, session):
        fanout = session.submit_many(requests(1), on_event=on_event)
        consumer = asyncio.create_task(anext(fanout))
        await posting.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    (job,) = fanout.unfinished
    assert job.uncertain
    assert job.task_id is None
    assert job.request is not None


async def test_closing_the_session_ends_submissions_waiting_for_the_limiter() -> None:
    """Jobs held back by the limiter end at close without sending anything more."""
    kinds: list[midvary.JobEventKind] = []
    held = asyncio.Event()

    def on_event(event: midvary.JobEvent) -> None:
        kinds.append(event.kind)
        if event.kind is Kind.RATE_LIMITED and Kind.SUBMITTED in kinds:
            held.set()  # the first job is submitted and the next one waits for the window

    async with fake_session(submit_rate=(1, 60.0)) as (fake, session):
        fanout = session.submit_many(requests(3), on_event=on_event)
        consumer = asyncio.create_task(anext(fanout, None))
        await held.wait()
        await session.aclose()
        await consumer
        assert fake.stats.requests["submit"] == 1
        assert [job.task_id is not None for job in fanout.unfinished] == [True, False, False]
        assert not any(job.uncertain for job in fanout.unfinished)
        with pytest.raises(midvary.SessionClosedError):
            await session.vary("parent-1", 3)


async def test_the_names_before_the_rename_warn_and_still_work() -> None:
    """vary_many, vary_all and midvary.VaryOutcome warn, naming the new name, and still work."""
    with pytest.warns(
        DeprecationWarning, match=r"midvary\.VaryOutcome is deprecated, use midvary\.JobOutcome"
    ):
        assert midvary.VaryOutcome is midvary.JobOutcome
    async with fake_session() as (fake, session):
        with pytest.warns(
            DeprecationWarning, match=r"Session\.vary_all is deprecated, use Session\.submit_all"
        ) as caught:
            outcomes = await session.vary_all(list(requests(3)), concurrency=2)
        assert [o.index for o in outcomes] == [0, 1, 2]
        assert all(isinstance(o, midvary.JobOutcome) and o.ok for o in outcomes)
        with pytest.warns(
            DeprecationWarning, match=r"Session\.vary_many is deprecated, use Session\.submit_many"
        ):
            fanout = session.vary_many(list(requests(2)), concurrency=2)
        async with fanout as stream:
            more = [outcome async for outcome in stream]
        assert len(more) == 2
        assert len(fake.tasks) == 5
    # The warning points at the caller's line, not at midvary's alias.
    assert caught[0].filename == __file__
    assert "VaryOutcome" not in midvary.__all__
