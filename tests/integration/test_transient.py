"""Transient trouble: maintenance, rate-limit storms, faulted answers and lost submit answers."""

from __future__ import annotations

import asyncio

import attrs
import pytest

import midvary
from midvary.testing import FAULT_KINDS, ManualClock

from ..conditions import until
from .conftest import FAST_RETRY, OpenSession, StartFake, finish

MIRROR = pytest.mark.parametrize("mirror", [False, True], ids=["http-200", "http-mirrored"])
#: Enough retries to outlast a maintenance switch or a rate-limit storm in a test; during an
#: outage (455) a probe every 0.01 s doubling up to 0.05 s (the default's 2 s doubling to
#: 60 s made a maintenance switched off at once wait 6 s for its next probe).
PATIENT_RETRY = midvary.RetryPolicy(
    attempts=100,
    wait_initial=0.01,
    wait_max=0.05,
    wait_jitter=0.02,
    outage_probe=0.01,
    outage_probe_max=0.05,
)


@MIRROR
async def test_maintenance_window_during_polling_is_waited_out(
    start_fake: StartFake, open_session: OpenSession, clock: ManualClock, mirror: bool
) -> None:
    """Polls answered 455 inside a maintenance window are retried; the wait then succeeds."""
    fake = await start_fake(
        clock=clock,
        invisible_for=0.0,
        task_duration=(3.0, 4.0),
        maintenance=[(1.0, 2.0)],
        mirror_http_status=mirror,
    )
    session = await open_session(fake, target_delay=None)
    handle = await session.vary("parent-maintenance", 0)
    clock.advance(1.5)  # into the window

    waiter = asyncio.create_task(handle.wait())
    await until(lambda: fake.stats.codes[455] >= 3)
    assert not waiter.done()
    finish(clock, fake, handle.task_id)  # past the window and the task's end
    record = await waiter

    assert record.status is midvary.TaskStatus.SUCCESS
    assert fake.stats.tasks_created == 1


@MIRROR
async def test_maintenance_on_submit_is_retried_into_one_task(
    start_fake: StartFake, open_session: OpenSession, mirror: bool
) -> None:
    """Submissions answered 455 are re-sent (they were refused); exactly one task results."""
    fake = await start_fake(mirror_http_status=mirror)
    session = await open_session(fake, retry=PATIENT_RETRY)
    fake.set_maintenance(True)

    submitting = asyncio.create_task(session.vary("parent-455", 2))
    await until(lambda: fake.stats.codes[455] >= 2)
    assert not submitting.done()
    fake.set_maintenance(False)
    handle = await submitting

    assert fake.stats.tasks_created == 1
    assert fake.stats.requests["submit"] == fake.stats.codes[455] + 1
    assert (await handle).status is midvary.TaskStatus.SUCCESS


async def test_maintenance_beyond_the_outage_budget_surfaces_as_455(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Maintenance outlasting RetryPolicy.outage_budget (not attempts) raises 455."""
    fake = await start_fake()
    retry = midvary.RetryPolicy(
        attempts=2,
        wait_initial=0.01,
        wait_max=0.01,
        wait_jitter=0.0,
        outage_budget=0.3,
        outage_probe=0.01,
        outage_probe_max=0.05,
    )
    session = await open_session(fake, retry=retry)
    fake.set_maintenance(True)

    with pytest.raises(midvary.ServiceUnavailableError) as info:
        await session.vary("parent-455", 0)

    assert info.value.code == 455
    # More tries than attempts: the outage's budget is time, probed at a growing interval.
    assert fake.stats.requests["submit"] > retry.attempts
    assert fake.stats.tasks_created == 0


async def test_an_outage_budget_of_zero_gives_up_at_the_first_455(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """outage_budget=0: maintenance is not waited out at all."""
    fake = await start_fake()
    session = await open_session(fake, retry=attrs.evolve(FAST_RETRY, outage_budget=0.0))
    fake.set_maintenance(True)

    with pytest.raises(midvary.ServiceUnavailableError):
        await session.vary("parent-455", 1)
    assert fake.stats.requests["submit"] == 1


async def test_rate_limit_storm_submits_every_job_exactly_once(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """24 concurrent vary calls against 3 per 0.1 s: many 429s, each job accepted once."""
    fake = await start_fake(submit_limit=(3, 0.1))
    session = await open_session(fake, retry=PATIENT_RETRY)
    jobs = [(f"parent-storm-{parent}", index) for parent in range(6) for index in range(4)]

    handles = await asyncio.gather(*(session.vary(parent, index) for parent, index in jobs))

    assert fake.stats.rate_limited > 0
    assert fake.stats.tasks_created == len(jobs)
    assert fake.stats.duplicate_submissions == 0
    assert len({handle.task_id for handle in handles}) == len(jobs)
    submitted = [fake.task(handle.task_id) for handle in handles]
    assert [(task.parent_task_id, task.image_index) for task in submitted] == jobs
    records = await asyncio.gather(*handles)
    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
async def test_faulted_polls_are_retried_until_every_wait_completes(
    start_fake: StartFake, open_session: OpenSession, kind: str
) -> None:
    """With most record-info answers spoiled by one fault kind, every wait still succeeds."""
    fake = await start_fake(
        seed=5, fault_rate=0.6, fault_kinds=[kind], fault_endpoints=["record-info"]
    )
    session = await open_session(fake, max_delay=0.04)

    handles = [await session.vary("parent-faulty-polls", index) for index in range(4)]
    records = await asyncio.gather(*handles)

    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)
    assert fake.stats.faults[kind] > 0
    assert fake.stats.tasks_created == 4


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
async def test_a_faulted_submit_answer_is_uncertain_and_never_resent(
    start_fake: StartFake, open_session: OpenSession, kind: str
) -> None:
    """A spoiled submit answer raises SubmitUncertainError after exactly one POST."""
    fake = await start_fake(fault_rate=1.0, fault_kinds=[kind], fault_endpoints=["submit"])
    session = await open_session(fake)

    with pytest.raises(midvary.SubmitUncertainError) as info:
        await session.vary("parent-faulty-submit", 1)

    assert info.value.request == midvary.VaryRequest(task_id="parent-faulty-submit", image_index=1)
    assert fake.stats.requests["submit"] == 1
    assert fake.stats.faults[kind] == 1


async def test_a_lost_submit_answer_is_uncertain_and_never_resent(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """The task is created (and billed) but its answer lost: one POST, SubmitUncertainError."""
    fake = await start_fake(drop_submit_answer_rate=1.0, credits=5)
    session = await open_session(fake)

    with pytest.raises(midvary.SubmitUncertainError) as info:
        await session.vary("parent-lost", 3, water_mark="wm")

    error = info.value
    assert isinstance(error, midvary.TransportError)
    assert error.sent
    assert error.request == midvary.VaryRequest(
        task_id="parent-lost", image_index=3, water_mark="wm"
    )
    assert "parent-lost" in str(error)
    assert fake.stats.requests["submit"] == 1
    assert fake.stats.dropped_submit_answers == 1
    assert fake.stats.tasks_created == 1
    assert fake.credits_left == 4
    (task,) = fake.tasks.values()
    assert (task.parent_task_id, task.image_index, task.water_mark) == ("parent-lost", 3, "wm")


async def test_faults_on_both_endpoints_never_duplicate_a_submission(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """Mixed faults everywhere: each job either succeeds or is reported uncertain, once."""
    fake = await start_fake(seed=9, fault_rate=0.3)
    session = await open_session(fake)

    async def job(index: int) -> midvary.TaskRecord | midvary.SubmitUncertainError:
        try:
            handle = await session.vary(f"parent-mixed-{index // 4}", index % 4)
        except midvary.SubmitUncertainError as exc:
            return exc
        return await handle

    outcomes = await asyncio.gather(*(job(index) for index in range(16)))

    records = [outcome for outcome in outcomes if isinstance(outcome, midvary.TaskRecord)]
    uncertain = [outcome for outcome in outcomes if not isinstance(outcome, midvary.TaskRecord)]
    assert records
    assert all(record.status is midvary.TaskStatus.SUCCESS for record in records)
    assert fake.stats.requests["submit"] == 16
    assert fake.stats.duplicate_submissions == 0
    # A fault strikes before the provider sees a submission: exactly the answered ones made
    # tasks, and every other job was reported uncertain with its request.
    assert fake.stats.tasks_created == len(records)
    jobs = {(f"parent-mixed-{index // 4}", index % 4) for index in range(16)}
    answered = {(record.params["taskId"], record.params["imageIndex"]) for record in records}
    unanswered = {(error.request.task_id, error.request.image_index) for error in uncertain}
    assert answered | unanswered == jobs
    assert not answered & unanswered
