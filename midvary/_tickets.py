"""Callback tickets: one unguessable token per submission, and the book that expires them.

A :class:`Ticket` is issued before its submission's POST (its URL is the ``callBackUrl``),
bound to the task id and the handle's :class:`~midvary._polling.Alarm` once the answer
names the task, and forgotten by the :class:`TicketBook` when its session closes, when the
receiver stops, ``grace`` seconds after it settled (a delivery accepted, or the task seen
final), and in any case ``ttl`` seconds after it was issued.

A token is a capability that can leak (a proxy's access log, say): whoever holds it can
replay a valid delivery at will. :meth:`Ticket.ring` therefore wakes its handle (one
``record-info`` GET) at most once per ``wake_interval`` seconds: the first delivery wakes it
at once, the later ones within the interval fold into one wake at the interval's end (so a
genuine callback that follows a replay is late by at most the interval, never lost).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._polling import Alarm

# Seconds between two sweeps of expired tokens (sweeps run lazily, on issue and delivery).
_SWEEP_EVERY: Final = 30.0
_TOKEN_BYTES: Final = 32
# Task ids kept per lost ticket (each a claim that costs one GET to refute).
_REPORTS_KEPT: Final = 8


class Ticket:
    """One submission's token: its URL, and the task and alarm it wakes once they are known."""

    __slots__ = (
        "alarm",
        "book",
        "bound",
        "expires_at",
        "lost",
        "news",
        "owner",
        "reports",
        "settled",
        "task_id",
        "token",
        "wake_later",
        "woken_at",
    )

    def __init__(self, book: TicketBook, owner: Hashable, token: str, expires_at: float) -> None:
        self.book = book
        self.owner = owner
        self.token = token
        self.expires_at = expires_at
        self.task_id: str | None = None
        self.alarm: Alarm | None = None
        # Set when the ticket is bound to a task or dropped: deliveries that arrived
        # before the submission's answer wait for it.
        self.bound = asyncio.Event()
        # Whether the duplicate grace is running (a delivery was accepted or the task seen
        # final): the expiry then moves closer.
        self.settled = False
        # Whether the submission's answer was lost (kept for the provider's callback).
        self.lost = False
        # The task ids deliveries to a lost ticket named, the latest few (claims to confirm;
        # a leaked token's forgeries cannot grow it, nor push the genuine one out for long).
        self.reports: collections.deque[str] = collections.deque(maxlen=_REPORTS_KEPT)
        # Set at each report, wake-up through the store and drop: a recovery looks again.
        self.news = asyncio.Event()
        # When a delivery last woke the handle (the book's clock), and the one wake the
        # deliveries since then are folded into.
        self.woken_at: float | None = None
        self.wake_later: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        # Enough of the token to tell two apart (tokens are capabilities).
        return f"<Ticket token={self.token[:4] + '...'!r} task_id={self.task_id!r}>"

    @property
    def url(self) -> str:
        """The ``callBackUrl`` to send with the submission."""
        return f"{self.book.url_prefix()}/{self.token}"

    def bind(self, task_id: str, alarm: Alarm) -> None:
        """The submission was accepted as ``task_id``: deliveries may ring ``alarm`` now."""
        self.task_id = task_id
        self.alarm = alarm
        self.lost = False  # recovered: later deliveries wake the handle as usual
        alarm.on_final = self.settle
        self.bound.set()
        if self.book.on_bind is not None:
            self.book.on_bind(self)

    def lose(self) -> None:
        """The submission's answer was lost: keep the ticket for the provider's callback.

        Deliveries that wait for the binding go on at once, as deliveries to a lost ticket.
        """
        self.lost = True
        self.bound.set()

    def report(self, task_id: str | None) -> None:
        """A checked delivery to this lost ticket named ``task_id`` (``None``: see the store)."""
        if task_id is not None and task_id not in self.reports:
            self.reports.append(task_id)
        self.news.set()

    def settle(self) -> None:
        """Start the duplicate grace: a delivery was accepted or the task was seen final."""
        if not self.settled:
            self.settled = True
            self.expires_at = min(self.expires_at, self.book.clock() + self.book.grace)

    def ring(self) -> bool:
        """An accepted delivery: settle, and wake the handle at most once per interval.

        Returns whether the handle is woken now (``False``: its task was seen final, or a
        wake is folded into the one due at the end of the interval).
        """
        alarm = self.alarm
        self.settle()
        if alarm is None or alarm.final or self.wake_later is not None:
            return False
        now = self.book.clock()
        if self.woken_at is None or now - self.woken_at >= self.book.wake_interval:
            self.woken_at = now
            alarm.notify()
            return True
        self.wake_later = asyncio.get_running_loop().call_later(
            self.woken_at + self.book.wake_interval - now, self._wake_late
        )
        return False

    def _wake_late(self) -> None:
        self.wake_later = None
        if self.alarm is not None and self.live:
            self.woken_at = self.book.clock()
            self.alarm.notify()

    @property
    def live(self) -> bool:
        """Whether the book still holds this ticket."""
        return self.book.get(self.token) is self


class TicketBook:
    """The live tickets of one receiver, by token and by owner (a session's view of it).

    Args:
        url_prefix: Returns the URL prefix of callback URLs (raises if there is none yet).
        clock: The monotonic clock of expiries, in seconds.
        grace: Seconds a settled ticket stays valid.
        ttl: Seconds after which any ticket is forgotten.
        wake_interval: Seconds between two wakes of one ticket's handle by deliveries.

    """

    def __init__(
        self,
        *,
        url_prefix: Callable[[], str],
        clock: Callable[[], float],
        grace: float,
        ttl: float,
        wake_interval: float,
    ) -> None:
        self.url_prefix = url_prefix
        self.clock = clock
        self.grace = grace
        self.ttl = ttl
        self.wake_interval = wake_interval
        self._tickets: dict[str, Ticket] = {}
        self._by_owner: dict[Hashable, set[str]] = {}
        self._next_sweep = clock() + _SWEEP_EVERY
        #: Called with each ticket once it is bound (a shared store records the binding).
        self.on_bind: Callable[[Ticket], None] | None = None

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, owner: Hashable) -> Ticket:
        """A fresh ticket for one submission of ``owner``."""
        self.url_prefix()  # no URL, no ticket: fail before anything is sent
        now = self.clock()
        self._sweep(now)
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        ticket = Ticket(self, owner, token, now + self.ttl)
        self._tickets[token] = ticket
        self._by_owner.setdefault(owner, set()).add(token)
        return ticket

    def get(self, token: str) -> Ticket | None:
        """The ticket of ``token``, expired or not, or ``None``."""
        return self._tickets.get(token)

    def lookup(self, token: str) -> Ticket | None:
        """The live ticket of ``token`` (expiring what is due first), or ``None``."""
        ticket = self._tickets.get(token)
        now = self.clock()
        self._sweep(now)
        if ticket is None:
            return None
        self._expire(ticket, now)
        return ticket if ticket.live else None

    def drop(self, ticket: Ticket) -> None:
        """Forget ``ticket``; deliveries waiting for its binding see it gone."""
        if self._tickets.get(ticket.token) is ticket:
            del self._tickets[ticket.token]
        tokens = self._by_owner.get(ticket.owner)
        if tokens is not None:
            tokens.discard(ticket.token)
            if not tokens:
                del self._by_owner[ticket.owner]
        if ticket.wake_later is not None:
            ticket.wake_later.cancel()
            ticket.wake_later = None
        ticket.bound.set()
        ticket.news.set()

    def forget(self, owner: Hashable) -> None:
        """Forget every ticket of ``owner`` (its session is closing)."""
        for token in tuple(self._by_owner.get(owner, ())):
            ticket = self._tickets.get(token)
            if ticket is not None:
                self.drop(ticket)
        self._by_owner.pop(owner, None)

    def drop_all(self) -> None:
        """Forget every ticket (the receiver stops)."""
        for ticket in tuple(self._tickets.values()):
            self.drop(ticket)

    def _expire(self, ticket: Ticket, now: float) -> None:
        if ticket.expires_at <= now:
            self.drop(ticket)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(_SWEEP_EVERY, self.grace)
        for ticket in tuple(self._tickets.values()):
            self._expire(ticket, now)
