"""CallbackRelay: one receiver's tokens in a shared store, and wake-ups between replicas.

Behind a load balancer, a provider's callback reaches whichever replica the balancer picks,
rarely the one whose handle waits. With ``CallbackReceiver(store=...)``:

1. Before its submission's POST, a token is recorded in the store (by its SHA-256: the
   store never holds a usable token), unbound, for the receiver's ``token_ttl``; once the
   answer names the task, the record is bound to the task id (in the background: the
   handle is returned at once, and a delivery that comes meanwhile waits for the binding).
2. A receiver that gets a delivery for a token it did not issue looks it up in the store,
   checks it exactly as its own (signature, body, task id), shortens the record's expiry to
   the duplicate grace, and publishes the token on the store's wake-up channel.
3. Every receiver on the store listens to that channel (one background subscription per
   receiver, started by its first submission, cancelled and awaited when it stops); the one
   holding the token rings its handle's alarm, which then confirms with its one GET, as for
   a local delivery. A forged or replayed delivery therefore still costs at most one GET in
   the whole fleet, and none once the handle saw its task final.

Deliveries to the receiver that issued the token take the local path (no store I/O).

A submission whose answer was lost (``_recovery``) may have created a task the provider
will call back: its token stays unbound. A delivery to such a token (here, or at the
replica that issued it, whose ticket is then marked lost) is checked against the task id
its body names and that claim is kept in the store's record (:meth:`CallbackRelay.report`)
until the token expires, so the issuing process, or a later run of the same key (a keyed
submission's token is findable from the key's hash, :func:`link_id`), confirms it with one
GET. A replica answers such a delivery 503 all the same: the token's answer may still come,
and the provider's retry then takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Final

from ._errors import StoreError
from ._retry import ask_until_answered, resubscribing

if TYPE_CHECKING:
    from ._store import TokenRecord, TokenStore
    from ._tickets import Ticket, TicketBook

logger = logging.getLogger("midvary._callbacks")

#: The scope of tokens when the store has no ``namespace=``.
DEFAULT_SCOPE: Final = "callbacks"
# Seconds between two looks at an unbound token's record (doubling up to the bind wait).
_FIRST_LOOK: Final = 0.02
# Seconds between two failed wake-up subscriptions (doubling up to the last); one that held
# and was lost is opened again at once.
_RESUBSCRIBE: Final = (0.1, 30.0)


def token_id(token: str) -> str:
    """The name a token is stored under: its SHA-256, so a store dump holds no capability."""
    return hashlib.sha256(token.encode()).hexdigest()


def link_id(namespace: str, key: str) -> str:
    """The name a keyed submission's token is found by: the SHA-256 of its account and key."""
    return hashlib.sha256(f"{namespace}\n{key}".encode()).hexdigest()


class CallbackRelay:
    """A receiver's door to the store's token registry and wake-up channel.

    Args:
        store: The shared store (open while the receiver is used; never closed here).
        book: The receiver's own tickets (a wake-up for one of them rings its alarm).
        ttl: Seconds a recorded token lives (the receiver's ``token_ttl``).
        grace: Seconds a token lives after an accepted delivery (``duplicate_grace``).

    """

    def __init__(self, store: TokenStore, book: TicketBook, *, ttl: float, grace: float) -> None:
        self._store = store
        self._book = book
        self._ttl = ttl
        self._grace = grace
        self.scope = store.namespace if store.namespace is not None else DEFAULT_SCOPE
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- the issuing side --------------------------------------------------------------

    async def register(self, ticket: Ticket, link: str | None = None) -> None:
        """Record ``ticket``'s token before its POST, listening to wake-ups first.

        Args:
            ticket: The new ticket.
            link: The :func:`link_id` of the submission's key, or ``None`` (no key).

        Raises:
            StoreError: The store failed; nothing may be sent with this ticket.

        """
        await self._listening()
        await self._store.add_token(
            self.scope, token_id(ticket.token), ttl_s=self._ttl, link_id=link
        )

    async def record(self, name: str) -> TokenRecord | None:
        """The store's record of the token named ``name`` (a :func:`token_id`), or ``None``.

        Raises:
            StoreError: The store failed.

        """
        return await self._store.get_token(self.scope, name)

    async def linked(self, link: str) -> str | None:
        """The :func:`token_id` issued for the key of ``link`` (a :func:`link_id`), or ``None``.

        Raises:
            StoreError: The store failed.

        """
        return await self._store.linked_token(self.scope, link)

    def bound(self, ticket: Ticket) -> None:
        """``ticket`` was bound to its task: record that, in the background."""
        if self._closed or ticket.task_id is None:
            return
        task = asyncio.get_running_loop().create_task(self._bind(ticket.token, ticket.task_id))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _bind(self, token: str, task_id: str) -> None:
        try:
            if not await self._store.bind_token(self.scope, token_id(token), task_id=task_id):
                logger.warning("callback token of task %s expired before it was bound", task_id)
        except StoreError as exc:
            # Other replicas cannot check deliveries for it (they answer 503 and the provider
            # retries); the handle still resolves by its own safety polls.
            logger.warning("could not bind the callback token of task %s: %s", task_id, exc)

    async def _listening(self) -> None:
        if self._closed:
            raise StoreError("the callback receiver's wake-up listener is closed")
        if self._listener is None or self._listener.done():
            self._subscribed = asyncio.get_running_loop().create_future()
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        assert self._subscribed is not None  # noqa: S101 - set with the listener
        await asyncio.shield(self._subscribed)

    async def _listen(self) -> None:
        subscribed = self._subscribed
        assert subscribed is not None  # noqa: S101 - set before the listener starts
        retrying = resubscribing(
            first=_RESUBSCRIBE[0],
            longest=_RESUBSCRIBE[1],
            # The first subscription is not retried: its failure is the submission's.
            retry=lambda exc: isinstance(exc, StoreError) and subscribed.done(),
        )
        try:
            while True:  # each pass opens subscriptions until one holds, and ends when lost
                await retrying(self._listen_once, subscribed)
        except StoreError as exc:
            subscribed.set_exception(exc)

    async def _listen_once(self, subscribed: asyncio.Future[None]) -> None:
        async with self._store.wakes(self.scope) as stream:
            if not subscribed.done():
                subscribed.set_result(None)
            try:
                async for token in stream:
                    self._wake(token)
            except StoreError as exc:
                logger.warning("callback wake-ups lost (%s); listening again", exc)

    def _wake(self, token: str) -> None:
        ticket = self._book.lookup(token)
        if ticket is not None and ticket.lost and ticket.alarm is None:
            ticket.report(None)  # a delivery to its lost answer's task: the store has it
            return
        if ticket is None or ticket.alarm is None:
            return  # another replica's token, or one this receiver dropped meanwhile
        if ticket.ring():
            logger.debug("callback (via the store) for task %s: waking its handle", ticket.task_id)
        else:
            logger.debug(
                "callback (via the store) for task %s: final or woken lately", ticket.task_id
            )

    # --- the receiving side ------------------------------------------------------------

    async def task_of(self, token: str, *, bind_wait: float) -> str | int | None:
        """The task bound to another replica's ``token``, or the HTTP status to answer.

        Waits up to ``bind_wait`` seconds for an unbound token's binding (``None`` after
        that: its answer is late or lost, see :meth:`report`), 404 for a token the store
        does not know, 503 when the store fails (the provider retries later).
        """
        name = token_id(token)

        async def look() -> str | int | None:
            try:
                record = await self._store.get_token(self.scope, name)
            except StoreError as exc:
                logger.warning("callback token lookup failed (%s): 503", exc)
                return 503
            if record is None:
                logger.debug("callback to a token unknown to the store too: 404")
                return 404
            return record.task_id  # None: not bound yet, look again

        # None after the wait: its answer is late or lost (see report).
        answer: str | int | None = await ask_until_answered(
            look, first=_FIRST_LOOK, within=bind_wait
        )
        return answer

    async def report(self, token: str, task_id: str, *, wake: bool) -> int:
        """A checked delivery to the unbound ``token`` named ``task_id``: keep that claim.

        With ``wake``, the replica holding the token is told (it may hold it as lost).
        Returns 200 once kept, 404 for a token gone meanwhile, 503 when the store fails.
        """
        try:
            if not await self._store.report_token(self.scope, token_id(token), task_id=task_id):
                return 404
            if wake:
                await self._store.publish_wake(self.scope, token)
        except StoreError as exc:
            logger.warning("could not keep a callback's task id %s (%s): 503", task_id, exc)
            return 503
        return 200

    async def forward(self, token: str) -> int:
        """An accepted delivery for another replica's ``token``: wake its owner; the status."""
        name = token_id(token)
        try:
            await self._store.settle_token(self.scope, name, grace_s=self._grace)
            await self._store.publish_wake(self.scope, token)
        except StoreError as exc:
            logger.warning("could not pass a callback on (%s): 503", exc)
            return 503
        return 200

    async def close(self) -> None:
        """Stop listening and finish the pending bindings (cancelled and awaited)."""
        self._closed = True
        if self._writes:
            await asyncio.gather(*tuple(self._writes), return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.cancel()
