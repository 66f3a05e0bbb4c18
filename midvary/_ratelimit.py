"""The submission window: at most N submissions in any window of W seconds, and its slow-down.

:class:`Window` is the pure rule, kept once: the in-process :class:`SubmitLimiter` runs on it,
the local stores (memory, SQLite) keep one per account and run it inside their transactions,
and the Redis store's scripts (``_store/_lua.py``) are its twin in Lua, on the server's clock.

Why not ``aiolimiter``: its ``AsyncLimiter`` is a leaky bucket that lets ``max_rate``
acquisitions through at once and then refills continuously, so in the first window it
admits up to about twice ``max_rate``; the provider's limit is a sliding window ("20 new
requests per 10 seconds", beyond which HTTP 429, not queued), which that overshoots. It also
has no public way to change its rate at run time, and a 429 must slow the limiter down.

The rule:

- A slot is taken before a POST and stamped with the time its answer arrived (or the POST
  failed). The provider counts a submission when it accepts it, which is no later than the
  moment its answer arrives, so "at most N stamps in the last W seconds, plus the POSTs in
  flight" keeps the provider's own window within its limit whatever the network latency. A
  slot in flight has a lease: a slot whose owner died becomes a stamp at its lease's end.
- A refunded slot (the POST was certainly not accepted) leaves no stamp.
- :meth:`Window.slow_down` (a 429 that still came back, e.g. because another program uses
  the same key) halves the allowance (not below 1 per window, once per pause) and pauses
  new submissions for the retry's wait. The allowance then grows back by 1 per quiet window
  (additive increase, multiplicative decrease).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Final

import attrs

logger = logging.getLogger(__name__)

#: The provider's documented limit: 20 submissions per 10 seconds.
DEFAULT_SUBMIT_RATE: Final = (20, 10.0)

#: Called with the seconds a submission is about to wait for the limiter.
OnWait = Callable[[float], None]

#: The shortest wait the window hands out (seconds): a wait of zero would spin.
MIN_WAIT: Final = 0.001


@attrs.define(kw_only=True)
class Window:
    """One account's submission window; every time is seconds on one clock.

    Attributes:
        allowance: Submissions allowed per window now (``None``: the rate's count).
        grown_at: When the allowance last grew back (or was cut).
        paused_until: No new slot before this time.
        stamps: Slot id -> when its POST ended (kept for one window).
        flight: Slot id -> when its lease ends (a POST in flight).

    """

    allowance: int | None = None
    grown_at: float = 0.0
    paused_until: float = 0.0
    stamps: dict[str, float] = attrs.field(factory=dict)
    flight: dict[str, float] = attrs.field(factory=dict)

    def tidy(self, now: float, count: int, window: float) -> int:
        """Expire dead slots into stamps, drop old stamps, grow the allowance; return it."""
        for slot_id, lease_until in list(self.flight.items()):
            if lease_until < now:
                # A dead process's POST may have been accepted up to its lease's end.
                del self.flight[slot_id]
                self.stamps[slot_id] = lease_until
        for slot_id, stamp in list(self.stamps.items()):
            if stamp <= now - window:
                del self.stamps[slot_id]
        allowance = count if self.allowance is None else min(self.allowance, count)
        if allowance < count:
            windows = math.floor((now - self.grown_at) / window)
            if windows > 0:
                allowance = min(count, allowance + windows)
                self.grown_at += windows * window
        self.allowance = allowance
        return allowance

    def wait(self, now: float, rate: tuple[int, float]) -> float | None:
        """Seconds until a slot may be free: ``0.0`` if one is free now.

        Otherwise at least :data:`MIN_WAIT`, or ``None`` when every slot is a POST in flight
        (free once one ends: the owner of those POSTs learns when they end, others poll,
        see :meth:`poll_wait`).
        """
        count, window = rate
        allowance = self.tidy(now, count, window)
        used = len(self.stamps) + len(self.flight)
        pause = self.paused_until - now
        if used < allowance:
            return 0.0 if pause <= 0 else max(pause, MIN_WAIT)
        excess = used - allowance
        if excess >= len(self.stamps):
            return None
        # The slot that frees first: the (excess + 1)-th oldest stamp leaves the window.
        oldest = sorted(self.stamps.values())[excess]
        return max(oldest + window - now, pause, MIN_WAIT)

    def acquire(
        self, now: float, rate: tuple[int, float], slot_id: str, lease_s: float
    ) -> float | None:
        """Take a slot for ``lease_s`` seconds if one is free (idempotent per ``slot_id``).

        Returns ``0.0`` when taken, else what :meth:`wait` says.
        """
        self.tidy(now, *rate)
        if slot_id in self.flight:
            return 0.0
        wait = self.wait(now, rate)
        if wait == 0.0:
            self.flight[slot_id] = now + lease_s
        return wait

    def poll_wait(self, now: float, rate: tuple[int, float]) -> float:
        """Seconds to wait when :meth:`acquire` said ``None`` and the POSTs are another's.

        A short poll (a tenth of a slot's spacing, within 10-250 ms), at most until the first
        lease ends, and no sooner than the pause ends.
        """
        count, window = rate
        first_end = min(self.flight.values(), default=now)
        wait = min(max(min(window / count, 0.25), 0.01), first_end - now)
        return max(wait, self.paused_until - now, MIN_WAIT)

    def end(self, now: float, slot_id: str, *, refunded: bool) -> float | None:
        """End a slot: a stamp at ``now`` (returned), or nothing when refunded (``None``)."""
        self.flight.pop(slot_id, None)
        if refunded:
            self.stamps.pop(slot_id, None)
            return None
        self.stamps[slot_id] = now
        return now

    def pause(self, now: float, pause_s: float) -> float:
        """No new slot for ``pause_s`` seconds (an account refusal, an outage).

        The allowance stays. Returns the seconds left of the pause (a longer one is kept).
        """
        self.paused_until = max(self.paused_until, now + max(pause_s, 0.0))
        return self.paused_until - now

    def slow_down(self, now: float, rate: tuple[int, float], pause_s: float) -> int:
        """A 429 got through: halve the allowance (once per pause), pause ``pause_s`` seconds.

        Returns the new allowance.
        """
        allowance = self.tidy(now, *rate)
        if now >= self.paused_until:
            # One halving per burst: the 429s of POSTs sent together arrive together.
            allowance = self.allowance = max(1, allowance // 2)
        self.grown_at = now
        self.paused_until = max(self.paused_until, now + max(pause_s, 0.0))
        return allowance


_ids = itertools.count()
_process = uuid.uuid4().hex


def _new_process() -> None:
    global _process  # noqa: PLW0603 - a forked child must not repeat its parent's ids
    _process = uuid.uuid4().hex


os.register_at_fork(after_in_child=_new_process)


def new_id() -> str:
    """A slot or claim holder id unique across processes (a random id per process, a counter)."""
    return f"{_process}{next(_ids):x}"


class Slot:
    """One POST's place in a window; see :meth:`WindowLimiter.slot`."""

    __slots__ = ("refunded", "slot_id")

    def __init__(self, slot_id: str) -> None:
        self.slot_id = slot_id
        self.refunded = False

    def refund(self) -> None:
        """The POST was certainly not accepted (429, never sent): it does not count."""
        self.refunded = True


class WindowLimiter(abc.ABC):
    """The queue of this process's submissions for a window's slots, and its close.

    Submissions of this process take turns, first come, first served; the head asks the
    window (:meth:`_acquire`) and waits what it says, woken early when one of this process's
    slots ends or the window slows down. :class:`SubmitLimiter` runs on this process's
    own :class:`Window`, ``_store.StoreLimiter`` on a store's shared one.

    Args:
        rate: ``(count, window_seconds)``, or ``None`` to let everything through at once.

    """

    def __init__(self, rate: tuple[int, float] | None) -> None:
        self.rate = rate
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed: BaseException | None = None

    @abc.abstractmethod
    async def _acquire(self, slot_id: str) -> float | None:
        """Take the slot: ``0.0``, else seconds to wait (``None``: until a slot ends)."""

    @abc.abstractmethod
    async def _end(self, slot: Slot) -> None:
        """End the slot: stamped now, or nothing if it was refunded."""

    def _queued_wait(self) -> float | None:
        """What ``on_wait`` is told when queued behind a waiting submission (``None``: nothing)."""
        return None

    @contextlib.asynccontextmanager
    async def slot(self, on_wait: OnWait | None = None) -> AsyncIterator[Slot]:
        """Hold one submission slot for the body (one POST); waits for a free one first.

        ``on_wait(seconds)`` is called before each wait the limiter imposes, with the
        expected wait (at least; ``0.0`` when it waits for a POST in flight to end). The
        slot is stamped with the time the body ends, unless the body calls
        :meth:`Slot.refund` (the provider refused the POST: it used none of its budget).

        Raises:
            BaseException: The error :meth:`close` was given.

        """
        slot = Slot(new_id())
        if self.rate is None:
            yield slot
            return
        if on_wait is not None and self._turn.locked():
            queued = self._queued_wait()
            if queued is not None:
                on_wait(queued)
        async with self._turn:
            while True:
                if self._closed is not None:
                    raise self._closed
                wait = await self._acquire(slot.slot_id)
                if wait == 0.0:
                    break
                if on_wait is not None:
                    on_wait(wait or 0.0)
                logger.debug("submission limiter: waiting %s s", wait)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
        try:
            yield slot
        finally:
            await self._end(slot)
            self._changed.set()  # wake this process's next waiter at once

    def close(self, error: BaseException) -> None:
        """Make every current and later wait for a slot raise ``error`` (the session closed)."""
        self._closed = error
        self._changed.set()


class SubmitLimiter(WindowLimiter):
    """At most ``count`` submissions in any ``window`` seconds, in this process.

    Args:
        rate: ``(count, window_seconds)``, or ``None`` to let everything through at once.
        clock: Monotonic seconds; ``None`` means the event loop's clock.

    """

    def __init__(
        self, rate: tuple[int, float] | None, *, clock: Callable[[], float] | None = None
    ) -> None:
        super().__init__(rate)
        self._clock = clock
        self._window = Window()

    def __repr__(self) -> str:
        window = self._window
        return (
            f"<SubmitLimiter rate={self.rate!r} allowance={window.allowance} "
            f"in_flight={len(window.flight)}>"
        )

    @property
    def allowance(self) -> int:
        """Submissions currently allowed per window (the rate's count unless slowed down)."""
        if self.rate is None:
            return 0
        return self._window.tidy(self._now(), *self.rate)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _queued_wait(self) -> float:
        assert self.rate is not None  # noqa: S101 - only called when limited
        return self._window.wait(self._now(), self.rate) or 0.0

    async def _acquire(self, slot_id: str) -> float | None:
        assert self.rate is not None  # noqa: S101 - only called when limited
        # This process's slots end only through ``slot()``: their lease never runs out.
        return self._window.acquire(self._now(), self.rate, slot_id, math.inf)

    async def _end(self, slot: Slot) -> None:
        self._window.end(self._now(), slot.slot_id, refunded=slot.refunded)

    async def pause(self, seconds: float) -> None:
        """Nothing: the fan-out's stop and the outage watch hold this process's submissions.

        A store's limiter pauses the other processes too (``StoreLimiter.pause``).
        """

    async def slow_down(self, pause: float) -> int:
        """React to a 429 that got through: halve the allowance and pause ``pause`` seconds.

        429s that arrive while a pause is in effect extend it without halving again.
        Returns the new allowance (submissions per window). A coroutine, like a store's
        shared limiter, though nothing here waits.
        """
        if self.rate is None:
            return 0
        allowance = self._window.slow_down(self._now(), self.rate, pause)
        self._changed.set()
        logger.info(
            "rate limited by the provider: now at most %d submissions per %g s",
            allowance,
            self.rate[1],
        )
        return allowance
