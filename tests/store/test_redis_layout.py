"""RedisStore's records: what today's code writes, and keys written by earlier versions."""

from __future__ import annotations

import redis.asyncio

from midvary._store import ClaimState, RedisStore

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
    for key in ("sub", "lost", "dead"):
        assert 0 < await client.pttl(f"midvary:{{{namespace}}}:k:{key}") <= DAY_MS
    await client.aclose()


async def test_a_done_key_keeps_only_its_fingerprint_and_task(
    redis_session_server: RedisServer, namespace: str
) -> None:
    """Once done, a key's record holds its fingerprint and task id: no request, no holder."""
    client = redis.asyncio.from_url(redis_session_server.url, decode_responses=True)
    async with RedisStore(redis_session_server.url) as store:
        await store.claim(
            namespace, "k", fingerprint="fp-1", request={"big": "x" * 500}, holder="h", lease_s=30
        )
        await store.record_task(namespace, "k", holder="h", task_id="task-1")
        name = f"midvary:{{{namespace}}}:k:k"
        before = await client.memory_usage(name)
        assert await store.mark_done(namespace, "k", task_id="task-1")
        after = await client.memory_usage(name)
        assert after is not None
        assert before is not None
        assert after < 200 < before
        found = await store.claim(
            namespace, "k", fingerprint="fp-1", request={}, holder="x", lease_s=30
        )
        assert found.task_id == "task-1"
    await client.aclose()
