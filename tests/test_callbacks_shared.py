"""CallbackReceiver(store=...): replicas recognise each other's tokens (in one process here).

The two-process version, on a real Redis, is tests/fleet/test_replicas.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import midvary
from midvary._store import MemoryStore

from .test_callbacks import NEVER, StartWorld, callback_body, start_world, until

__all__ = ["start_world"]


def test_store_must_share_callbacks(tmp_path: Path) -> None:
    """A SQLite store (no channel between processes) or a non-store is refused at once."""
    with pytest.raises(TypeError, match="RedisStore"):
        midvary.CallbackReceiver(store=midvary.SQLiteStore(tmp_path / "s.sqlite"))
    with pytest.raises(TypeError, match="store must be"):
        midvary.CallbackReceiver(store="redis://localhost")  # type: ignore[arg-type]


async def test_a_replica_passes_a_delivery_on_to_the_owner(start_world: StartWorld) -> None:
    """A delivery at receiver B for receiver A's token wakes A's handle: one GET."""
    world = await start_world()
    store = MemoryStore()
    peer = midvary.CallbackReceiver(store=store, safety_poll=NEVER)
    await peer.start()
    assert peer.public_url is not None
    # The owner hands out the peer's URL, as a load balancer would route it there.
    owner = midvary.CallbackReceiver(public_url=peer.public_url, store=store, safety_poll=NEVER)
    await owner.start()
    try:
        async with midvary.Session(
            api_key=world.fake.api_key, base_url=world.fake.base_url, callbacks=owner
        ) as session:
            handle = await session.vary("parent-1", 0)
            url = world.callback_url(handle.task_id)
            assert owner.active_tokens == 1
            assert peer.active_tokens == 0
            waiter = asyncio.create_task(handle.wait())
            world.finish(handle.task_id)
            record = await waiter
            assert record.status is midvary.TaskStatus.SUCCESS
            assert world.polls(handle.task_id) == 1
            # A body about another task is refused by the replica that checks it.
            assert await world.post(url, callback_body("other-task")) == 400
    finally:
        await owner.stop()
        await peer.stop()


async def test_a_store_failure_before_the_post_sends_nothing(start_world: StartWorld) -> None:
    """A store that cannot record the token fails the submission closed: nothing is sent."""
    world = await start_world()
    store = midvary.RedisStore("redis://127.0.0.1:1/0")  # never opened
    receiver = midvary.CallbackReceiver(store=store, safety_poll=NEVER)
    await receiver.start()
    try:
        async with midvary.Session(
            api_key=world.fake.api_key, base_url=world.fake.base_url, callbacks=receiver
        ) as session:
            with pytest.raises(midvary.StoreError, match="not open"):
                await session.vary("parent-1", 0)
        assert world.fake.stats.tasks_created == 0
        assert receiver.active_tokens == 0
    finally:
        await receiver.stop()


async def test_stopping_the_receiver_ends_its_listener(start_world: StartWorld) -> None:
    """The wake-up subscription is a background task: stop() cancels and awaits it."""
    world = await start_world()
    store = MemoryStore()
    receiver = midvary.CallbackReceiver(store=store, safety_poll=NEVER)
    await receiver.start()
    before = asyncio.all_tasks()
    async with midvary.Session(
        api_key=world.fake.api_key, base_url=world.fake.base_url, callbacks=receiver
    ) as session:
        await session.vary("parent-1", 0)
    await until(lambda: len(asyncio.all_tasks() - before) == 1)  # the listener, still there
    await receiver.stop()
    assert asyncio.all_tasks() - before == set()
