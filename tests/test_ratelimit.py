"""The client-side submission limiter: a sliding window that a 429 slows down."""

from __future__ import annotations

import asyncio

import pytest

from midvary._ratelimit import SubmitLimiter
from midvary._validate import submit_rate as check_submit_rate


async def test_at_most_count_submissions_in_any_window() -> None:
    """No window of `window` seconds ever holds more than `count` slot entries."""
    limiter = SubmitLimiter((3, 0.2))
    loop = asyncio.get_running_loop()
    entries: list[float] = []

    async def submit() -> None:
        async with limiter.slot():
            entries.append(loop.time())
            await asyncio.sleep(0.01)  # the POST's round trip

    await asyncio.gather(*(submit() for _ in range(10)))
    entries.sort()
    for n, start in enumerate(entries):
        assert sum(1 for t in entries[: n + 1] if t > start - 0.2) <= 3


async def test_posts_in_flight_hold_their_slots() -> None:
    """A POST that has not ended keeps its slot: a full window of POSTs in flight blocks."""
    limiter = SubmitLimiter((2, 0.05))
    release = asyncio.Event()
    waits: list[float] = []

    async def slow_post() -> None:
        async with limiter.slot():
            await release.wait()

    posts = [asyncio.create_task(slow_post()) for _ in range(2)]
    await asyncio.sleep(0)  # let both POSTs take their slots

    async def blocked() -> None:
        async with limiter.slot(waits.append):
            pass

    waiter = asyncio.create_task(blocked())
    await asyncio.sleep(0.1)  # two windows pass; the slots are still held by the POSTs
    assert not waiter.done()
    assert waits == [0.0]
    release.set()
    await asyncio.gather(*posts, waiter)


async def test_refunded_slots_do_not_count() -> None:
    """A POST refused with 429 gives its place back."""
    limiter = SubmitLimiter((1, 60.0))
    async with limiter.slot() as slot:
        slot.refund()
    async with asyncio.timeout(1.0), limiter.slot():
        pass


async def test_slow_down_halves_and_grows_back_one_per_window() -> None:
    """A 429 halves the allowance (not below 1); each quiet window gives one back."""
    now = [100.0]
    limiter = SubmitLimiter((8, 10.0), clock=lambda: now[0])
    await limiter.slow_down(0.5)
    assert limiter.allowance == 4
    for _ in range(3):
        now[0] += 0.5  # each 429 after the previous pause halves again
        await limiter.slow_down(0.5)
    assert limiter.allowance == 1
    now[0] += 10.0
    assert limiter.allowance == 2
    now[0] += 35.0
    assert limiter.allowance == 5
    now[0] += 1000.0
    assert limiter.allowance == 8


async def test_slow_down_pauses_new_submissions() -> None:
    """After a 429, no new slot is given before the pause has passed."""
    limiter = SubmitLimiter((10, 1.0))
    loop = asyncio.get_running_loop()
    await limiter.slow_down(0.1)
    started = loop.time()
    async with limiter.slot():
        waited = loop.time() - started
    assert waited >= 0.09


async def test_no_limit_never_waits() -> None:
    """A rate of None lets every submission through."""
    limiter = SubmitLimiter(None)
    await limiter.slow_down(100.0)
    async with asyncio.timeout(1.0):
        for _ in range(100):
            async with limiter.slot():
                pass


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ((20, 10), (20, 10.0)), ([5, 0.5], (5, 0.5))]
)
def test_submit_rate_values(value: object, expected: object) -> None:
    """(count, seconds) pairs are normalised; None means no limit."""
    assert check_submit_rate(value) == expected


async def test_a_burst_of_429s_halves_once() -> None:
    """429s arriving during the pause of an earlier one do not halve the allowance again."""
    now = [0.0]
    limiter = SubmitLimiter((20, 10.0), clock=lambda: now[0])
    for _ in range(10):
        await limiter.slow_down(1.0)
    assert limiter.allowance == 10
    now[0] += 1.0
    await limiter.slow_down(1.0)
    assert limiter.allowance == 5


async def test_closing_ends_the_waits() -> None:
    """A submission waiting for a slot raises the close error instead of waiting on."""
    limiter = SubmitLimiter((1, 60.0))
    async with limiter.slot():
        pass

    async def wait_for_slot() -> None:
        async with limiter.slot():
            pass

    waiter = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0)
    limiter.close(RuntimeError("closed"))
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
