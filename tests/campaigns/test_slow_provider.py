"""Campaign 7: answers slower than the request timeout: GETs retried, POSTs uncertain."""

from __future__ import annotations

import asyncio

import attrs
import pytest

import midvary
from midvary.testing import FakeProvider, FakeSettings

from ..conditions import until
from ..conftest import FAST_POLL, FAST_RETRY
from .scenarios import slow_post_in_batch

SETTINGS = FakeSettings(task_duration=(0.05, 0.1), invisible_for=0.0, submit_limit=None)
TIMEOUT = 0.2  # seconds per request; the slow provider takes longer


def session_for(fake: FakeProvider) -> midvary.Session:
    """A session with a short request timeout against ``fake``."""
    return midvary.Session(
        api_key=fake.api_key,
        base_url=fake.base_url,
        poll=attrs.evolve(FAST_POLL, target_delay=0.02),
        retry=FAST_RETRY,
        request_timeout=TIMEOUT,
    )


async def test_slow_submit_is_uncertain_and_not_resent() -> None:
    """A POST answered after the timeout raises SubmitUncertainError; exactly one task exists."""
    async with FakeProvider(settings=attrs.evolve(SETTINGS, latency=TIMEOUT * 3)) as fake:
        async with session_for(fake) as session:
            with pytest.raises(midvary.SubmitUncertainError, match="accepted and billed") as info:
                await session.vary("parent-1", 0)
            assert info.value.request.task_id == "parent-1"
        await fake.close()  # lets the late handler finish creating the task it received
        assert fake.stats.requests["submit"] == 1
        assert fake.stats.tasks_created == 1
        assert fake.stats.duplicate_submissions == 0


async def test_slow_polls_are_retried_until_the_provider_recovers() -> None:
    """Polls timing out are retried; once answers are fast again the wait succeeds."""
    async with FakeProvider(settings=SETTINGS) as fake, session_for(fake) as session:
        handle = await session.vary("parent-1", 1)
        fake.update(latency=TIMEOUT * 2)
        before = fake.stats.requests["record-info"]
        waiter = asyncio.create_task(handle.wait(timeout=10.0))
        await until(lambda: fake.stats.requests["record-info"] >= before + 2)
        assert not waiter.done()  # two polls timed out and the wait goes on
        fake.update(latency=0.0)
        record = await waiter
        assert record.status is midvary.TaskStatus.SUCCESS
        assert fake.stats.tasks_created == 1


async def test_a_slow_post_in_a_fan_out_makes_only_that_job_uncertain() -> None:
    """One POST slower than the timeout in a batch: that job is uncertain, the rest succeed."""
    figures, outcomes = await slow_post_in_batch(12, slow=5, timeout=TIMEOUT)
    uncertain = outcomes[5]
    assert isinstance(uncertain.error, midvary.SubmitUncertainError)
    assert uncertain.error.request == uncertain.request
    assert uncertain.task_id is None
    assert all(o.ok for o in outcomes if o.index != 5), outcomes
    # The slow POST was carried out: 12 tasks, each accounted for, none twice.
    assert (figures.done, figures.uncertain, figures.tasks_created) == (11, 1, 12)
    assert (figures.lost, figures.duplicates) == (0, 0)
