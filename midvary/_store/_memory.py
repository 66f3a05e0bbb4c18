"""The in-memory store: ``key=`` deduplication within one process, without a shared store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import ClassVar, TypeVar

import attrs

from .._ratelimit import Window
from .._validate import finite_seconds
from ._base import (
    DEFAULT_CLAIM_LEASE,
    DEFAULT_KEY_TTL,
    TokenRecord,
    TokenStore,
    check_namespace,
)
from ._local import KeyRecord, LocalStore, Tx

T = TypeVar("T")


class _MemoryTx:
    """A transaction on the in-memory store: runs at once, nothing interleaves."""

    def __init__(self, store: MemoryStore) -> None:
        self.now = time.time()
        self._store = store

    def get_epoch(self, namespace: str) -> str | None:
        return self._store._epoch_marks.get(namespace)

    def put_epoch(self, namespace: str, epoch: str) -> None:
        self._store._epoch_marks[namespace] = epoch

    def get_key(self, namespace: str, key: str) -> KeyRecord | None:
        record = self._store._keys.get((namespace, key))
        return attrs.evolve(record) if record is not None else None

    def put_key(self, namespace: str, key: str, record: KeyRecord) -> None:
        self._store._keys[namespace, key] = attrs.evolve(record)

    def delete_key(self, namespace: str, key: str) -> bool:
        return self._store._keys.pop((namespace, key), None) is not None

    def keys(self, namespace: str | None) -> list[tuple[str, str, KeyRecord]]:
        return [
            (ns, key, record)
            for (ns, key), record in self._store._keys.items()
            if namespace in (None, ns)
        ]

    def namespaces(self) -> list[str]:
        return sorted({ns for ns, _ in self._store._keys})

    def get_window(self, namespace: str) -> Window:
        return self._store._windows.setdefault(namespace, Window())

    def put_window(self, namespace: str, window: Window) -> None:
        self._store._windows[namespace] = window


class MemoryStore(LocalStore, TokenStore):
    """A store in this process's memory: what ``key=`` uses without a shared store.

    It also shares callback tokens between the receivers of this one process.

    Args:
        namespace: The namespace every session on this store uses; ``None`` means one per
            API key.
        key_ttl: Seconds a key is kept (default 15 days).
        claim_lease: Seconds a session's claim on a key lives without renewal (30).

    """

    def __init__(
        self,
        *,
        namespace: str | None = None,
        key_ttl: float = DEFAULT_KEY_TTL,
        claim_lease: float = DEFAULT_CLAIM_LEASE,
    ) -> None:
        super().__init__()
        self.namespace = check_namespace(namespace) if namespace is not None else None
        self.key_ttl = finite_seconds(key_ttl, "key_ttl")
        self.claim_lease = finite_seconds(claim_lease, "claim_lease")
        self._keys: dict[tuple[str, str], KeyRecord] = {}
        self._windows: dict[str, Window] = {}
        self._epoch_marks: dict[str, str] = {}
        # (scope, token id) -> (task id or "" while unbound, expiry on the monotonic clock)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        # (scope, token id) -> the task a delivery to the unbound token named
        self._reports: dict[tuple[str, str], str] = {}
        # (scope, link id) -> the token id recorded with it (it expires with the token)
        self._links: dict[tuple[str, str], str] = {}
        self._listeners: dict[str, set[asyncio.Queue[str]]] = {}

    #: One process's memory: ``Session(store=...)`` wants a store other processes see.
    cross_process: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<MemoryStore keys={len(self._keys)}>"

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close; the data stays until the store is dropped."""

    async def _transact(self, what: str, fn: Callable[[Tx], T]) -> T:
        del what
        return fn(_MemoryTx(self))

    def _lose_data(self) -> None:
        """Forget everything, as a flushed server would (the contract tests' fault)."""
        self._keys.clear()
        self._windows.clear()
        self._epoch_marks.clear()
        self._tokens.clear()
        self._reports.clear()
        self._links.clear()

    # --- callback tokens, within this process --------------------------------------------

    def _token(self, scope: str, token_id: str) -> tuple[str, float] | None:
        found = self._tokens.get((scope, token_id))
        if found is not None and found[1] <= time.monotonic():
            del self._tokens[scope, token_id]
            self._reports.pop((scope, token_id), None)
            return None
        return found

    async def add_token(
        self, scope: str, token_id: str, *, ttl_s: float, link_id: str | None = None
    ) -> None:
        """See :meth:`Store.add_token`."""
        now = time.monotonic()
        for name, (_, expires) in tuple(self._tokens.items()):  # bounded by the live tokens
            if expires <= now:
                del self._tokens[name]
                self._reports.pop(name, None)
        live = {name[1] for name in self._tokens}
        for name, linked in tuple(self._links.items()):
            if linked not in live:
                del self._links[name]
        self._tokens[scope, token_id] = ("", now + ttl_s)
        if link_id is not None:
            self._links[scope, link_id] = token_id

    async def bind_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.bind_token`."""
        found = self._token(scope, token_id)
        if found is None:
            return False
        self._tokens[scope, token_id] = (task_id, found[1])
        return True

    async def get_token(self, scope: str, token_id: str) -> TokenRecord | None:
        """See :meth:`Store.get_token`."""
        found = self._token(scope, token_id)
        if found is None:
            return None
        return TokenRecord(task_id=found[0] or None, reported=self._reports.get((scope, token_id)))

    async def report_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.report_token`."""
        if self._token(scope, token_id) is None:
            return False
        self._reports[scope, token_id] = task_id
        return True

    async def linked_token(self, scope: str, link_id: str) -> str | None:
        """See :meth:`Store.linked_token`."""
        token_id = self._links.get((scope, link_id))
        if token_id is None or self._token(scope, token_id) is None:
            return None
        return token_id

    async def settle_token(self, scope: str, token_id: str, *, grace_s: float) -> None:
        """See :meth:`Store.settle_token`."""
        found = self._token(scope, token_id)
        if found is not None:
            self._tokens[scope, token_id] = (found[0], min(found[1], time.monotonic() + grace_s))

    async def publish_wake(self, scope: str, token: str) -> None:
        """See :meth:`Store.publish_wake`."""
        for queue in self._listeners.get(scope, ()):
            queue.put_nowait(token)

    @contextlib.asynccontextmanager
    async def wakes(self, scope: str) -> AsyncIterator[AsyncIterator[str]]:
        """See :meth:`Store.wakes`."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.setdefault(scope, set()).add(queue)
        try:
            yield _drain(queue)
        finally:
            listeners = self._listeners.get(scope, set())
            listeners.discard(queue)
            if not listeners:
                self._listeners.pop(scope, None)


async def _drain(queue: asyncio.Queue[str]) -> AsyncIterator[str]:
    while True:
        yield await queue.get()
