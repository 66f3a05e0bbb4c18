"""Configuration: small frozen, keyword-only attrs classes validated on construction.

Vary one per call with ``attrs.evolve(policy, timeout=60.0)``.
"""

from __future__ import annotations

import enum
import random
from typing import Final, Literal, TypeAlias

import attrs

from ._validate import (
    attrs_validator,
    count,
    factor,
    non_negative_seconds,
    optional_seconds,
    positive_seconds,
)


class _UseDefault(enum.Enum):
    USE_DEFAULT = "USE_DEFAULT"

    def __repr__(self) -> str:
        return "USE_DEFAULT"


#: Per-call sentinel meaning "use the session's (or policy's) default", distinct from None.
USE_DEFAULT: Final = _UseDefault.USE_DEFAULT
#: The type of USE_DEFAULT, for annotations.
UseDefault: TypeAlias = Literal[_UseDefault.USE_DEFAULT]


_positive = attrs_validator(positive_seconds)
_non_negative = attrs_validator(non_negative_seconds)
_optional_positive = attrs_validator(optional_seconds)
_factor = attrs_validator(factor)

# A learned range of durations is widened a little: samples never quite reach the true
# extremes.
_EARLY_MARGIN: Final = 0.95
_LATE_MARGIN: Final = 1.05


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How a handle polls ``record-info`` while it waits; all times in seconds.

    Two schedules, chosen per poll:

    * **Learned** (the default once the session has seen a few tasks succeed): tasks rarely
      finish before the shortest duration seen and seldom after the longest, so the handle
      sleeps through the early part in one go, then polls every ``2 * target_delay``
      seconds across the range of durations seen, so the median time from a task finishing
      to the handle seeing it is about ``target_delay``. Past the longest duration seen it
      backs off again, up to ``max_delay``.
    * **Backoff** (nothing learned yet, ``target_delay=None``, or a re-attached handle whose
      submission time is unknown): poll *n* comes ``min(max_delay, initial_delay *
      factor**(n-1))`` after the previous one; the first ``initial_delay`` after submission
      (a re-attached handle polls at once). With the defaults: about 2, 5, 9.5, 16, 24 s,
      then every 8 s.

    Each delay gets up to ``jitter`` random seconds so that many handles do not poll in
    lockstep. The wait gives up after ``timeout`` (15 minutes by default; the provider
    advises 10 to 15).

    Attributes:
        initial_delay: Seconds before the first poll of a new task (> 0).
        factor: Multiplier applied to the delay after each poll (>= 1).
        max_delay: Cap on the backoff delay between two polls, in seconds (> 0).
        jitter: Up to this many random seconds added to each delay (>= 0).
        timeout: Overall deadline of a wait, in seconds; ``None`` means no deadline.
        not_found_grace: Seconds after a handle is created during which "not found"
            answers mean "not visible yet" rather than an error (>= 0).
        target_delay: The median detection delay to aim for, in seconds, once durations
            are known (> 0); ``None`` turns learning off and always uses the backoff.
        warn_failing_after: Once every poll of the session has failed for this many
            seconds (the provider unreachable, or answering 5xx, 455 or 429), log one
            warning, and another when a poll succeeds again (> 0); ``None`` means never.
    """

    initial_delay: float = attrs.field(default=2.0, validator=_positive)
    factor: float = attrs.field(default=1.5, validator=_factor)
    max_delay: float = attrs.field(default=8.0, validator=_positive)
    jitter: float = attrs.field(default=0.5, validator=_non_negative)
    timeout: float | None = attrs.field(default=900.0, validator=_optional_positive)
    not_found_grace: float = attrs.field(default=30.0, validator=_non_negative)
    target_delay: float | None = attrs.field(default=3.0, validator=_optional_positive)
    warn_failing_after: float | None = attrs.field(default=10.0, validator=_optional_positive)

    def delay(
        self,
        attempt: int,
        *,
        elapsed: float | None = None,
        known: tuple[float, float] | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before poll number ``attempt`` (1-based), jitter included.

        The schedule is the one described above; it depends on nothing but its arguments.

        Args:
            attempt: The number of the poll about to be made, from 1.
            elapsed: Seconds since the task was submitted; ``None`` when unknown.
            known: ``(shortest, longest)`` durations in seconds of tasks seen to succeed,
                or ``None`` when too few were seen to learn from.
            rng: Source of jitter; ``None`` means the ``random`` module.
        """
        target = self.target_delay
        if target is not None and known is not None and elapsed is not None:
            base = self._learned(elapsed, known, target)
        elif attempt <= 1:
            base = 0.0 if elapsed is None else max(0.0, self.initial_delay - elapsed)
        else:
            try:
                grown = self.initial_delay * self.factor ** (attempt - 1)
            except OverflowError:  # a wait long enough for the backoff to pass any float
                grown = self.max_delay
            base = min(self.max_delay, grown)
        if self.jitter and base > 0:
            base += (rng or random).uniform(0, self.jitter)
        return base

    def _learned(self, elapsed: float, known: tuple[float, float], target: float) -> float:
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
        return min(max(self.max_delay, step), step + (elapsed - last) * (self.factor - 1))


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Backoff for requests that failed transiently; all times in seconds.

    Used for submissions that certainly were not accepted (429, 455, or a connection that
    could not be opened) and for result downloads; an outage (455, no connection) is waited
    out with the ``outage_*`` settings instead of ``attempts``. Polls use
    :class:`PollPolicy` instead, and honour ``max_retry_after`` too.

    Attributes:
        attempts: Total attempts, the first included (>= 1).
        wait_initial: Seconds before the first retry (> 0).
        wait_max: Cap on the wait between two attempts, in seconds (> 0).
        wait_jitter: Up to this many random seconds added to each wait (>= 0).
        max_retry_after: Cap, in seconds, on a ``Retry-After`` the provider asks for (> 0).
        outage_budget: Seconds an outage (455 maintenance, or a connection that cannot be
            opened) is waited out before a submission gives up with its error (>= 0; 0
            means not at all). It is counted from the start of the outage, not per
            submission, and replaces ``attempts`` for these failures: real maintenance
            windows last minutes (default 30 minutes).
        outage_probe: Seconds before the first try once an outage began (> 0); each
            further try waits twice as long, up to ``outage_probe_max``.
        outage_probe_max: Cap on the wait between two tries during an outage (> 0).

    """

    attempts: int = attrs.field(default=6, validator=attrs_validator(count))
    wait_initial: float = attrs.field(default=1.0, validator=_positive)
    wait_max: float = attrs.field(default=30.0, validator=_positive)
    wait_jitter: float = attrs.field(default=1.0, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_positive)
    outage_budget: float = attrs.field(default=1800.0, validator=_non_negative)
    outage_probe: float = attrs.field(default=2.0, validator=_positive)
    outage_probe_max: float = attrs.field(default=60.0, validator=_positive)

    def probe_delay(self, tries: int) -> float:
        """Seconds to wait, during an outage, before the try after ``tries`` failed ones.

        ``outage_probe`` after the first, doubling with each further one, at most
        ``outage_probe_max``: the one schedule of every look at a provider or an account
        that is not usable (a session's outage probes, a worker's credits checks).
        """
        return min(self.outage_probe_max, self.outage_probe * 2.0 ** min(max(tries, 1) - 1, 64))
