"""Callback tokens and wake-ups: the memory and Redis stores alike; SQLite refuses them."""

from __future__ import annotations

import asyncio

import pytest

from midvary._store import MemoryStore, TokenRecord

from .conftest import Backend

# Leases here are tens of milliseconds of the store's clock; a test that needs one to pass
# sleeps past it (the clock moving on is the behaviour under test, not a race).
SHORT = 0.05


#: The stores that keep tokens and carry wake-ups; SQLite has no channel between processes.
SHARING = pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)


@SHARING
async def test_a_token_is_unbound_then_bound(backend: Backend, namespace: str) -> None:
    """A recorded token reads unbound, then bound to its task; an unknown one reads None."""
    store = backend.store
    await store.add_token(namespace, "t1", ttl_s=30.0)
    assert await store.get_token(namespace, "t1") == TokenRecord(task_id=None)
    assert await store.bind_token(namespace, "t1", task_id="task-1")
    assert await store.get_token(namespace, "t1") == TokenRecord(task_id="task-1")
    assert await store.get_token(namespace, "unknown") is None
    assert not await store.bind_token(namespace, "unknown", task_id="task-2")
    assert await store.get_token(namespace, "unknown") is None


@SHARING
async def test_tokens_expire_and_settling_brings_the_end_closer(
    backend: Backend, namespace: str
) -> None:
    """A token lives its ttl; settling shortens (never lengthens) it."""
    store = backend.store
    await store.add_token(namespace, "short", ttl_s=SHORT)
    await store.add_token(namespace, "settled", ttl_s=30.0)
    await store.bind_token(namespace, "settled", task_id="task-1")
    await store.settle_token(namespace, "settled", grace_s=SHORT)
    await store.add_token(namespace, "kept", ttl_s=30.0)
    await store.settle_token(namespace, "kept", grace_s=3600.0)
    await asyncio.sleep(SHORT * 3)
    assert await store.get_token(namespace, "short") is None
    assert await store.get_token(namespace, "settled") is None
    assert await store.get_token(namespace, "kept") == TokenRecord(task_id=None)


@SHARING
async def test_a_delivery_report_and_a_key_link_live_with_their_token(
    backend: Backend, namespace: str
) -> None:
    """A token's reported task and its key link read back, and go when the token expires."""
    store = backend.store
    await store.add_token(namespace, "lost", ttl_s=SHORT * 2, link_id="key-hash")
    assert await store.linked_token(namespace, "key-hash") == "lost"
    assert await store.linked_token(namespace, "other-key") is None
    assert await store.report_token(namespace, "lost", task_id="task-9")
    assert await store.get_token(namespace, "lost") == TokenRecord(task_id=None, reported="task-9")
    assert not await store.report_token(namespace, "unknown", task_id="task-9")
    assert await store.get_token(namespace, "unknown") is None
    await asyncio.sleep(SHORT * 4)
    assert await store.get_token(namespace, "lost") is None
    assert await store.linked_token(namespace, "key-hash") is None
    assert not await store.report_token(namespace, "lost", task_id="task-9")


@SHARING
async def test_a_wake_up_reaches_every_listener_of_its_scope(
    backend: Backend, namespace: str
) -> None:
    """Two listeners of a scope both get a published token, in order; another scope's not."""
    store = backend.store
    # Another connection to the same store (a MemoryStore is only shared as itself).
    other = store if isinstance(store, MemoryStore) else backend.sibling()
    await other.open()
    try:
        async with store.wakes(namespace) as first, other.wakes(namespace) as second:
            await store.publish_wake(f"{namespace}-elsewhere", "not-for-us")
            await other.publish_wake(namespace, "t1")
            await store.publish_wake(namespace, "t2")
            assert [await anext(first), await anext(first)] == ["t1", "t2"]
            assert [await anext(second), await anext(second)] == ["t1", "t2"]
    finally:
        if other is not store:
            await other.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_refuses_callback_tokens(backend: Backend, namespace: str) -> None:
    """SQLite has no channel between processes: every token method says so."""
    assert not backend.store.shares_callbacks
    with pytest.raises(NotImplementedError, match="RedisStore"):
        await backend.store.add_token(namespace, "t1", ttl_s=30.0)
    with pytest.raises(NotImplementedError, match="RedisStore"):
        backend.store.wakes(namespace)
