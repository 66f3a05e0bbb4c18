"""How often to poll: what a session learns, the safety policy, the sleep between polls.

This module owns what a handle needs to decide *when* it asks ``record-info`` again (the
schedule itself is :meth:`PollPolicy.delay`, a pure function of the policy):

- :class:`DurationStats`, what a session learns about task durations;
- :data:`DEFAULT_SAFETY_POLL`, the slow schedule of handles that wait on a callback;
- :class:`Alarm`, the interruptible sleep between two polls (a callback ends it early);
- :class:`PollHealth`, whether a session's polls keep failing: one warning when they have
  failed for ``PollPolicy.warn_failing_after`` seconds, one when they succeed again.

The handle's wait loop (:meth:`TaskHandle.wait`) strings these together, under one
``asyncio.timeout`` per wait (its deadline, and the session's close).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ._config import PollPolicy

if TYPE_CHECKING:
    from ._models import TaskRecord

logger = logging.getLogger(__name__)

#: The slow polling of handles that wait on a callback: a safety net for a delivery that
#: never arrives. Plain backoff (no learned schedule, which would poll densely where tasks
#: finish): polls at about 60, 180, 300, ... s after submission; 900 s deadline.
DEFAULT_SAFETY_POLL: Final = PollPolicy(
    initial_delay=60.0, factor=2.0, max_delay=120.0, jitter=5.0, target_delay=None
)

#: Fewer successful tasks than this and the schedule stays the plain backoff.
MIN_SAMPLES = 5
#: Only recent tasks count, so the schedule follows the provider when it speeds up or slows.
WINDOW = 50
#: Durations outside (0, a day] are clock trouble, not tasks.
_LONGEST_PLAUSIBLE = 86_400.0


class DurationStats:
    """Durations, in seconds, of the last ``WINDOW`` tasks a session saw succeed."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=WINDOW)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        """Record one task's duration in seconds; implausible values are ignored."""
        if 0 < seconds <= _LONGEST_PLAUSIBLE:
            self._samples.append(seconds)

    def learn(self, record: TaskRecord, *, submitted_at: float | None) -> None:
        """Record the duration of a task first seen successful just now.

        The provider's own ``completeTime - createTime`` is exact and preferred; without it,
        the time since ``submitted_at`` (a ``time.monotonic()`` reading, ``None`` when
        unknown) is used, which overstates the duration by the detection delay.
        """
        if record.created_at is not None and record.completed_at is not None:
            seconds = (record.completed_at - record.created_at).total_seconds()
        elif submitted_at is not None:
            seconds = time.monotonic() - submitted_at
        else:
            return
        self.add(seconds)

    def bounds(self) -> tuple[float, float] | None:
        """``(shortest, longest)`` duration in seconds, or ``None`` if too few were seen."""
        if len(self._samples) < MIN_SAMPLES:
            return None
        return min(self._samples), max(self._samples)


class Alarm:
    """The interruptible sleeps of one handle's waits, and the news that ends them.

    A handle sleeps on its alarm between polls; a callback ends the sleep early
    (:meth:`notify`: poll now). :meth:`finished` records that the task was seen final and
    runs ``on_final`` once (a callback ticket shortens its expiry). The session's close
    does not go through the alarm: it expires each wait's ``asyncio.timeout``, which also
    cuts a poll request in flight.
    """

    __slots__ = ("_sleepers", "_woken", "final", "notified", "on_final")

    def __init__(self) -> None:
        self._sleepers: set[asyncio.Future[None]] = set()
        # News came while nobody slept: the next sleep ends at once.
        self._woken = False
        #: Whether the task was seen final.
        self.final = False
        #: How many times a callback said the task may be final.
        self.notified = 0
        #: Called once, when the task is first seen final; ``None`` for nothing.
        self.on_final: Callable[[], None] | None = None

    @property
    def sleeping(self) -> int:
        """How many sleeps are in progress."""
        return len(self._sleepers)

    def finished(self) -> None:
        """The task was seen final: run ``on_final`` once."""
        if not self.final:
            self.final = True
            if self.on_final is not None:
                self.on_final()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`notify` interrupts."""
        if self._woken:
            self._woken = False
            return
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)

    def notify(self) -> None:
        """A callback says the task may be final: poll once now (or as soon as awaited)."""
        if self.final:
            return
        self.notified += 1
        if self._sleepers:
            for sleeper in self._sleepers:
                _resolve(sleeper)
        else:
            # Nobody sleeps: a poll is in flight or nobody awaits yet. Remember the news, so
            # the next sleep (or the first wait's initial delay) is skipped.
            self._woken = True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class PollHealth:
    """Whether a session's polls keep failing, said once in a warning (and once when over).

    Each handle reports each poll's end; any success ends a failing spell. Times are
    ``time.monotonic()`` readings, in seconds.
    """

    __slots__ = ("_warned", "since")

    def __init__(self) -> None:
        #: When the current spell of failing polls began (a ``time.monotonic()`` reading);
        #: ``None`` while polls succeed.
        self.since: float | None = None
        self._warned = False

    def failed(self, error: BaseException, now: float, warn_after: float | None) -> None:
        """A poll failed with a transient ``error``; warn once the spell is long enough."""
        if self.since is None:
            self.since = now
        if not self._warned and warn_after is not None and now - self.since >= warn_after:
            self._warned = True
            logger.warning(
                "every poll has failed for %.0f s (last: %s: %s); still polling until each "
                "wait's deadline",
                now - self.since,
                type(error).__name__,
                error,
            )

    def succeeded(self, now: float) -> None:
        """A poll got an answer: the failing spell, if any, is over."""
        if self._warned and self.since is not None:
            logger.warning("polls succeed again, after %.0f s of failures", now - self.since)
        self.since = None
        self._warned = False
