"""SQLiteStore: one file shared by several processes on one machine.

Why stdlib ``sqlite3``: WAL mode lets readers and one writer work at once, and
``BEGIN IMMEDIATE`` makes each operation one serialised read-modify-write across
processes, which is all a claim needs. Every call runs in the store's one worker thread (the
connection never leaves it), so the event loop never blocks on the file. The clock is the
host's wall clock, which every process on the host shares.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import attrs

from .._errors import StoreError
from .._ratelimit import Window
from .._retry import retry_blocking
from .._validate import finite_seconds
from ._base import (
    DEFAULT_CLAIM_LEASE,
    DEFAULT_KEY_TTL,
    check_namespace,
    key_state,
    no_callbacks,
    store_error,
)
from ._local import KeyRecord, LocalStore, Tx

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS midvary_keys (
    ns TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, request TEXT NOT NULL,
    state TEXT NOT NULL, holder TEXT NOT NULL, lease_until REAL NOT NULL, task_id TEXT,
    expires_at REAL NOT NULL, PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS midvary_done (
    ns TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, task_id TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS midvary_windows (ns TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS midvary_epochs (ns TEXT PRIMARY KEY, epoch TEXT NOT NULL);
"""

_COLUMNS = "fingerprint, request, state, holder, lease_until, task_id, expires_at"
# Keys done by an earlier version, kept whole in midvary_keys, move to midvary_done.
_MOVE_DONE = """
INSERT OR REPLACE INTO midvary_done
    SELECT ns, key, fingerprint, task_id, expires_at FROM midvary_keys
    WHERE state = 'done' AND task_id IS NOT NULL;
DELETE FROM midvary_keys WHERE state = 'done';
"""


class _SQLiteTx:
    """One ``BEGIN IMMEDIATE`` transaction, in the worker thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.now = time.time()
        self._conn = conn

    def get_epoch(self, namespace: str) -> str | None:
        row = self._conn.execute(
            "SELECT epoch FROM midvary_epochs WHERE ns = ?", (namespace,)
        ).fetchone()
        return None if row is None else str(row[0])

    def put_epoch(self, namespace: str, epoch: str) -> None:
        self._conn.execute("INSERT INTO midvary_epochs VALUES (?, ?)", (namespace, epoch))

    def get_key(self, namespace: str, key: str) -> KeyRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM midvary_keys WHERE ns = ? AND key = ?",  # noqa: S608
            (namespace, key),
        ).fetchone()
        if row is not None:
            return _record(row)
        done = self._conn.execute(
            "SELECT fingerprint, task_id, expires_at FROM midvary_done WHERE ns = ? AND key = ?",
            (namespace, key),
        ).fetchone()
        if done is None:
            return None
        fingerprint, task_id, expires_at = done
        return KeyRecord(
            fingerprint=str(fingerprint),
            request="",
            state="done",
            holder="",
            lease_until=0.0,
            task_id=str(task_id),
            expires_at=float(expires_at),
        )

    def put_key(self, namespace: str, key: str, record: KeyRecord) -> None:
        if record.state == "done":
            # A done key's own table holds only what it needs: a fifth of a key's row.
            self._conn.execute(
                "DELETE FROM midvary_keys WHERE ns = ? AND key = ?", (namespace, key)
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO midvary_done VALUES (?, ?, ?, ?, ?)",
                # Whole seconds (rounded up) are stored in fewer bytes.
                (namespace, key, record.fingerprint, record.task_id, math.ceil(record.expires_at)),
            )
            return
        self._conn.execute(
            "INSERT OR REPLACE INTO midvary_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                namespace,
                key,
                record.fingerprint,
                record.request,
                record.state,
                record.holder,
                record.lease_until,
                record.task_id,
                record.expires_at,
            ),
        )

    def delete_key(self, namespace: str, key: str) -> bool:
        deleted = 0
        for table in ("midvary_keys", "midvary_done"):
            cursor = self._conn.execute(
                f"DELETE FROM {table} WHERE ns = ? AND key = ?",  # noqa: S608
                (namespace, key),
            )
            deleted += cursor.rowcount
        return deleted > 0

    def namespaces(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT ns FROM midvary_keys UNION SELECT ns FROM midvary_done"
        ).fetchall()
        return [str(row[0]) for row in rows]

    def keys(self, namespace: str | None) -> list[tuple[str, str, KeyRecord]]:
        rows = self._conn.execute(
            f"SELECT ns, key, {_COLUMNS} FROM midvary_keys"  # noqa: S608
            " WHERE ? IS NULL OR ns = ? ORDER BY ns, key",
            (namespace, namespace),
        ).fetchall()
        return [(str(row[0]), str(row[1]), _record(row[2:])) for row in rows]

    def get_window(self, namespace: str) -> Window:
        row = self._conn.execute(
            "SELECT state FROM midvary_windows WHERE ns = ?", (namespace,)
        ).fetchone()
        return Window() if row is None else Window(**json.loads(row[0]))

    def put_window(self, namespace: str, window: Window) -> None:
        # The window's fields by name, as JSON (what every version wrote).
        state = json.dumps(attrs.asdict(window))
        self._conn.execute(
            "INSERT OR REPLACE INTO midvary_windows VALUES (?, ?)", (namespace, state)
        )


def _record(row: tuple[object, ...] | sqlite3.Row) -> KeyRecord:
    fingerprint, request, state, holder, lease_until, task_id, expires_at = tuple(row)
    return KeyRecord(
        fingerprint=str(fingerprint),
        request=str(request),
        state=key_state(state, "SQLite"),
        holder=str(holder),
        lease_until=float(lease_until),
        task_id=None if task_id is None else str(task_id),
        expires_at=float(expires_at),
    )


class SQLiteStore(LocalStore):
    """A store in one SQLite file, shared by every process on one machine.

    Use it to resume a killed script, or to share keys and the account's submission limit
    between a few worker processes on one host. For several machines use
    :class:`RedisStore`.

    Args:
        path: The database file (created if missing). Keep it on a local disk: SQLite's
            locking is not reliable over network file systems.
        namespace: The namespace every session on this store uses; ``None`` means one per
            API key (a keyed hash of it: the key itself is never written).
        key_ttl: Seconds a key is kept (default 15 days, the provider's retention).
        claim_lease: Seconds a session's claim on a key lives without renewal (default 30;
            renewed every third of it): how long a key whose submitter died blocks the
            others before it is taken over (never sent) or called uncertain (sending).
        busy_timeout: Seconds an operation waits for another process's transaction before
            it fails with :class:`~midvary.StoreError`.

    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str | None = None,
        key_ttl: float = DEFAULT_KEY_TTL,
        busy_timeout: float = 30.0,
        claim_lease: float = DEFAULT_CLAIM_LEASE,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.namespace = check_namespace(namespace) if namespace is not None else None
        self.key_ttl = finite_seconds(key_ttl, "key_ttl")
        self.claim_lease = finite_seconds(claim_lease, "claim_lease")
        self._busy_timeout = finite_seconds(busy_timeout, "busy_timeout")
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "open" if self._executor is not None else "closed"
        return f"<SQLiteStore {str(self.path)!r} {state}>"

    async def open(self) -> None:
        """Open (and create) the database file; idempotent."""
        async with self._lock:
            if self._executor is not None:
                return
            executor = concurrent.futures.ThreadPoolExecutor(1, "midvary-sqlite")
            try:
                self._conn = await asyncio.get_running_loop().run_in_executor(
                    executor, self._connect
                )
            except BaseException:
                await _shut_down(executor)
                raise
            self._executor = executor

    def _connect(self) -> sqlite3.Connection:
        # SQLite answers "database is locked" at once, without the busy timeout's wait, in a
        # few cases: two processes switching a new file to WAL together (its deadlock rule
        # for a connection that holds a shared lock), a WAL file recovered after a kill.
        # Opening (every step of which is idempotent) tries again until busy_timeout passed
        # (``_retry.is_transient`` knows SQLite's "locked" and "busy").
        try:
            return retry_blocking(self._connect_once, within_s=self._busy_timeout)
        except sqlite3.Error as exc:
            raise store_error(f"cannot open the SQLite store {str(self.path)!r}", exc) from exc

    def _connect_once(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + _MOVE_DONE + "COMMIT;")
            for table in ("midvary_keys", "midvary_done"):
                conn.execute(
                    f"DELETE FROM {table} WHERE expires_at <= ?",  # noqa: S608
                    (time.time(),),
                )
        except BaseException:
            conn.close()  # and with it any transaction the script left open
            raise
        return conn

    async def close(self) -> None:
        """Close the database file; idempotent."""
        async with self._lock:
            executor, conn = self._executor, self._conn
            self._executor = self._conn = None
            if executor is None or conn is None:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            finally:
                await _shut_down(executor)

    # --- no callback tokens: no channel wakes another process --------------------------

    async def add_token(self, scope: str, token_id: str, *, ttl_s: float) -> NoReturn:
        """Refused: see :meth:`no_callbacks`; use a RedisStore for callbacks across processes."""
        no_callbacks(self)

    async def bind_token(self, scope: str, token_id: str, *, task_id: str) -> NoReturn:
        """Refused, as :meth:`add_token`."""
        no_callbacks(self)

    async def get_token(self, scope: str, token_id: str) -> NoReturn:
        """Refused, as :meth:`add_token`."""
        no_callbacks(self)

    async def settle_token(self, scope: str, token_id: str, *, grace_s: float) -> NoReturn:
        """Refused, as :meth:`add_token`."""
        no_callbacks(self)

    async def publish_wake(self, scope: str, token: str) -> NoReturn:
        """Refused, as :meth:`add_token`."""
        no_callbacks(self)

    def wakes(self, scope: str) -> NoReturn:
        """Refused, as :meth:`add_token`."""
        no_callbacks(self)

    async def _transact(self, what: str, fn: Callable[[Tx], T]) -> T:
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise StoreError(f"{what}: the SQLite store is not open (use `async with store`)")

        def run() -> T:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise store_error(f"{what} failed in {str(self.path)!r}", exc) from exc
            try:
                result = fn(_SQLiteTx(conn))
                conn.execute("COMMIT")
            except BaseException as exc:
                conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise store_error(f"{what} failed in {str(self.path)!r}", exc) from exc
                raise
            return result

        return await asyncio.get_running_loop().run_in_executor(executor, run)


async def _shut_down(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    """Stop the store's thread and wait for it to end (joining blocks: from another thread)."""
    await asyncio.to_thread(executor.shutdown, wait=True)
