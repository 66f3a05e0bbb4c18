"""Outages: a 455 (maintenance) or a provider that cannot be reached, waited out per session.

One :class:`OutageWatch` per session (on its core) hears of every submission's and poll's
end. The first 455 or refused connection starts an outage: one WARNING line (what, since
when, next try), and the session's submissions pause: each waits in :meth:`OutageWatch.admit`
before taking a limiter slot or marking its key sending, and one at a time is let through as
the *probe*, at a growing interval (``RetryPolicy.outage_probe`` doubling up to
``outage_probe_max``). Any answer that is not an outage (a success, a refusal, even a 500)
ends it: one WARNING line, and the waiting submissions go on. Submissions give up with
their error once the outage has lasted ``RetryPolicy.outage_budget`` seconds.

Why a probe rather than every waiting submission trying: a fleet of jobs hammering a host
in maintenance gains nothing, and the warning lines must say one thing per outage, not one
per job. Only failures that certainly created nothing (455, connection never opened) count,
so the probe is an ordinary submission: when the provider is back it is simply accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs

from ._config import RetryPolicy
from ._errors import ServiceUnavailableError, TransportError

logger = logging.getLogger(__name__)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the provider is down: 455, or a connection never opened."""
    if isinstance(exc, ServiceUnavailableError):
        return True
    return type(exc) is TransportError and not exc.sent


@attrs.frozen(kw_only=True)
class Outage:
    """An outage a session is waiting out (see :attr:`Session.outage`).

    Attributes:
        what: What is happening, for people: ``"maintenance (455)"`` or ``"the provider
            unreachable (no connection)"``.
        since: When it began (UTC).
        next_try: When the next submission is let through to try (UTC).
        gives_up_at: When waiting submissions give up with their error (UTC): ``since``
            plus the retry policy's ``outage_budget``.

    """

    what: str
    since: datetime
    next_try: datetime
    gives_up_at: datetime


class OutageWatch:
    """One session's outage state; see the module docstring.

    Args:
        policy: Returns the session's current :class:`RetryPolicy` (it may be replaced).

    """

    def __init__(self, policy: Callable[[], RetryPolicy]) -> None:
        self._policy = policy
        # time.monotonic() readings; _since is None while there is no outage.
        self._since: float | None = None
        self._next = 0.0
        self._wall = 0.0  # time.time() at the start, for the lines and Outage.since
        self._what = ""
        self._failures = 0
        self._probing = False
        self._changed = asyncio.Event()

    @property
    def active(self) -> bool:
        """Whether an outage is going on."""
        return self._since is not None

    def state(self) -> Outage | None:
        """The outage going on, or ``None``."""
        since = self._since
        if since is None:
            return None
        start = datetime.fromtimestamp(self._wall, UTC)
        return Outage(
            what=self._what,
            since=start,
            next_try=start + timedelta(seconds=self._next - since),
            gives_up_at=start + timedelta(seconds=self._policy().outage_budget),
        )

    def exhausted(self) -> bool:
        """Whether the outage has lasted the budget: waiting submissions give up."""
        since = self._since
        return since is not None and time.monotonic() - since >= self._policy().outage_budget

    def next_in(self) -> float:
        """Seconds until the next try (0 when none is scheduled)."""
        return max(0.0, self._next - time.monotonic()) if self._since is not None else 0.0

    async def admit(self) -> bool:
        """Wait for this submission's turn; ``True`` when it is the outage's probe.

        Returns at once (``False``) when there is no outage, or when the budget is spent (the
        submission then tries once more and gives up with the error it gets).
        """
        while self._since is not None and not self.exhausted():
            wait = self._next - time.monotonic()
            if not self._probing and wait <= 0:
                self._probing = True
                return True
            changed = self._changed
            limit = wait if not self._probing else self._policy().outage_probe_max
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(limit, 0.0)):
                    await changed.wait()
        return False

    def release(self, probe: bool) -> None:
        """A probe ended without an answer (cancelled): let the next one through."""
        if probe and self._probing:
            self._probing = False
            self._notify()

    def failed(self, exc: BaseException, *, probe: bool) -> None:
        """A request failed with an outage error (:func:`is_outage`)."""
        now = time.monotonic()
        policy = self._policy()
        if self._since is None:
            self._since, self._wall = now, time.time()
            self._what = (
                "maintenance (455)"
                if isinstance(exc, ServiceUnavailableError)
                else "the provider unreachable (no connection)"
            )
            self._failures = 0
            self._next = now
            probe = True
        if probe:
            self._probing = False
            self._failures += 1
            delay = policy.probe_delay(self._failures)
            self._next = now + delay
            if self._failures == 1:
                logger.warning(
                    "%s since %s (%s: %s): requests paused, next try in %.3g s, waiting up to "
                    "%.0f s",
                    self._what,
                    _clock(self._wall),
                    type(exc).__name__,
                    exc,
                    delay,
                    policy.outage_budget,
                )
            self._notify()

    def answered(self) -> None:
        """A request got an answer that is not an outage: any outage is over."""
        since = self._since
        if since is None:
            return
        logger.warning(
            "%s since %s is over after %.3g s: requests resumed",
            self._what,
            _clock(self._wall),
            time.monotonic() - since,
        )
        self._since = None
        self._probing = False
        self._failures = 0
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _clock(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%H:%M:%S UTC")
