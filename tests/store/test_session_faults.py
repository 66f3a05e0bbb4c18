"""A session's store failing under it: fail closed, waits go on, recovery, lost data."""

from __future__ import annotations

import pytest

import midvary
from midvary.testing import FAST_POLL, FAST_RETRY, FakeProvider

from .redis_server import RedisServer


def session_for(fake: FakeProvider, store: midvary.RedisStore, **rate: object) -> midvary.Session:
    """A fast session on the fake with ``store`` (and ``submit_rate`` if given)."""
    return midvary.Session(
        api_key=fake.api_key,
        base_url=fake.base_url,
        poll=FAST_POLL,
        retry=FAST_RETRY,
        submit_rate=rate.get("submit_rate"),  # type: ignore[arg-type]
        store=store,
    )


@pytest.mark.parametrize("rate", [None, (50, 1.0)], ids=["no-rate", "shared-rate"])
async def test_store_down_fails_closed_then_recovers(
    fake_provider: FakeProvider, redis_server: RedisServer, rate: tuple[int, float] | None
) -> None:
    """Redis stopped: new submissions raise StoreError unsent, a wait goes on; restarted: works."""
    async with (
        midvary.RedisStore(redis_server.url, socket_timeout=2.0) as store,
        session_for(fake_provider, store, submit_rate=rate) as session,
    ):
        before = await session.vary("parent-1", 0, key="a")
        redis_server.stop()
        with pytest.raises(midvary.StoreError) as caught:
            await session.vary("parent-1", 1, key="b")
        assert "127.0.0.1" in str(caught.value)
        if rate is not None:  # the shared window is in the store too: fail closed
            with pytest.raises(midvary.StoreError):
                await session.vary("parent-1", 2)
        assert fake_provider.stats.requests["submit"] == 1
        assert (await before).is_final  # the wait in progress polls on
        redis_server.start()
        again = await session.vary("parent-1", 0, key="a")
        assert again.task_id == before.task_id  # the AOF kept it: re-attached, no POST
        assert (await session.vary("parent-1", 1, key="b")).task_id != before.task_id
    assert fake_provider.stats.requests["submit"] == 2
    assert fake_provider.stats.duplicate_submissions == 0


async def test_store_that_lost_its_data_stops_submissions(
    fake_provider: FakeProvider, redis_server: RedisServer
) -> None:
    """Redis restarted without persistence: keyed submissions stop with StoreError."""
    async with (
        midvary.RedisStore(redis_server.url) as store,
        session_for(fake_provider, store) as session,
    ):
        await session.vary("parent-1", 0, key="a")
        redis_server.stop()
        redis_server.start(persistent=False)
        with pytest.raises(midvary.StoreError, match="lost its data"):
            await session.vary("parent-1", 0, key="a")
        with pytest.raises(midvary.StoreError, match="lost its data"):
            await session.vary("parent-1", 1, key="c")
    assert fake_provider.stats.requests["submit"] == 1


async def test_password_never_shown(fake_provider: FakeProvider, tmp_path: object) -> None:
    """A Redis URL's password is not in the store's repr nor in a StoreError."""
    store = midvary.RedisStore("redis://:s3cret-pw@127.0.0.1:1/0", socket_timeout=0.5)
    assert "s3cret-pw" not in repr(store)
    with pytest.raises(midvary.StoreError) as caught:
        await store.open()
    assert "s3cret-pw" not in str(caught.value)
    async with session_for(fake_provider, store) as session:
        with pytest.raises(midvary.StoreError) as unopened:
            await session.vary("parent-1", 0, key="k")
        assert "s3cret-pw" not in str(unopened.value)
        assert "s3cret-pw" not in repr(session)
    assert fake_provider.stats.requests["submit"] == 0
