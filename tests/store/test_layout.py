"""How stores keep keys: what today's code writes, and keys written by earlier versions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import redis.asyncio

import midvary
from midvary._store import ClaimState, RedisStore, SQLiteStore

from .redis_server import RedisServer

REQUEST = '{"body":{"imageIndex":0,"taskId":"parent-1"},"path":"/api/v1/mj/generateVary"}'
DAY_MS = 86_400_000


async def _old_key(client: redis.asyncio.Redis, ns: str, key: str, **fields: str) -> None:
    """A key as midvary 0.x wrote it: a hash (fp, rq, st, h, lu, tid) with the key's expiry."""
    name = f"midvary:{{{ns}}}:k:{key}"
    await client.hset(name, mapping={"fp": "fp", "rq": REQUEST, **fields})
    await client.pexpire(name, DAY_MS)


async def test_keys_written_as_hashes_keep_their_state(
    redis_session_server: RedisServer, namespace: str
) -> None:
    """A 0.x key (a hash) stays finished, submitted, uncertain or taken over, and keeps its ttl."""
    client = redis.asyncio.from_url(redis_session_server.url, decode_responses=True)
    await client.set(f"midvary:{{{namespace}}}:epoch", "0123456789abcdef")
    await _old_key(client, namespace, "done", st="done", h="x", lu="1", tid="t-done")
    await _old_key(client, namespace, "sub", st="submitted", h="x", lu="1", tid="t-sub")
    await _old_key(client, namespace, "lost", st="uncertain", h="x", lu="1")
    await _old_key(client, namespace, "dead", st="sending", h="x", lu="1")
    await _old_key(client, namespace, "quit", st="claimed", h="x", lu="1")
    async with RedisStore(redis_session_server.url) as store:

        async def claim(key: str) -> ClaimState | str:
            """The claim's task id when it names one, else its state."""
            found = await store.claim(
                namespace, key, fingerprint="fp", request={}, holder="new", lease_s=30
            )
            return found.state if found.task_id is None else found.task_id

        jobs = await store.unfinished(namespace=namespace)
        assert [(j.key, j.state, j.task_id) for j in jobs] == [
            ("dead", "sending", None),
            ("lost", "uncertain", None),
            ("quit", "claimed", None),
            ("sub", "submitted", "t-sub"),
        ]
        assert jobs[0].request == {
            "body": {"imageIndex": 0, "taskId": "parent-1"},
            "path": "/api/v1/mj/generateVary",
        }
        assert await claim("done") == "t-done"
        assert await claim("sub") == "t-sub"
        assert await claim("lost") is ClaimState.UNCERTAIN
        assert await claim("dead") is ClaimState.UNCERTAIN  # its sender died sending
        assert await claim("quit") is ClaimState.CLAIMED  # never sent: taken over
        assert await store.mark_done(namespace, "sub", task_id="t-sub")
        assert await claim("sub") == "t-sub"
        assert [j.key for j in await store.unfinished(namespace=namespace)] == [
            "dead",
            "lost",
            "quit",
        ]
        assert await store.forget("done", namespace=namespace)
        assert await claim("done") is ClaimState.CLAIMED
    for key in ("lost", "dead"):
        assert 0 < await client.pttl(f"midvary:{{{namespace}}}:k:{key}") <= DAY_MS
    # Done, "sub" keeps its expiry: its entry in the done hash ends with the old hash's.
    done = f"midvary:{{{namespace}}}:done"
    assert await client.exists(f"midvary:{{{namespace}}}:k:sub") == 0
    assert 0 < await client.pttl(done) <= DAY_MS + 1000
    await client.aclose()


async def test_a_done_key_keeps_only_its_fingerprint_and_task(
    redis_session_server: RedisServer, namespace: str
) -> None:
    """Once done, a key is a field of the done hash: fingerprint and task id, no request."""
    client = redis.asyncio.from_url(redis_session_server.url, decode_responses=True)
    async with RedisStore(redis_session_server.url, key_ttl=60.0) as store:
        await store.claim(
            namespace, "k", fingerprint="fp-1", request={"big": "x" * 500}, holder="h", lease_s=30
        )
        await store.record_task(namespace, "k", holder="h", task_id="task-1")
        assert await store.mark_done(namespace, "k", task_id="task-1")
        assert await client.exists(f"midvary:{{{namespace}}}:k:k") == 0
        entry = await client.hget(f"midvary:{{{namespace}}}:done", "k")
        assert entry is not None
        assert "fp-1" in entry
        assert "task-1" in entry
        assert "xxx" not in entry
        assert 0 < await client.pttl(f"midvary:{{{namespace}}}:done") <= 61_000
        found = await store.claim(
            namespace, "k", fingerprint="fp-1", request={}, holder="x", lease_s=30
        )
        assert found.task_id == "task-1"
        with pytest.raises(midvary.KeyConflictError):
            await store.claim(
                namespace, "k", fingerprint="fp-2", request={}, holder="x", lease_s=30
            )
    await client.aclose()


async def test_done_keys_expire_on_their_own(
    redis_session_server: RedisServer, namespace: str
) -> None:
    """A done key past its ttl is gone (claimable again), though the done hash lives on."""
    async with (
        RedisStore(redis_session_server.url, key_ttl=0.2) as short,
        RedisStore(redis_session_server.url) as long,
    ):
        for store, key in ((short, "brief"), (long, "lasting")):
            await store.claim(namespace, key, fingerprint="fp", request={}, holder="h", lease_s=30)
            await store.record_task(namespace, key, holder="h", task_id=f"t-{key}")
            assert await store.mark_done(namespace, key, task_id=f"t-{key}")
        # The short key's ttl passes (a done key's expiry is kept in whole seconds, rounded up).
        await asyncio.sleep(1.3)
        brief = await long.claim(
            namespace, "brief", fingerprint="fp", request={}, holder="x", lease_s=30
        )
        lasting = await long.claim(
            namespace, "lasting", fingerprint="fp", request={}, holder="x", lease_s=30
        )
        assert brief.state is ClaimState.CLAIMED
        assert lasting.task_id == "t-lasting"


#: The SQLite schema of midvary 0.x: every key, done or not, a whole row of midvary_keys.
OLD_SQLITE = """
CREATE TABLE midvary_keys (
    ns TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, request TEXT NOT NULL,
    state TEXT NOT NULL, holder TEXT NOT NULL, lease_until REAL NOT NULL, task_id TEXT,
    expires_at REAL NOT NULL, PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE midvary_windows (ns TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE midvary_epochs (ns TEXT PRIMARY KEY, epoch TEXT NOT NULL);
"""


async def test_a_sqlite_file_of_an_earlier_version_keeps_its_keys(tmp_path: Path) -> None:
    """0.x rows stay done, submitted or uncertain; done ones move to the compact table."""
    path = tmp_path / "old.sqlite"
    later = time.time() + 3600
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE)
        conn.execute("INSERT INTO midvary_epochs VALUES ('ns', 'e')")
        for key, state, task_id in (
            ("done", "done", "t-done"),
            ("sub", "submitted", "t-sub"),
            ("lost", "uncertain", None),
        ):
            conn.execute(
                "INSERT INTO midvary_keys VALUES ('ns', ?, 'fp', ?, ?, 'x', 1.0, ?, ?)",
                (key, REQUEST, state, task_id, later),
            )
    conn.close()
    async with SQLiteStore(path) as store:
        jobs = await store.unfinished(namespace="ns")
        assert [(j.key, j.state, j.task_id) for j in jobs] == [
            ("lost", "uncertain", None),
            ("sub", "submitted", "t-sub"),
        ]

        async def claim(key: str) -> ClaimState | str:
            """The claim's task id when it names one, else its state."""
            found = await store.claim(
                "ns", key, fingerprint="fp", request={}, holder="new", lease_s=30
            )
            return found.state if found.task_id is None else found.task_id

        assert await claim("done") == "t-done"
        assert await claim("sub") == "t-sub"
        assert await claim("lost") is ClaimState.UNCERTAIN
        assert await store.mark_done("ns", "sub", task_id="t-sub")
        assert await claim("sub") == "t-sub"
        assert await store.forget("done")
        assert await claim("done") is ClaimState.CLAIMED
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key, task_id FROM midvary_done ORDER BY key").fetchall()
        states = conn.execute("SELECT key, state FROM midvary_keys ORDER BY key").fetchall()
    conn.close()
    assert rows == [("sub", "t-sub")]
    assert states == [("done", "claimed"), ("lost", "uncertain")]
