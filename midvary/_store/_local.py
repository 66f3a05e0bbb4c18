"""The store semantics in Python, once, for the in-memory and the SQLite stores.

Each operation runs as one function over a :class:`Tx` (a transaction: the SQLite store runs
it inside ``BEGIN IMMEDIATE`` in its worker thread; the in-memory store runs it at once on
the event loop, where nothing interleaves). The Redis store implements the same semantics in
Lua scripts; the shared contract tests hold the three to one behaviour.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from typing import Protocol, TypeVar

import attrs

from .._ratelimit import Window
from ._base import (
    Claim,
    ClaimState,
    KeyStateName,
    SlotRequest,
    Store,
    StoredJob,
    conflict,
    dump_request,
    lost_claim,
    lost_data_error,
    new_epoch,
)

T = TypeVar("T")


@attrs.define(kw_only=True)
class KeyRecord:
    """One key's row."""

    fingerprint: str
    request: str
    state: KeyStateName
    holder: str
    lease_until: float
    task_id: str | None
    expires_at: float


class Tx(Protocol):
    """One transaction on a local store's data."""

    now: float

    def get_epoch(self, namespace: str) -> str | None:
        """The namespace's marker, or None."""

    def put_epoch(self, namespace: str, epoch: str) -> None:
        """Write the namespace's (new) marker."""

    def get_key(self, namespace: str, key: str) -> KeyRecord | None:
        """The key's record, or None."""

    def put_key(self, namespace: str, key: str, record: KeyRecord) -> None:
        """Write the key's record."""

    def delete_key(self, namespace: str, key: str) -> bool:
        """Delete the key's record; whether it existed."""

    def keys(self, namespace: str | None) -> list[tuple[str, str, KeyRecord]]:
        """Every (namespace, key, record), in one namespace or all; done keys may be left out."""

    def namespaces(self) -> list[str]:
        """Every namespace that holds keys."""

    def get_window(self, namespace: str) -> Window:
        """The namespace's window (a new one if absent)."""

    def put_window(self, namespace: str, window: Window) -> None:
        """Write the namespace's window."""


class LocalStore(Store):
    """The operations of :class:`~midvary._store.Store` over :meth:`_transact`."""

    def __init__(self) -> None:
        self._epochs: dict[str, str] = {}

    @abc.abstractmethod
    async def _transact(self, what: str, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one transaction; errors of the backend become StoreError."""

    def _live(self, tx: Tx, namespace: str) -> None:
        """Check the namespace's marker: a store that lost its data raises StoreError.

        A missing marker is made, unless this process saw one (the data was lost).
        """
        seen, epoch = self._epochs.get(namespace), tx.get_epoch(namespace)
        if epoch is None and seen is None:
            epoch = new_epoch()
            tx.put_epoch(namespace, epoch)
        if epoch is None or seen not in (None, epoch):
            raise lost_data_error(namespace)
        self._epochs[namespace] = epoch

    def _record(self, tx: Tx, namespace: str, key: str) -> KeyRecord | None:
        record = tx.get_key(namespace, key)
        if record is not None and record.expires_at <= tx.now:
            tx.delete_key(namespace, key)
            return None
        return record

    def _take_slot(self, tx: Tx, namespace: str, slot: SlotRequest | None) -> float:
        if slot is None or slot.rate is None:
            return 0.0
        window = tx.get_window(namespace)
        wait = window.acquire(tx.now, slot.rate, slot.slot_id, slot.lease_s)
        if wait is None:  # every slot is a POST in flight, maybe another process's
            wait = window.poll_wait(tx.now, slot.rate)
        tx.put_window(namespace, window)
        return wait

    def _end_slot(self, tx: Tx, namespace: str, slot_id: str | None, *, refunded: bool) -> None:
        if slot_id is not None:
            window = tx.get_window(namespace)
            window.end(tx.now, slot_id, refunded=refunded)
            tx.put_window(namespace, window)

    async def claim(
        self,
        namespace: str,
        key: str,
        *,
        fingerprint: str,
        request: object,
        holder: str,
        lease_s: float,
        slot: SlotRequest | None = None,
    ) -> Claim:
        """See :meth:`Store.claim`."""
        request_json = dump_request(request)

        def run(tx: Tx) -> Claim:
            self._live(tx, namespace)
            now = tx.now
            record = self._record(tx, namespace, key)
            if record is None:
                record = KeyRecord(
                    fingerprint=fingerprint,
                    request=request_json,
                    state="claimed",
                    holder=holder,
                    lease_until=now + lease_s,
                    task_id=None,
                    expires_at=now + self.key_ttl,
                )
            elif record.fingerprint != fingerprint:
                raise conflict(key, record.request)
            elif record.state in ("submitted", "done"):
                return Claim(state=ClaimState.KNOWN, task_id=record.task_id)
            elif record.state == "uncertain":
                return Claim(state=ClaimState.UNCERTAIN)
            elif record.holder == holder:
                record.lease_until = now + lease_s  # our own claim (a retried call)
                if record.state == "sending":
                    tx.put_key(namespace, key, record)
                    return Claim(state=ClaimState.CLAIMED, slot_wait=0.0)
            elif record.lease_until > now:
                return Claim(state=ClaimState.BUSY, retry_after=record.lease_until - now)
            elif record.state == "sending":
                record.state = "uncertain"  # its sender died with the POST in flight
                tx.put_key(namespace, key, record)
                return Claim(state=ClaimState.UNCERTAIN)
            else:  # claimed, and its holder died before sending: nothing was sent
                record.holder = holder
                record.lease_until = now + lease_s
            wait = None
            if slot is not None:
                wait = self._take_slot(tx, namespace, slot)
                if wait == 0.0:
                    record.state = "sending"
            tx.put_key(namespace, key, record)
            return Claim(state=ClaimState.CLAIMED, slot_wait=wait)

        return await self._transact(f"claim of key {key!r}", run)

    async def mark_sending(
        self, namespace: str, key: str, *, holder: str, lease_s: float, slot: SlotRequest | None
    ) -> float:
        """See :meth:`Store.mark_sending`."""

        def run(tx: Tx) -> float:
            self._live(tx, namespace)
            record = self._held(tx, namespace, key, holder)
            if record is None:
                raise lost_claim(key)
            record.lease_until = tx.now + lease_s
            wait = self._take_slot(tx, namespace, slot)
            if wait == 0.0:
                record.state = "sending"
            tx.put_key(namespace, key, record)
            return wait

        return await self._transact(f"marking key {key!r} sending", run)

    def _held(self, tx: Tx, namespace: str, key: str, holder: str) -> KeyRecord | None:
        record = self._record(tx, namespace, key)
        if record is None or record.holder != holder:
            return None
        if record.state not in ("claimed", "sending"):
            return None
        return record

    async def renew(self, namespace: str, key: str, *, holder: str, lease_s: float) -> bool:
        """See :meth:`Store.renew`."""

        def run(tx: Tx) -> bool:
            self._live(tx, namespace)
            record = self._held(tx, namespace, key, holder)
            if record is None:
                return False
            record.lease_until = tx.now + lease_s
            tx.put_key(namespace, key, record)
            return True

        return await self._transact(f"renewal of key {key!r}", run)

    async def record_task(
        self, namespace: str, key: str, *, holder: str, task_id: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.record_task`."""

        def run(tx: Tx) -> bool:
            self._live(tx, namespace)
            self._end_slot(tx, namespace, slot_id, refunded=False)
            record = self._record(tx, namespace, key)
            if record is None:
                return False
            if record.state in ("submitted", "done"):
                return record.task_id == task_id
            if record.holder != holder and record.state != "uncertain":
                return False
            record.state = "submitted"
            record.task_id = task_id
            record.holder, record.lease_until = "", 0.0  # nobody holds it any more
            record.expires_at = tx.now + self.key_ttl
            tx.put_key(namespace, key, record)
            return True

        return await self._transact(f"recording the task of key {key!r}", run)

    async def release(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.release`."""

        def run(tx: Tx) -> bool:
            self._live(tx, namespace)
            self._end_slot(tx, namespace, slot_id, refunded=True)
            if self._held(tx, namespace, key, holder) is None:
                return False
            return tx.delete_key(namespace, key)

        return await self._transact(f"release of key {key!r}", run)

    async def unsend(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.unsend`."""

        def run(tx: Tx) -> bool:
            self._live(tx, namespace)
            self._end_slot(tx, namespace, slot_id, refunded=True)
            record = self._held(tx, namespace, key, holder)
            if record is None:
                return False
            record.state = "claimed"
            tx.put_key(namespace, key, record)
            return True

        return await self._transact(f"marking key {key!r} claimed", run)

    async def mark_uncertain(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.mark_uncertain`."""

        def run(tx: Tx) -> bool:
            self._live(tx, namespace)
            self._end_slot(tx, namespace, slot_id, refunded=False)
            record = self._held(tx, namespace, key, holder)
            if record is None:
                return False
            record.state = "uncertain"
            tx.put_key(namespace, key, record)
            return True

        return await self._transact(f"marking key {key!r} uncertain", run)

    async def mark_done(self, namespace: str, key: str, *, task_id: str) -> bool:
        """See :meth:`Store.mark_done`."""

        def run(tx: Tx) -> bool:
            self._live(tx, namespace)
            record = self._record(tx, namespace, key)
            if record is None or record.task_id != task_id:
                return False
            # A done key needs only its fingerprint and task id (and its expiry).
            record.state, record.request, record.holder, record.lease_until = "done", "", "", 0.0
            tx.put_key(namespace, key, record)
            return True

        return await self._transact(f"marking key {key!r} done", run)

    async def unfinished(self, *, namespace: str | None = None) -> list[StoredJob]:
        """See :meth:`Store.unfinished`."""
        namespace = namespace if namespace is not None else self.namespace

        def run(tx: Tx) -> list[StoredJob]:
            return [
                job_of(ns, key, record)
                for ns, key, record in tx.keys(namespace)
                if record.state != "done" and record.expires_at > tx.now
            ]

        jobs = await self._transact("listing unfinished keys", run)
        return sorted(jobs, key=lambda job: (job.namespace, job.key))

    async def forget(self, key: str, *, namespace: str | None = None) -> bool:
        """See :meth:`Store.forget`."""
        namespace = namespace if namespace is not None else self.namespace

        def run(tx: Tx) -> bool:
            found = False
            for ns in [namespace] if namespace is not None else tx.namespaces():
                found = tx.delete_key(ns, key) or found
            return found

        return await self._transact(f"forgetting key {key!r}", run)

    async def acquire_slot(
        self, namespace: str, *, rate: tuple[int, float], slot_id: str, lease_s: float
    ) -> float:
        """See :meth:`Store.acquire_slot`."""
        slot = SlotRequest(slot_id=slot_id, rate=rate, lease_s=lease_s)
        return await self._transact(
            "taking a submission slot", lambda tx: self._take_slot(tx, namespace, slot)
        )

    async def end_slot(self, namespace: str, slot_id: str, *, refunded: bool) -> float | None:
        """See :meth:`Store.end_slot`."""

        def run(tx: Tx) -> float | None:
            window = tx.get_window(namespace)
            stamp = window.end(tx.now, slot_id, refunded=refunded)
            tx.put_window(namespace, window)
            return stamp

        return await self._transact("ending a submission slot", run)

    async def slow_down(self, namespace: str, *, rate: tuple[int, float], pause_s: float) -> int:
        """See :meth:`Store.slow_down`."""

        def run(tx: Tx) -> int:
            window = tx.get_window(namespace)
            allowance = window.slow_down(tx.now, rate, pause_s)
            tx.put_window(namespace, window)
            return allowance

        return await self._transact("slowing the submission window down", run)

    async def pause(self, namespace: str, *, pause_s: float) -> float:
        """See :meth:`Store.pause`."""

        def run(tx: Tx) -> float:
            window = tx.get_window(namespace)
            left = window.pause(tx.now, pause_s)
            tx.put_window(namespace, window)
            return left

        return await self._transact("pausing the submission window", run)

    async def allowance(self, namespace: str, *, rate: tuple[int, float]) -> int:
        """See :meth:`Store.allowance`."""

        def run(tx: Tx) -> int:
            window = tx.get_window(namespace)
            allowance = window.tidy(tx.now, *rate)
            tx.put_window(namespace, window)
            return allowance

        return await self._transact("reading the submission allowance", run)


def job_of(namespace: str, key: str, record: KeyRecord) -> StoredJob:
    """The public view of a key's record."""
    return StoredJob(
        key=key,
        namespace=namespace,
        request=json.loads(record.request),
        task_id=record.task_id,
        state=record.state,
    )
