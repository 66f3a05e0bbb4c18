"""Recovery by callback: a submission whose answer was lost is found by the provider's callback.

The fake provider creates the task and then closes the connection unanswered
(``drop_submit_answer_rate``), and calls the task back at its ``callBackUrl`` as the real
one does. The recovered task is confirmed with one GET whose echo must be the submission's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import midvary
from midvary._store import MemoryStore
from midvary.testing import FakeProvider, FakeSettings

from .conftest import FAST_POLL, FAST_RETRY
from .test_callbacks import (
    HMAC_KEY,
    NEVER,
    StartWorld,
    World,
    callback_body,
    signed,
    start_world,
    until,
)

__all__ = ["start_world"]


async def lost_submission(
    session: midvary.Session, world: World, parent: str = "parent-1", **kwargs: object
) -> tuple[midvary.SubmitUncertainError, str]:
    """Submit one vary whose answer the fake drops; the error and the task it created."""
    before = set(world.fake.tasks)
    with pytest.raises(midvary.SubmitUncertainError) as info:
        await session.vary(parent, 2, **kwargs)  # type: ignore[arg-type]
    (task_id,) = set(world.fake.tasks) - before
    return info.value, task_id


async def test_recover_awaits_the_callback_of_a_lost_answer(start_world: StartWorld) -> None:
    """session.recover() returns the task the callback named, confirmed with one GET."""
    world = await start_world(drop_submit_answer_rate=1.0)
    async with world.session() as session:
        error, task_id = await lost_submission(session, world)
        assert world.receiver.active_tokens == 1  # kept for the provider's callback
        recovering = asyncio.create_task(session.recover(error, timeout=30.0))
        world.finish(task_id)
        handle = await recovering
        assert handle.task_id == task_id
        record = await handle  # the confirming GET saw it final: no other request
        assert record.status is midvary.TaskStatus.SUCCESS
        assert record.parent_task_id == "parent-1"
        assert world.polls(task_id) == 1
        assert await session.recover(error) is handle  # asked again: the same, no GET
    assert world.fake.stats.tasks_created == 1
    assert world.fake.stats.callbacks_delivered == 1


async def test_recover_gives_the_error_back_when_no_callback_comes(
    start_world: StartWorld,
) -> None:
    """No delivery within the timeout: the same error again, and the token still lives."""
    world = await start_world(drop_submit_answer_rate=1.0)
    async with world.session() as session:
        error, task_id = await lost_submission(session, world)
        with pytest.raises(midvary.SubmitUncertainError) as info:
            await session.recover(error, timeout=0.05)
        assert info.value is error
        waiter = asyncio.create_task(session.recover(error))
        world.finish(task_id)
        assert (await waiter).task_id == task_id
        with pytest.raises(TypeError, match="SubmitUncertainError"):
            await session.recover(ValueError("no"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            await session.recover(error, timeout=-1)


async def test_a_delivery_naming_another_task_is_not_trusted(start_world: StartWorld) -> None:
    """A delivery to a lost ticket naming another task is refuted by the GET's echo."""
    world = await start_world(drop_submit_answer_rate=1.0)
    async with world.session() as session:
        error, task_id = await lost_submission(session, world)
        url = world.callback_url(task_id)
        _other_error, other = await lost_submission(session, world, parent="parent-2")
        recovering = asyncio.create_task(session.recover(error, timeout=30.0))
        # The token is the delivery's credential; the task it names is only a claim.
        assert await world.post(url, callback_body(other)) == 200
        await until(lambda: world.polls(other) == 1)
        assert not recovering.done()
        world.finish(task_id)
        handle = await recovering
    assert handle.task_id == task_id


async def test_a_signed_delivery_to_a_lost_ticket_is_checked_against_its_task(
    start_world: StartWorld,
) -> None:
    """With hmac_key, the signature must cover the task the body names: else 401."""
    world = await start_world(drop_submit_answer_rate=1.0, callbacks=False, hmac_key=HMAC_KEY)
    async with world.session() as session:
        error, task_id = await lost_submission(session, world)
        url = world.callback_url(task_id)
        body = callback_body(task_id)
        assert await world.post(url, body) == 401  # unsigned
        assert await world.post(url, body, signed("another-task")) == 401
        assert await world.post(url, b"not json", signed(task_id)) == 400
        assert world.polls(task_id) == 0
        assert await world.post(url, body, signed(task_id)) == 200
        world.finish(task_id)
        handle = await session.recover(error, timeout=30.0)
    assert handle.task_id == task_id
    assert world.polls(task_id) == 1


async def test_without_a_receiver_nothing_is_recovered(start_world: StartWorld) -> None:
    """No receiver, or the request's own callback_url: recover() raises the error at once."""
    world = await start_world(drop_submit_answer_rate=1.0)
    async with world.session(callbacks=None) as session:
        error, _ = await lost_submission(session, world)
        with pytest.raises(midvary.SubmitUncertainError):
            await session.recover(error)
    async with world.session() as session:
        own = f"{world.receiver.public_url}/not-a-ticket"
        error, _ = await lost_submission(session, world, callback_url=own)
        with pytest.raises(midvary.SubmitUncertainError):
            await session.recover(error)


async def test_closing_the_session_ends_a_recovery(start_world: StartWorld) -> None:
    """A recovery waiting for its callback ends with the session (its token forgotten)."""
    world = await start_world(drop_submit_answer_rate=1.0)
    session = world.session()
    async with session:
        error, _ = await lost_submission(session, world)
        waiter = asyncio.create_task(session.recover(error))
        await asyncio.sleep(0)
    with pytest.raises((midvary.SubmitUncertainError, midvary.SessionClosedError)):
        await waiter
    assert world.receiver.active_tokens == 0


async def test_a_recovered_key_is_reattached_by_a_rerun(
    start_world: StartWorld, tmp_path: Path
) -> None:
    """A keyed lost answer, recovered: the key records the task; a re-run sends nothing."""
    world = await start_world(drop_submit_answer_rate=1.0)
    async with midvary.SQLiteStore(tmp_path / "keys.sqlite") as store:
        async with world.session(store=store) as session:
            error, task_id = await lost_submission(session, world, key="order-1/2")
            recovering = asyncio.create_task(session.recover(error, timeout=30.0))
            world.finish(task_id)
            assert (await recovering).task_id == task_id
        (job,) = await store.unfinished()
        assert (job.state, job.task_id) == ("submitted", task_id)
        async with world.session(store=store, callbacks=None) as again:
            handle = await again.vary("parent-1", 2, key="order-1/2")
            assert handle.task_id == task_id
    assert world.fake.stats.tasks_created == 1


async def test_a_later_run_recovers_a_key_through_the_shared_store(
    start_world: StartWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that lost the answer is gone: the next run of its key finds the task.

    The delivery reaches a receiver that does not hold the token: it keeps the task the
    delivery names in the shared store (answering 503: the answer may still come). A later
    run of the key finds its token from the key, confirms the task with one GET, records it
    and re-attaches, without sending anything.
    """
    monkeypatch.setattr("midvary._callbacks._BIND_WAIT", 0.01)  # the real wait is 5 s
    world = await start_world(drop_submit_answer_rate=1.0, callback_retry_delays=())
    tokens = MemoryStore()
    first = midvary.CallbackReceiver(store=tokens, safety_poll=NEVER)
    await first.start()
    assert first.public_url is not None
    # A replica of the same fleet, at the same public URL (a load balancer in front).
    second = midvary.CallbackReceiver(public_url=first.public_url, store=tokens)
    try:
        async with midvary.SQLiteStore(tmp_path / "keys.sqlite") as store:
            async with world.session(store=store, callbacks=first) as session:
                _error, task_id = await lost_submission(session, world, key="order-1/2")
            # The first run ended (its tickets forgotten); the provider calls back now.
            world.finish(task_id)
            await world.fake.settle_callbacks()
            assert [f.reason for f in world.fake.stats.callback_failures] == ["HTTP 503"]
            async with world.session(store=store, callbacks=second) as rerun:
                handle = await rerun.vary("parent-1", 2, key="order-1/2")
                assert handle.task_id == task_id
                assert (await handle).status is midvary.TaskStatus.SUCCESS
            (job,) = await store.unfinished()
            assert (job.state, job.task_id) == ("submitted", task_id)
        assert world.polls(task_id) == 1
        assert world.fake.stats.tasks_created == 1
    finally:
        await first.stop()
        await second.stop()


# -- fan-out -------------------------------------------------------------------------------


@pytest.fixture
async def live_fake() -> AsyncIterator[FakeProvider]:
    """A fake on the real clock with quick tasks, losing 40% of its answers."""
    settings = FakeSettings(
        task_duration=(0.05, 0.15),
        invisible_for=0.0,
        submit_limit=None,
        drop_submit_answer_rate=0.4,
    )
    async with FakeProvider(settings=settings, seed=3) as fake:
        yield fake


async def test_a_fan_out_waits_for_the_callbacks_of_lost_answers(live_fake: FakeProvider) -> None:
    """Every job succeeds; those whose answer was lost are recovered, nothing sent twice."""
    requests = [
        midvary.VaryRequest(task_id=f"parent-{n // 4}", image_index=n % 4) for n in range(12)
    ]
    async with (
        midvary.CallbackReceiver(safety_poll=FAST_POLL) as receiver,
        midvary.Session(
            api_key=live_fake.api_key,
            base_url=live_fake.base_url,
            retry=FAST_RETRY,
            submit_rate=None,
            callbacks=receiver,
        ) as session,
    ):
        await receiver.start()
        outcomes = await session.submit_all(requests)
    assert all(outcome.ok for outcome in outcomes), [o.error for o in outcomes]
    recovered = [outcome for outcome in outcomes if outcome.recovered]
    assert len(recovered) == live_fake.stats.dropped_submit_answers > 0
    assert {o.task_id for o in outcomes} == set(live_fake.tasks)
    for outcome in recovered:
        assert outcome.request is not None
        assert live_fake.task(outcome.task_id or "").image_index == outcome.request.image_index
    assert live_fake.stats.tasks_created == 12
    assert live_fake.stats.duplicate_submissions == 0


async def test_a_fan_out_job_waits_no_longer_than_its_timeout(start_world: StartWorld) -> None:
    """No callback comes (none created, say): the job is uncertain at its own deadline."""
    world = await start_world(drop_submit_answer_rate=1.0, callbacks=False)
    request = midvary.VaryRequest(task_id="parent-1", image_index=3)
    async with world.session() as session:
        (outcome,) = await session.submit_all([request], timeout=0.05)
        assert outcome.uncertain
        assert not outcome.recovered
        assert outcome.task_id is None
        assert world.receiver.active_tokens == 1  # session.recover() could still use it
