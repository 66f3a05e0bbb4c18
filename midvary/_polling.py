"""How often to poll: the schedule, what it learns, the safety policy, and one retried poll.

This module owns every decision about *when* a handle asks ``record-info`` again:

- :func:`poll_delay`, the schedule as a pure function of a :class:`PollPolicy` (which is pure
  data), the poll's number, the time since submission and the durations learned;
- :class:`DurationStats`, what a session learns about task durations;
- :data:`DEFAULT_SAFETY_POLL`, the slow schedule of handles that wait on a callback;
- :class:`Alarm`, the interruptible sleep between two polls (a callback or the session's
  close ends it early);
- :func:`retry_poll`, a failed poll carried through transient failures at the schedule's
  pace;
- :class:`Deadlines`, the deadlines of a session's waits on one loop timer;
- :class:`PollHealth`, whether a session's polls keep failing: one warning when they have
  failed for ``PollPolicy.warn_failing_after`` seconds, one when they succeed again.

The handle's wait loop (:meth:`TaskHandle.wait`) only strings these together.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._config import PollPolicy
from ._retry import poll_retrying, retry_failed

if TYPE_CHECKING:
    from ._config import RetryPolicy
    from ._models import TaskRecord

T = TypeVar("T")

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
        if 0 < seconds <= _LONGEST_PLAUSIBLE:  # self.add(seconds), inline: once per task
            self._samples.append(seconds)

    def bounds(self) -> tuple[float, float] | None:
        """``(shortest, longest)`` duration in seconds, or ``None`` if too few were seen."""
        if len(self._samples) < MIN_SAMPLES:
            return None
        return min(self._samples), max(self._samples)


# A learned range is widened a little: samples never quite reach the true extremes.
_EARLY_MARGIN = 0.95
_LATE_MARGIN = 1.05


def poll_delay(
    policy: PollPolicy,
    attempt: int,
    *,
    elapsed: float | None = None,
    known: tuple[float, float] | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before poll number ``attempt`` (1-based), jitter included.

    See :class:`PollPolicy` for the two schedules. ``elapsed`` is the seconds since the task
    was submitted (``None`` when unknown: a re-attached handle); ``known`` the
    ``(shortest, longest)`` durations learned (``None``: too few); ``rng`` the source of
    jitter (``None``: the ``random`` module).
    """
    target = policy.target_delay
    if target is not None and known is not None and elapsed is not None:
        base = _learned(policy, elapsed, known, target)
    elif attempt <= 1:
        base = 0.0 if elapsed is None else max(0.0, policy.initial_delay - elapsed)
    else:
        base = min(policy.max_delay, policy.initial_delay * policy.factor ** (attempt - 1))
    if policy.jitter and base > 0:
        base += (rng or random).uniform(0, policy.jitter)
    return base


def _learned(
    policy: PollPolicy, elapsed: float, known: tuple[float, float], target: float
) -> float:
    step = 2 * target
    shortest, longest = known
    # Polling exactly at the shortest duration would find almost nothing done: the first
    # poll comes half a step later, then one per step across the range seen.
    first = shortest * _EARLY_MARGIN + step / 2
    if elapsed < first:
        return first - elapsed
    last = longest * _LATE_MARGIN
    if elapsed < last:
        return step - (elapsed - first) % step
    # Longer than any task seen: back off from the step, as the cold schedule would.
    return min(max(policy.max_delay, step), step + (elapsed - last) * (policy.factor - 1))


#: Why midvary cancels the task running a wait (the message of its ``Task.cancel``): the
#: wait's deadline passed (a ``loop.call_at`` timer, armed once per wait: lighter than
#: ``asyncio.timeout``, and this runs for every task), or the session closed. The wait tells
#: them from anyone else's cancellation by this message and ``Task.uncancel``'s count.
DEADLINE: Final = "midvary: the wait's deadline passed"
CLOSED: Final = "midvary: the Session closed"


class Alarm:
    """The interruptible sleeps of one handle's waits, and the news that ends them.

    A handle sleeps on its alarm between polls. Three parties may end a sleep early, each
    through a named method: a callback (:meth:`notify`: poll now), the session's close
    (:meth:`wake` with an error, which also cancels every wait's task so that a poll
    request in flight is cut), and the handle itself. :meth:`finished` records that the task
    was seen final and runs ``on_final`` once (a callback ticket shortens its expiry).
    """

    __slots__ = ("_sleepers", "_woken", "final", "on_final", "waits")

    def __init__(self) -> None:
        self._sleepers: set[asyncio.Future[None]] = set()
        #: The tasks running a wait of this alarm's handle (each wait adds its task and
        #: discards it when it ends): closing cancels them (:data:`CLOSED`).
        self.waits: set[asyncio.Task[Any]] = set()
        # News came while nobody slept: the next sleep ends at once.
        self._woken = False
        #: Whether the task was seen final.
        self.final = False
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
        """Sleep ``seconds``, or less if :meth:`notify` or :meth:`wake` interrupts."""
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

    def wake(self, error: BaseException | None = None) -> None:
        """End every current sleep: poll now, or raise ``error`` if given.

        With an ``error`` (the session closing), a poll request in flight is cut as well:
        every task running a wait is cancelled with the reason :data:`CLOSED`.
        """
        for sleeper in tuple(self._sleepers):
            if not sleeper.done():
                if error is None:
                    sleeper.set_result(None)
                else:
                    sleeper.set_exception(error)
        if error is not None:
            for task in tuple(self.waits):
                task.cancel(CLOSED)

    def notify(self) -> None:
        """A callback says the task may be final: poll once now (or as soon as awaited)."""
        if self.final:
            return
        if self._sleepers:
            self.wake()
        else:
            # Nobody sleeps: a poll is in flight or nobody awaits yet. Remember the news, so
            # the next sleep (or the first wait's initial delay) is skipped.
            self._woken = True


class Deadlines:
    """The deadlines of one session's waits, all on one event-loop timer.

    A wait's deadline cancels the task running it (:data:`DEADLINE`). One ``loop.call_at``
    timer per wait cost about a dozen Python calls per task (the handle, its cancel, and the
    loop's timer heap compares handles in Python); here each wait costs one heap entry,
    compared in C, and the loop holds one timer, armed for the earliest deadline. Times are
    the loop's clock (``loop.time()``), in seconds.
    """

    __slots__ = ("_dead", "_entries", "_seq", "_timer", "_timer_at")

    def __init__(self) -> None:
        # [when, sequence, task or None once ended]; the sequence keeps tasks uncompared.
        self._entries: list[list[Any]] = []
        self._seq = itertools.count()
        self._dead = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._entries) - self._dead

    def add(self, loop: asyncio.AbstractEventLoop, when: float, task: asyncio.Task[Any]) -> object:
        """Cancel ``task`` with :data:`DEADLINE` at ``when``; the token is for :meth:`discard`."""
        entry = [when, next(self._seq), task]
        heapq.heappush(self._entries, entry)
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = loop.call_at(when, self._expire, loop)
        return entry

    def discard(self, token: object) -> None:
        """The wait of ``token`` (from :meth:`add`) ended: its deadline no longer applies."""
        entry: list[Any] = token  # type: ignore[assignment]
        if entry[2] is None:
            return
        entry[2] = None
        self._dead += 1
        entries = self._entries
        while entries and entries[0][2] is None:  # ended waits at the head go at once
            heapq.heappop(entries)
            self._dead -= 1
        if self._dead > 64 and 2 * self._dead > len(entries):  # and the rest now and then
            self._entries = [item for item in entries if item[2] is not None]
            heapq.heapify(self._entries)
            self._dead = 0

    def close(self) -> None:
        """Forget every deadline and cancel the timer (the session closed)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = float("inf")
        for entry in self._entries:  # the waits still running discard theirs: nothing to do
            entry[2] = None
        self._entries = []
        self._dead = 0

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._timer_at = float("inf")
        entries = self._entries
        now = loop.time()
        while entries and (entries[0][0] <= now or entries[0][2] is None):
            entry = heapq.heappop(entries)
            task = entry[2]
            if task is None:
                self._dead -= 1
            else:
                entry[2] = None
                task.cancel(DEADLINE)
        if entries:
            self._timer_at = entries[0][0]
            self._timer = loop.call_at(self._timer_at, self._expire, loop)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def retry_poll(
    poll: Callable[[], Awaitable[T]],
    failure: BaseException,
    retry: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]],
    delay: Callable[[int], float],
    what: str,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> tuple[T, int]:
    """Carry a poll whose first attempt failed with ``failure`` through transient failures.

    Returns its result and the attempts made (the first, failed one included). The caller
    makes the first attempt itself (nearly every poll succeeds at once, and each layer of
    coroutines costs CPU on every request) and comes here only with a failure
    :func:`is_transient` accepts. ``delay(n)`` is the wait in seconds before retry ``n`` (the
    schedule's, so a failing poll keeps the schedule's pace); ``sleep`` is the
    interruptible sleep. The caller's deadline bounds the retries. ``on_retry(exc,
    wait_seconds)`` is called before each retry.
    """
    retrying = poll_retrying(retry, sleep=sleep, delay=delay, what=what, on_retry=on_retry)
    result = await retry_failed(poll, retrying, failure)
    return result, retrying.statistics["attempt_number"]


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
