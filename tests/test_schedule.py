"""The poll schedule: cold backoff, learned from durations seen, and what feeds it."""

from __future__ import annotations

import itertools
import random
import statistics
from datetime import UTC, datetime, timedelta

import attrs
import pytest

import midvary
from midvary._polling import MIN_SAMPLES, DurationStats

from .conftest import FAST_POLL
from .mockapi import VARY_URL, MockAPI, record, record_url

NO_JITTER = midvary.PollPolicy(jitter=0)


def poll_times(
    policy: midvary.PollPolicy, known: tuple[float, float] | None, horizon: float
) -> list[float]:
    """Times (seconds after submission) at which a handle would poll, up to ``horizon``."""
    times: list[float] = []
    now, attempt = 0.0, 1
    while now < horizon:
        now += policy.delay(attempt, elapsed=now, known=known, rng=random.Random(attempt))
        times.append(now)
        attempt += 1
    return times


def test_cold_schedule_is_capped_backoff() -> None:
    """With nothing learned: first poll at initial_delay, then x factor up to max_delay."""
    times = poll_times(NO_JITTER, None, 40)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    assert gaps[:5] == [2.0, 3.0, 4.5, 6.75, 8.0]
    assert max(gaps) == NO_JITTER.max_delay


def test_reattached_handle_polls_at_once_then_backs_off() -> None:
    """Unknown submission time: poll 1 at once, later polls on the backoff."""
    assert NO_JITTER.delay(1) == 0.0
    assert NO_JITTER.delay(2) == 3.0
    assert NO_JITTER.delay(2, known=(20.0, 60.0)) == 3.0  # no elapsed: nothing to learn with


def detection(times: list[float], finish: float) -> tuple[int, float]:
    """(polls made, delay) for a task finishing at ``finish`` under poll ``times``."""
    for n, t in enumerate(times, 1):
        if t >= finish:
            return n, t - finish
    raise AssertionError("schedule ended before the task finished")


def test_learned_schedule_sleeps_through_the_early_part() -> None:
    """The first poll comes after the shortest duration seen, not seconds after submitting."""
    times = poll_times(NO_JITTER, (20.0, 60.0), 90)
    assert times[0] > 19.0
    gaps = [b - a for a, b in itertools.pairwise(times) if b < 60 * 1.05]
    assert all(g == pytest.approx(2 * NO_JITTER.target_delay) for g in gaps)  # type: ignore[operator]


def test_learned_schedule_beats_backoff_on_polls_at_similar_delay() -> None:
    """For tasks of 20-60 s: about 5 polls and ~target median delay, vs many more when cold."""
    rng = random.Random(7)
    finishes = [rng.uniform(20, 60) for _ in range(2000)]
    policy = midvary.PollPolicy()
    learned = poll_times(policy, (20.5, 59.0), 400)
    cold = poll_times(policy, None, 400)
    warm = [detection(learned, f) for f in finishes]
    base = [detection(cold, f) for f in finishes]
    assert statistics.mean(p for p, _ in warm) <= 5.0
    assert statistics.median(d for _, d in warm) <= policy.target_delay + policy.jitter  # type: ignore[operator]
    assert statistics.mean(p for p, _ in warm) < statistics.mean(p for p, _ in base) - 2


def test_past_the_longest_duration_it_backs_off() -> None:
    """Beyond every duration seen, the gap grows again up to the cap."""
    times = poll_times(NO_JITTER, (20.0, 30.0), 200)
    late = [b - a for a, b in itertools.pairwise(times) if a > 40]
    assert late == sorted(late)
    assert late[-1] == max(NO_JITTER.max_delay, 2 * NO_JITTER.target_delay)  # type: ignore[operator]


def test_target_delay_none_turns_learning_off() -> None:
    """target_delay=None keeps the backoff even when durations are known."""
    off = attrs.evolve(NO_JITTER, target_delay=None)
    assert poll_times(off, (20.0, 60.0), 40) == poll_times(off, None, 40)


def test_stats_need_enough_plausible_samples() -> None:
    """Bounds appear after MIN_SAMPLES plausible durations; junk is ignored."""
    stats = DurationStats()
    for bad in (-1.0, 0.0, 10**7):
        stats.add(bad)
    for n in range(MIN_SAMPLES - 1):
        stats.add(30.0 + n)
    assert stats.bounds() is None
    stats.add(25.0)
    assert stats.bounds() == (25.0, 30.0 + MIN_SAMPLES - 2)


async def test_session_learns_durations_from_provider_times(
    session: midvary.Session, api: MockAPI
) -> None:
    """Each successful task's completeTime - createTime feeds the session's schedule."""
    created = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    for n in range(MIN_SAMPLES):
        task_id = f"t{n}"
        api.envelope("POST", VARY_URL, data={"taskId": task_id})
        done = created + timedelta(seconds=20 + n)
        api.envelope(
            "GET",
            record_url(task_id),
            data=record(
                task_id,
                flag=1,
                createTime=created.isoformat(),
                completeTime=int(done.timestamp() * 1000),
            ),
        )
        await (await session.vary("parent-1", 0)).wait(poll=FAST_POLL)
    assert session._core.durations.bounds() == (20.0, 20.0 + MIN_SAMPLES - 1)
