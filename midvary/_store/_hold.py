"""What a submission uses a store through: a held claim, and the store-backed limiter.

:func:`holding` claims a key (waiting out a live holder), keeps the claim alive with a
renewal task while its body runs, and settles it on exit if the body did not: a claim that
never sent is released, one that was sending is marked uncertain. The renewal task is
cancelled and awaited on exit: nothing outlives the ``async with``. :class:`Hold` is the
submission pipeline's ``_submit.Claim``; :class:`StoreClaims` its ``_submit.SubmitStore``.

:class:`StoreLimiter` has the shape of the in-process ``SubmitLimiter`` (``slot()``,
``slow_down()``, ``close()``), backed by a store's shared window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from .._errors import StoreError
from ._base import Claim, ClaimState, SlotRequest, Store, check_seconds, lost_claim

logger = logging.getLogger("midvary._store")

#: Called with the seconds a submission is about to wait for the shared window.
OnWait = Callable[[float], None]


class Hold:
    """A claimed key while its submission runs; see :func:`holding`.

    Attributes:
        claim: The claim's outcome. Only a CLAIMED hold may send.
        holder: This submission attempt's unique id.
        slot_id: The limiter slot of the current POST, or ``None``.

    """

    def __init__(
        self,
        store: Store,
        namespace: str,
        key: str,
        *,
        holder: str,
        lease_s: float,
        rate: tuple[int, float] | None,
        slot_lease_s: float,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.key = key
        self.holder = holder
        self.claim = Claim(state=ClaimState.BUSY)
        self.slot_id: str | None = None
        self.sending = False
        self.settled = False
        self.lost = False
        self._lease_s = lease_s
        self._rate = rate
        self._slot_lease_s = slot_lease_s

    def __repr__(self) -> str:
        return f"<Hold key={self.key!r} {self.claim.state.name} sending={self.sending}>"

    @property
    def task_id(self) -> str | None:
        """The task the key already names (KNOWN: nothing is sent), else ``None``."""
        return self.claim.task_id if self.claim.state is ClaimState.KNOWN else None

    @property
    def known_uncertain(self) -> bool:
        """Whether the key was sent before and its answer lost: it is never re-sent."""
        return self.claim.state is ClaimState.UNCERTAIN

    @property
    def takes_slot(self) -> bool:
        """Whether :meth:`before_post` takes the account's slot in the store's window."""
        return self._rate is not None

    def new_slot(self) -> SlotRequest:
        """A fresh slot request for the next POST (also remembered as ``slot_id``)."""
        self.slot_id = uuid.uuid4().hex
        return SlotRequest(slot_id=self.slot_id, rate=self._rate, lease_s=self._slot_lease_s)

    async def before_post(self, on_wait: OnWait | None = None) -> None:
        """Return once the key is marked sending (with a slot of ``rate``): POST then.

        ``on_wait(seconds)`` is called before each wait for the shared window.

        Raises:
            StoreError: The store failed, or the claim was lost: do not send.

        """
        self._check_claimed()
        if self.lost:
            raise lost_claim(self.key)
        if self.sending:
            return
        while True:
            slot = self.new_slot() if self.slot_id is None else self._slot()
            wait = await self.store.mark_sending(
                self.namespace, self.key, holder=self.holder, lease_s=self._lease_s, slot=slot
            )
            if wait == 0.0:
                self.sending = True
                return
            if on_wait is not None:
                on_wait(wait)
            await asyncio.sleep(wait)

    def _slot(self) -> SlotRequest:
        assert self.slot_id is not None  # noqa: S101 - set by new_slot
        return SlotRequest(slot_id=self.slot_id, rate=self._rate, lease_s=self._slot_lease_s)

    def _check_claimed(self) -> None:
        if self.claim.state is not ClaimState.CLAIMED or self.settled:
            raise RuntimeError(f"key {self.key!r} is not held by this submission")

    async def accepted(self, task_id: str) -> bool:
        """The POST was accepted: record ``task_id`` and end the slot (one store call).

        Returns ``False`` when the store did not take it (the key was forgotten or taken
        over meanwhile); the caller logs the task id at WARNING with its key.
        """
        self._check_claimed()
        self.settled = True
        slot_id, self.slot_id = self.slot_id, None
        return await self.store.record_task(
            self.namespace, self.key, holder=self.holder, task_id=task_id, slot_id=slot_id
        )

    async def refused(self) -> None:
        """Certainly refused (4xx, budget spent, never sent): release the key, refund the slot."""
        self._check_claimed()
        self.settled = True
        slot_id, self.slot_id = self.slot_id, None
        await self.store.release(self.namespace, self.key, holder=self.holder, slot_id=slot_id)

    async def retrying(self) -> None:
        """Refused with 429/455 and to be retried: back to claimed, slot refunded."""
        self._check_claimed()
        slot_id, self.slot_id = self.slot_id, None
        self.sending = False
        if not await self.store.unsend(
            self.namespace, self.key, holder=self.holder, slot_id=slot_id
        ):
            self.lost = True

    async def uncertain(self) -> None:
        """The answer was lost: the key becomes uncertain (its slot keeps its stamp)."""
        self._check_claimed()
        self.settled = True
        slot_id, self.slot_id = self.slot_id, None
        await self.store.mark_uncertain(
            self.namespace, self.key, holder=self.holder, slot_id=slot_id
        )

    async def _settle_on_exit(self) -> None:
        if self.claim.state is not ClaimState.CLAIMED or self.settled:
            return
        try:
            if self.sending:
                await self.uncertain()
            else:
                await self.refused()
        except StoreError as exc:
            # The lease expires on its own: a key never sent is then taken over, and one
            # that was sending becomes uncertain, which is what we would have written.
            logger.warning("could not settle key %r in the store: %s", self.key, exc)

    async def _renew_forever(self) -> None:
        interval = self._lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.store.renew(
                    self.namespace, self.key, holder=self.holder, lease_s=self._lease_s
                ):
                    self.lost = True
                    return
            except StoreError as exc:
                logger.warning("could not renew the claim on key %r: %s", self.key, exc)


class StoreClaims:
    """A session's door to the keys of a store (the pipeline's ``_submit.SubmitStore``).

    Args:
        store: The store (opened and closed by its owner, never here).
        namespace: The account's namespace (``store.namespace_for(api_key)``).
        rate: The account's ``(count, window_seconds)``: each keyed POST takes its slot of
            the store's shared window with its claim; ``None`` means the store does not
            limit (the session's own limiter, if any, does).

    Claims live ``store.claim_lease`` seconds without renewal.
    """

    def __init__(self, store: Store, namespace: str, *, rate: tuple[int, float] | None) -> None:
        self.store = store
        self.namespace = namespace
        self.rate = rate

    def __repr__(self) -> str:
        return f"<StoreClaims store={self.store!r} rate={self.rate!r}>"

    def claim(
        self, key: str, *, fingerprint: str, request: object
    ) -> contextlib.AbstractAsyncContextManager[Hold]:
        """Hold ``key`` for one submission; see :func:`holding`."""
        return holding(
            self.store,
            self.namespace,
            key,
            fingerprint=fingerprint,
            request=request,
            lease_s=self.store.claim_lease,
            rate=self.rate,
        )


@contextlib.asynccontextmanager
async def holding(
    store: Store,
    namespace: str,
    key: str,
    *,
    fingerprint: str,
    request: object,
    lease_s: float = 30.0,
    rate: tuple[int, float] | None = None,
    slot_lease_s: float = 120.0,
    busy_poll_s: float | None = 0.5,
) -> AsyncIterator[Hold]:
    """Claim ``key`` and hold it for the body; see the module docstring.

    The first claim also tries to take a slot of ``rate`` and mark the key sending, so a
    submission on the happy path costs two store calls: this claim and
    :meth:`Hold.accepted`.

    Args:
        store: The store.
        namespace: The account's namespace (``store.namespace_for(api_key)``).
        key: The submission key.
        fingerprint: What identifies the request (same key, other fingerprint:
            :class:`~midvary.KeyConflictError`).
        request: The request as JSON data, recorded with the claim.
        lease_s: Seconds a claim lives without renewal; renewed every third of it.
        rate: The account's ``(count, window_seconds)``, or ``None`` for no shared limit.
        slot_lease_s: Seconds a slot counts as in flight if never ended (longer than a POST).
        busy_poll_s: Seconds between polls while another live submitter holds the key
            (store errors during those polls are retried); ``None`` yields BUSY at once.

    Raises:
        StoreError: The first claim failed: nothing may be sent.
        KeyConflictError: The key is stored for another request.

    """
    check_seconds("lease_s", lease_s)
    hold = Hold(
        store,
        namespace,
        key,
        holder=uuid.uuid4().hex,
        lease_s=lease_s,
        rate=rate,
        slot_lease_s=slot_lease_s,
    )
    first = True
    while True:
        try:
            hold.claim = await store.claim(
                namespace,
                key,
                fingerprint=fingerprint,
                request=request,
                holder=hold.holder,
                lease_s=lease_s,
                slot=hold.new_slot(),
            )
        except StoreError as exc:
            if first:
                raise
            logger.warning("waiting for key %r: the store failed (%s); polling on", key, exc)
            hold.claim = Claim(state=ClaimState.BUSY, retry_after=busy_poll_s)
        first = False
        if hold.claim.state is not ClaimState.BUSY or busy_poll_s is None:
            break
        await asyncio.sleep(min(hold.claim.retry_after or busy_poll_s, busy_poll_s))
    if hold.claim.state is not ClaimState.CLAIMED:
        hold.slot_id = None
        yield hold
        return
    hold.sending = hold.claim.sending
    if not hold.sending and hold.claim.slot_wait is None:
        hold.slot_id = None
    renewal = asyncio.create_task(hold._renew_forever(), name=f"midvary-renew-{key}")
    try:
        yield hold
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        await hold._settle_on_exit()


class StoreSlot:
    """One POST's place in the shared window; see :meth:`StoreLimiter.slot`."""

    __slots__ = ("refunded", "slot_id")

    def __init__(self, slot_id: str) -> None:
        self.slot_id = slot_id
        self.refunded = False

    def refund(self) -> None:
        """The POST was certainly not accepted: it does not count against the window."""
        self.refunded = True


class StoreLimiter:
    """The account's submission window in a store, shaped like the in-process limiter.

    Args:
        store: The store holding the window.
        namespace: The account's namespace.
        rate: ``(count, window_seconds)``.
        slot_lease_s: Seconds a slot counts as in flight if its process dies with it.

    """

    def __init__(
        self,
        store: Store,
        namespace: str,
        rate: tuple[int, float],
        *,
        slot_lease_s: float = 120.0,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.rate = rate
        self._slot_lease_s = check_seconds("slot_lease_s", slot_lease_s)
        self._turn = asyncio.Lock()
        self._closed: BaseException | None = None
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<StoreLimiter rate={self.rate!r} store={self.store!r}>"

    @contextlib.asynccontextmanager
    async def slot(self, on_wait: OnWait | None = None) -> AsyncIterator[StoreSlot]:
        """Hold one slot of the shared window for the body (one POST).

        Submissions of this process queue first come, first served; the store arbitrates
        between processes. The slot is stamped when the body ends unless it called
        :meth:`StoreSlot.refund`. Ending the slot is best effort: if the store fails then,
        the slot's lease expires into a stamp, and the body's result is kept.

        Raises:
            StoreError: The store failed before the slot was taken (nothing to send).

        """
        slot = StoreSlot(uuid.uuid4().hex)
        async with self._turn:
            while True:
                if self._closed is not None:
                    raise self._closed
                wait = await self.store.acquire_slot(
                    self.namespace, rate=self.rate, slot_id=slot.slot_id,
                    lease_s=self._slot_lease_s,
                )  # fmt: skip
                if wait == 0.0:
                    break
                if on_wait is not None:
                    on_wait(wait)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
        try:
            yield slot
        finally:
            try:
                await self.store.end_slot(self.namespace, slot.slot_id, refunded=slot.refunded)
            except StoreError as exc:
                logger.warning("could not end a submission slot in the store: %s", exc)
            self._changed.set()  # wake this process's next waiter at once

    async def slow_down(self, pause: float) -> int:
        """A 429 got through: halve the shared allowance and pause everyone ``pause`` s.

        Returns the new allowance (submissions per window, shared by every process).
        """
        allowance = await self.store.slow_down(
            self.namespace, rate=self.rate, pause_s=max(pause, 0.0)
        )
        logger.info(
            "rate limited by the provider: now at most %d submissions per %g s (shared)",
            allowance,
            self.rate[1],
        )
        return allowance

    def close(self, error: BaseException) -> None:
        """Make every current and later wait for a slot raise ``error``."""
        self._closed = error
        self._changed.set()
