"""The in-memory store: ``key=`` deduplication within one process, without a shared store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import attrs

from ._base import DEFAULT_KEY_TTL, check_namespace, check_seconds, new_epoch
from ._local import KeyRecord, LocalStore, Tx, Window

T = TypeVar("T")


class _MemoryTx:
    """A transaction on the in-memory store: runs at once, nothing interleaves."""

    def __init__(self, store: MemoryStore) -> None:
        self.now = time.time()
        self._store = store

    def epoch(self, namespace: str, expected: str | None) -> str | None:
        epochs = self._store._epoch_marks
        current = epochs.get(namespace)
        if current is None:
            if expected is not None:
                return None
            current = epochs[namespace] = new_epoch()
        return current if expected in (None, current) else None

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

    def get_window(self, namespace: str) -> Window:
        return self._store._windows.setdefault(namespace, Window())

    def put_window(self, namespace: str, window: Window) -> None:
        self._store._windows[namespace] = window


class MemoryStore(LocalStore):
    """A store in this process's memory: what ``key=`` uses without a shared store.

    Args:
        namespace: The namespace every session on this store uses; ``None`` means one per
            API key.
        key_ttl: Seconds a key is kept (default 15 days).

    """

    def __init__(self, *, namespace: str | None = None, key_ttl: float = DEFAULT_KEY_TTL) -> None:
        super().__init__()
        self.namespace = check_namespace(namespace) if namespace is not None else None
        self.key_ttl = check_seconds("key_ttl", key_ttl)
        self._keys: dict[tuple[str, str], KeyRecord] = {}
        self._windows: dict[str, Window] = {}
        self._epoch_marks: dict[str, str] = {}

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
