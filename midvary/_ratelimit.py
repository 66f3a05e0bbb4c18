"""The client-side submission rate limiter: at most N submissions in any window of W seconds.

Why not ``aiolimiter``: its ``AsyncLimiter`` is a leaky bucket that lets ``max_rate``
acquisitions through at once and then refills continuously, so in the first window it
admits up to about twice ``max_rate``; the provider's limit is a sliding window ("20 new
requests per 10 seconds", beyond which HTTP 429, not queued), which that overshoots. It also
has no public way to change its rate at run time (the rate is cached in a private slot), and
a 429 must slow the limiter down. This module is the small sliding-window limiter that does
both, in about a hundred lines.

How it works:

- A slot is taken before a POST and stamped with the time its answer arrived (or the POST
  failed). The provider counts a submission when it accepts it, which is no later than the
  moment its answer arrives, so "at most N stamps in the last W seconds, plus the POSTs in
  flight" keeps the provider's own window within its limit whatever the network latency.
- Waiters are served first come, first served.
- :meth:`SubmitLimiter.slow_down` (called after a 429 that still came back, e.g. because
  another program uses the same key) halves the allowance (not below 1 per window) and pauses
  new submissions for the retry's wait. The allowance then grows back by 1 per quiet window
  (additive increase, multiplicative decrease).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

logger = logging.getLogger(__name__)

#: The provider's documented limit: 20 submissions per 10 seconds.
DEFAULT_SUBMIT_RATE: Final = (20, 10.0)

#: Called with the seconds a submission is about to wait for the limiter.
OnWait = Callable[[float], None]


class Slot:
    """One submission's place in the window; see :meth:`SubmitLimiter.slot`."""

    __slots__ = ("refunded",)

    def __init__(self) -> None:
        self.refunded = False

    def refund(self) -> None:
        """The POST was refused with 429: it does not count against the window."""
        self.refunded = True


class SubmitLimiter:
    """At most ``count`` submissions in any ``window`` seconds; ``None`` means no limit.

    Args:
        rate: ``(count, window_seconds)``, or ``None`` to let everything through at once.
        clock: Monotonic seconds; ``None`` means the event loop's clock.

    """

    def __init__(
        self, rate: tuple[int, float] | None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._allowance = rate[0] if rate is not None else 0
        self._stamps: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._paused_until = 0.0
        self._grown_at = 0.0
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"<SubmitLimiter rate={self.rate!r} allowance={self._allowance} "
            f"in_flight={self._in_flight}>"
        )

    @property
    def allowance(self) -> int:
        """Submissions currently allowed per window (the rate's count unless slowed down)."""
        self._grow(self._now())
        return self._allowance

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _grow(self, now: float) -> None:
        """Give back one submission per quiet window since the last slow-down."""
        if self.rate is None or self._allowance >= self.rate[0]:
            return
        windows = int((now - self._grown_at) // self.rate[1])
        if windows > 0:
            self._allowance = min(self.rate[0], self._allowance + windows)
            self._grown_at += windows * self.rate[1]

    def _wait_needed(self, now: float) -> float | None:
        """Seconds until a slot frees (0 when one is free); ``None``: until a POST ends."""
        assert self.rate is not None  # noqa: S101 - only called when limited
        window = self.rate[1]
        while self._stamps and self._stamps[0] <= now - window:
            self._stamps.popleft()
        self._grow(now)
        pause = self._paused_until - now
        if len(self._stamps) + self._in_flight < self._allowance:
            return max(pause, 0.0)
        if len(self._stamps) + self._in_flight - self._allowance >= len(self._stamps):
            return None  # every slot is taken by a POST in flight: wait for one to end
        # The slot that frees first: the (excess + 1)-th oldest stamp leaves the window.
        oldest = self._stamps[len(self._stamps) + self._in_flight - self._allowance]
        return max(oldest + window - now, pause, 0.0)

    @contextlib.asynccontextmanager
    async def slot(self, on_wait: OnWait | None = None) -> AsyncIterator[Slot]:
        """Hold one submission slot for the body (one POST); waits for a free one first.

        ``on_wait(seconds)`` is called before each wait the limiter imposes: when queued
        behind other waiting submissions, and at the head of the queue before each wait
        (seconds is the expected wait, at least; ``0.0`` when it waits for a POST in flight
        to end). The slot is
        stamped with the time the body ends, unless the body calls :meth:`Slot.refund`
        (the provider refused the POST with 429, so it used none of the provider's budget).
        """
        slot = Slot()
        if self.rate is None:
            yield slot
            return
        if on_wait is not None and self._turn.locked():
            # Queued behind another submission that is waiting: at least its wait.
            on_wait(self._wait_needed(self._now()) or 0.0)
        async with self._turn:
            while (wait := self._wait_needed(self._now())) != 0.0:
                if self._closed is not None:
                    raise self._closed
                if on_wait is not None:
                    on_wait(wait or 0.0)
                logger.debug("submission limiter: waiting %s s", wait)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
            if self._closed is not None:
                raise self._closed
            self._in_flight += 1
        try:
            yield slot
        finally:
            self._in_flight -= 1
            if not slot.refunded:
                self._stamps.append(self._now())
            self._changed.set()

    def close(self, error: BaseException) -> None:
        """Make every current and later wait for a slot raise ``error`` (the session closed)."""
        self._closed = error
        self._changed.set()

    async def slow_down(self, pause: float) -> int:
        """React to a 429 that got through: halve the allowance and pause ``pause`` seconds.

        429s that arrive while a pause is in effect extend it without halving again.
        Returns the new allowance (submissions per window). A coroutine, like a store's
        shared limiter (:class:`~midvary._store.StoreLimiter`), though nothing here waits.
        """
        if self.rate is None:
            return 0
        now = self._now()
        if now >= self._paused_until:
            # One halving per burst: the 429s of POSTs sent together arrive together.
            self._allowance = max(1, self._allowance // 2)
        self._grown_at = now
        self._paused_until = max(self._paused_until, now + max(pause, 0.0))
        self._changed.set()
        logger.info(
            "rate limited by the provider: now at most %d submissions per %g s",
            self._allowance,
            self.rate[1],
        )
        return self._allowance
