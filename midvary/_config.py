"""Configuration: small frozen, keyword-only attrs classes validated on construction.

Vary one per call with ``attrs.evolve(policy, timeout=60.0)``.
"""

from __future__ import annotations

import enum
import random
from typing import Any, Final, Literal, TypeAlias

import attrs


class _UseDefault(enum.Enum):
    USE_DEFAULT = "USE_DEFAULT"

    def __repr__(self) -> str:
        return "USE_DEFAULT"


#: Per-call sentinel meaning "use the session's (or policy's) default", distinct from None.
USE_DEFAULT: Final = _UseDefault.USE_DEFAULT
#: The type of USE_DEFAULT, for annotations.
UseDefault: TypeAlias = Literal[_UseDefault.USE_DEFAULT]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 seconds, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0 seconds, got {value!r}")


def _optional_positive(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(_inst, attribute, value)


def _factor(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise ValueError(f"{attribute.name} must be a number >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How a handle polls ``record-info`` while it waits; all times in seconds.

    The delay before poll *n* (1-based) is ``min(max_delay, initial_delay * factor**(n-1))``
    plus a random jitter of up to ``jitter`` seconds. The first poll of a freshly submitted
    task comes ``initial_delay`` after submission; a re-attached handle polls at once.

    The defaults suit vary tasks, which take tens of seconds: polls at about 2, 5, 9, 14,
    20 s after submission, then every 8 s, giving up after 15 minutes (the provider's
    advice is 10 to 15).

    Attributes:
        initial_delay: Seconds before the first poll of a new task (> 0).
        factor: Multiplier applied to the delay after each poll (>= 1).
        max_delay: Cap on the delay between two polls, in seconds (> 0).
        jitter: Up to this many random seconds added to each delay (>= 0), so that many
            handles do not poll in lockstep.
        timeout: Overall deadline of a wait, in seconds; ``None`` means no deadline.
        not_found_grace: Seconds after a handle is created during which "not found"
            answers mean "not visible yet" rather than an error (>= 0).

    """

    initial_delay: float = attrs.field(default=2.0, validator=_positive)
    factor: float = attrs.field(default=1.5, validator=_factor)
    max_delay: float = attrs.field(default=8.0, validator=_positive)
    jitter: float = attrs.field(default=0.5, validator=_non_negative)
    timeout: float | None = attrs.field(default=900.0, validator=_optional_positive)
    not_found_grace: float = attrs.field(default=30.0, validator=_non_negative)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before poll number ``attempt`` (1-based), jitter included."""
        base = min(self.max_delay, self.initial_delay * self.factor ** max(0, attempt - 1))
        if self.jitter:
            base += (rng or random).uniform(0, self.jitter)
        return base


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Backoff for requests that failed transiently; all times in seconds.

    Used for submissions that certainly were not accepted (429, 455, or a connection that
    could not be opened) and for result downloads. Polls use :class:`PollPolicy` instead,
    and honour ``max_retry_after`` too.

    Attributes:
        attempts: Total attempts, the first included (>= 1).
        wait_initial: Seconds before the first retry (> 0).
        wait_max: Cap on the wait between two attempts, in seconds (> 0).
        wait_jitter: Up to this many random seconds added to each wait (>= 0).
        max_retry_after: Cap, in seconds, on a ``Retry-After`` the provider asks for (> 0).

    """

    attempts: int = attrs.field(default=6)
    wait_initial: float = attrs.field(default=1.0, validator=_positive)
    wait_max: float = attrs.field(default=30.0, validator=_positive)
    wait_jitter: float = attrs.field(default=1.0, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_positive)

    @attempts.validator
    def _check_attempts(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"attempts must be an int >= 1, got {value!r}")
