"""What a keyed submission uses a store through: a held claim, renewed while it lives.

A :class:`Hold` (``holding``) claims a key (waiting out a live holder), keeps the claim
alive while its body runs and settles it on exit if the body did not: a claim that never
sent is released, one that was sending is marked uncertain. Keeping it alive: a
``loop.call_later`` timer starts a renewal task once the claim has lived a third of its
lease (a quick submission, the happy path, never gets that far and makes no task); the task
renews it every third of its lease. On exit the timer is cancelled and the task cancelled
and awaited: nothing outlives the ``async with``. :class:`Hold` is the submission
pipeline's ``_submit.Claim``; :class:`StoreClaims` its ``_submit.SubmitStore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import attrs

from .._errors import StoreError
from .._ratelimit import OnWait, new_id
from .._retry import is_transient
from .._validate import attrs_validator, finite_seconds
from ._base import Claim, ClaimState, SlotRequest, Store, lost_claim

logger = logging.getLogger("midvary._store")

#: Seconds a POST's slot counts as in flight if its owner never ends it (> a POST's timeout).
SLOT_LEASE: Final = 120.0
#: Seconds between claims of a key a live submitter holds.
BUSY_POLL: Final = 0.5

#: A hold's claim before its first answer (claims are frozen: one serves every hold).
_NOT_CLAIMED = Claim(state=ClaimState.BUSY)


@attrs.define(eq=False, repr=False)
class Hold:
    """The hold on ``key`` for one submission: ``async with`` it; see the module docstring.

    Entering claims the key (waiting out a live holder); leaving stops its renewal and
    settles it if the body did not. The first claim also tries to take a slot of ``rate``
    and mark the key sending, so a submission on the happy path costs two store calls:
    this claim and :meth:`accepted`.

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

    Attributes:
        claim: The claim's outcome. Only a CLAIMED hold may send.
        holder: This submission attempt's unique id.
        slot_id: The limiter slot of the current POST, or ``None``.

    Raises (on entering):
        StoreError: The first claim failed: nothing may be sent.
        KeyConflictError: The key is stored for another request.

    """

    store: Store
    namespace: str
    key: str
    fingerprint: str = attrs.field(kw_only=True)
    request: object = attrs.field(kw_only=True)
    lease_s: float = attrs.field(
        kw_only=True, default=30.0, validator=attrs_validator(finite_seconds)
    )
    rate: tuple[int, float] | None = attrs.field(kw_only=True, default=None)
    slot_lease_s: float = attrs.field(kw_only=True, default=SLOT_LEASE)
    busy_poll_s: float | None = attrs.field(kw_only=True, default=BUSY_POLL)
    holder: str = attrs.field(init=False, factory=new_id)
    claim: Claim = attrs.field(default=_NOT_CLAIMED, init=False)
    slot_id: str | None = attrs.field(default=None, init=False)
    sending: bool = attrs.field(default=False, init=False)
    settled: bool = attrs.field(default=False, init=False)
    lost: bool = attrs.field(default=False, init=False)
    _timer: asyncio.TimerHandle | None = attrs.field(default=None, init=False)
    _renewal: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    async def __aenter__(self) -> Hold:
        """Claim the key, waiting out a live holder; see :class:`Hold`."""
        busy_poll_s = self.busy_poll_s
        first = True
        while True:
            try:
                self.claim = await self.store.claim(
                    self.namespace,
                    self.key,
                    fingerprint=self.fingerprint,
                    request=self.request,
                    holder=self.holder,
                    lease_s=self.lease_s,
                    slot=self.new_slot(),
                )
            except StoreError as exc:
                # The first claim's failure stops the submission (nothing may be sent);
                # while waiting out a live holder, a transient one is polled past.
                if first or not is_transient(exc):
                    raise
                logger.warning(
                    "waiting for key %r: the store failed (%s); polling on", self.key, exc
                )
                self.claim = Claim(state=ClaimState.BUSY, retry_after=busy_poll_s)
            first = False
            if self.claim.state is not ClaimState.BUSY or busy_poll_s is None:
                break
            await asyncio.sleep(min(self.claim.retry_after or busy_poll_s, busy_poll_s))
        if self.claim.state is not ClaimState.CLAIMED:
            self.slot_id = None
            return self
        self.sending = self.claim.sending
        if not self.sending and self.claim.slot_wait is None:
            self.slot_id = None
        # Renewed only if the claim outlives a third of its lease (a quick submission, the
        # happy path, makes no task at all).
        self._timer = asyncio.get_running_loop().call_later(self.lease_s / 3, self._start_renewing)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Stop renewing the claim, and settle it if the body did not."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._renewal is not None:
            await self._stop_renewing()
        if self.claim.state is ClaimState.CLAIMED and not self.settled:
            await self._settle_on_exit()

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
        return self.rate is not None

    def new_slot(self) -> SlotRequest:
        """A fresh slot request for the next POST (also remembered as ``slot_id``)."""
        self.slot_id = new_id()
        return SlotRequest(slot_id=self.slot_id, rate=self.rate, lease_s=self.slot_lease_s)

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
                self.namespace, self.key, holder=self.holder, lease_s=self.lease_s, slot=slot
            )
            if wait == 0.0:
                self.sending = True
                return
            if on_wait is not None:
                on_wait(wait)
            await asyncio.sleep(wait)

    def _end_slot(self) -> str | None:
        """The slot to end with the key's next step (forgotten here), or ``None``.

        Without a rate the slot request only let the claim mark the key sending: no slot
        was taken, and none is ended (it would leave a stamp that nothing ever tidies).
        """
        slot_id, self.slot_id = self.slot_id, None
        return slot_id if self.rate is not None else None

    def _slot(self) -> SlotRequest:
        assert self.slot_id is not None  # noqa: S101 - set by new_slot
        return SlotRequest(slot_id=self.slot_id, rate=self.rate, lease_s=self.slot_lease_s)

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
        slot_id = self._end_slot()
        return await self.store.record_task(
            self.namespace, self.key, holder=self.holder, task_id=task_id, slot_id=slot_id
        )

    async def refused(self) -> None:
        """Certainly refused (4xx, budget spent, never sent): release the key, refund the slot."""
        self._check_claimed()
        self.settled = True
        slot_id = self._end_slot()
        await self.store.release(self.namespace, self.key, holder=self.holder, slot_id=slot_id)

    async def retrying(self) -> None:
        """Refused with 429/455 and to be retried: back to claimed, slot refunded."""
        self._check_claimed()
        slot_id = self._end_slot()
        self.sending = False
        if not await self.store.unsend(
            self.namespace, self.key, holder=self.holder, slot_id=slot_id
        ):
            self.lost = True

    async def uncertain(self) -> None:
        """The answer was lost: the key becomes uncertain (its slot keeps its stamp)."""
        self._check_claimed()
        self.settled = True
        slot_id = self._end_slot()
        await self.store.mark_uncertain(
            self.namespace, self.key, holder=self.holder, slot_id=slot_id
        )

    async def _settle_on_exit(self) -> None:
        try:
            if self.sending:
                await self.uncertain()
            else:
                await self.refused()
        except StoreError as exc:
            # The lease expires on its own: a key never sent is then taken over, and one
            # that was sending becomes uncertain, which is what we would have written.
            logger.warning("could not settle key %r in the store: %s", self.key, exc)

    def _start_renewing(self) -> None:
        """The claim outlived a third of its lease: renew it from now on (a task)."""
        self._timer = None
        self._renewal = asyncio.get_running_loop().create_task(
            self._renew_forever(), name=f"midvary-renew-{self.key}"
        )

    async def _stop_renewing(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal

    async def _renew_forever(self) -> None:
        interval = self.lease_s / 3
        while True:
            try:
                if not await self.store.renew(
                    self.namespace, self.key, holder=self.holder, lease_s=self.lease_s
                ):
                    self.lost = True
                    return
            except StoreError as exc:
                if not is_transient(exc):
                    self.lost = True  # nothing to renew any more: do not send
                    return
                # The next renewal, a third of a lease later, tries again: the lease has
                # two more thirds to run.
                logger.warning("could not renew the claim on key %r: %s", self.key, exc)
            await asyncio.sleep(interval)


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

    def claim(self, key: str, *, fingerprint: str, request: object) -> Hold:
        """Hold ``key`` for one submission; see :class:`Hold`."""
        return Hold(
            self.store,
            self.namespace,
            key,
            fingerprint=fingerprint,
            request=request,
            lease_s=self.store.claim_lease,
            rate=self.rate,
        )

    async def recovered(self, key: str, task_id: str) -> bool:
        """A lost answer of ``key`` was recovered as ``task_id``: record key -> task id.

        Accepted for an uncertain key whoever held it (the recovery holds no claim);
        ``False`` when the key was forgotten meanwhile or names another task.

        Raises:
            StoreError: The store failed.

        """
        return await self.store.record_task(
            self.namespace, key, holder=f"recovery-{new_id()}", task_id=task_id
        )


#: The hold on a key for one submission (see :class:`Hold`): ``async with holding(...)``.
holding = Hold
