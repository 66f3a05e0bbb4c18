"""What a session learns about task durations, to poll when tasks actually finish."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import TaskRecord

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
            self.add((record.completed_at - record.created_at).total_seconds())
        elif submitted_at is not None:
            self.add(time.monotonic() - submitted_at)

    def bounds(self) -> tuple[float, float] | None:
        """``(shortest, longest)`` duration in seconds, or ``None`` if too few were seen."""
        if len(self._samples) < MIN_SAMPLES:
            return None
        return min(self._samples), max(self._samples)
