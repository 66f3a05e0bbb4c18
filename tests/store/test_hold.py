"""holding() and StoreLimiter: what the submission pipeline uses a store through."""

from __future__ import annotations

import asyncio

import pytest

import midvary
from midvary._store import ClaimState, MemoryStore, StoreClaims, StoreLimiter, holding

from .conftest import Backend
from .redis_server import REQUIRE_ENV, SERVER_ENV, server_or_skip

REQ = {"taskId": "p", "imageIndex": 0}


async def other_claim(store: midvary.SQLiteStore | MemoryStore, ns: str) -> ClaimState:
    claim = await store.claim(ns, "k", fingerprint="fp", request=REQ, holder="x", lease_s=30)
    return claim.state


async def test_happy_path_is_claim_then_accepted(backend: Backend, namespace: str) -> None:
    """The first claim takes the slot and marks sending; accepted() records the task."""
    store = backend.store
    async with holding(
        store, namespace, "k", fingerprint="fp", request=REQ, rate=(5, 10.0)
    ) as hold:
        assert hold.claim.state is ClaimState.CLAIMED
        assert hold.sending
        await hold.before_post()  # already sending: no wait
        assert await hold.accepted("task-1")
    claim = await store.claim(namespace, "k", fingerprint="fp", request=REQ, holder="x", lease_s=30)
    assert claim.task_id == "task-1"


async def test_renewal_keeps_a_slow_claim(backend: Backend, namespace: str) -> None:
    """While the body runs longer than the lease, renewals keep others BUSY."""
    store = backend.store
    # Renewed every 0.2 s: a renewal may come up to 0.4 s late (a loaded machine, a Redis
    # round trip) before the claim lapses.
    async with holding(store, namespace, "k", fingerprint="fp", request=REQ, lease_s=0.6) as h:
        await asyncio.sleep(2.0)  # more than three leases: only renewals keep it ours
        claim = await store.claim(
            namespace, "k", fingerprint="fp", request=REQ, holder="x", lease_s=30
        )
        assert claim.state is ClaimState.BUSY
        assert not h.lost
        await h.refused()
    # The renewal started once the claim outlived a third of its lease; the exit ended it.
    assert {t for t in asyncio.all_tasks() if t.get_name().startswith("midvary-renew")} == set()
    assert (
        await store.claim(namespace, "k", fingerprint="fp", request=REQ, holder="x", lease_s=30)
    ).state is ClaimState.CLAIMED


async def test_only_a_claim_that_outlives_a_third_of_its_lease_is_renewed(
    namespace: str,
) -> None:
    """Quick claims end unrenewed (no task); a slow one is renewed; none is left after exit."""
    store = MemoryStore(claim_lease=0.3)
    claims = StoreClaims(store, namespace, rate=None)
    async with claims.claim("slow", fingerprint="fp", request=REQ) as slow:
        for n in range(20):  # quick submissions, each over before its renewal is due
            async with claims.claim(f"quick-{n}", fingerprint="fp", request=REQ) as quick:
                await quick.refused()
        assert _renewals() == set()
        await asyncio.sleep(0.4)  # more than its lease: only a renewal keeps it
        assert {t.get_name() for t in _renewals()} == {"midvary-renew-slow"}
        assert await other_claim_of(store, namespace, "slow") is ClaimState.BUSY
        await slow.refused()
    assert _renewals() == set()
    # A quick claim was released on exit: its key is free.
    assert await other_claim_of(store, namespace, "quick-0") is ClaimState.CLAIMED


def _renewals() -> set[asyncio.Task[None]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("midvary-renew")}


async def other_claim_of(store: MemoryStore, ns: str, key: str) -> ClaimState:
    claim = await store.claim(ns, key, fingerprint="fp", request=REQ, holder="x", lease_s=30)
    return claim.state


async def test_exit_settles_the_claim(namespace: str) -> None:
    """Leaving without settling: a sending key becomes uncertain, one never sent is released."""
    store = MemoryStore()

    async def crash() -> None:
        async with holding(store, namespace, "k", fingerprint="fp", request=REQ) as hold:
            assert hold.sending
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await crash()
    assert await other_claim(store, namespace) is ClaimState.UNCERTAIN
    tasks = {t for t in asyncio.all_tasks() if t.get_name().startswith("midvary-renew")}
    assert tasks == set()

    async with holding(
        store, namespace + "2", "k", fingerprint="fp", request=REQ, rate=(1, 30.0)
    ) as first:
        async with holding(
            store, namespace + "2", "j", fingerprint="fq", request=REQ, rate=(1, 30.0)
        ) as second:
            assert not second.sending  # the window is full
        await first.accepted("t")
    assert (
        await store.claim(
            namespace + "2", "j", fingerprint="fq", request=REQ, holder="y", lease_s=30
        )
    ).state is ClaimState.CLAIMED


async def test_waits_for_a_live_holder(namespace: str) -> None:
    """A second submission of a held key polls until the first records its task: KNOWN."""
    store = MemoryStore()
    async with holding(store, namespace, "k", fingerprint="fp", request=REQ) as first:

        async def second() -> str | None:
            async with holding(
                store, namespace, "k", fingerprint="fp", request=REQ, busy_poll_s=0.01
            ) as hold:
                assert hold.claim.state is ClaimState.KNOWN
                return hold.claim.task_id

        waiter = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await first.accepted("task-7")
    assert await waiter == "task-7"


async def test_retrying_refunds_and_waits_for_a_new_slot(namespace: str) -> None:
    """After a 429 (retrying), the slot is refunded and before_post() takes a new one."""
    store = MemoryStore()
    rate = (1, 30.0)
    async with holding(store, namespace, "k", fingerprint="fp", request=REQ, rate=rate) as hold:
        first_slot = hold.slot_id
        await hold.retrying()
        assert not hold.sending
        await hold.before_post()
        assert hold.sending
        assert hold.slot_id not in (None, first_slot)
        await hold.accepted("t")
    # One stamp only: the refunded slot did not count.
    assert await store.acquire_slot(namespace, rate=(2, 30.0), slot_id="z", lease_s=5) == 0.0


async def test_store_limiter_shape(backend: Backend, namespace: str) -> None:
    """StoreLimiter.slot() admits count per window, a refund frees, slow_down halves."""
    limiter = StoreLimiter(backend.store, namespace, (2, 30.0))
    async with limiter.slot() as a:
        a.refund()
    async with limiter.slot(), limiter.slot():
        pass
    waits: list[float] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2), limiter.slot(waits.append):
            pytest.fail("a third slot in the window")
    assert waits
    assert all(w > 0 for w in waits)
    assert await limiter.slow_down(0.0) == 1
    limiter.close(midvary.SessionClosedError("closed"))
    with pytest.raises(midvary.SessionClosedError):
        async with limiter.slot():
            pass


def test_missing_server_skips_unless_required() -> None:
    """No server binary: the Redis tests skip, and fail under MIDVARY_REQUIRE_REDIS=1."""
    nothing = {SERVER_ENV: "", "PATH": ""}
    with pytest.raises(pytest.skip.Exception, match="no Redis server found"):
        server_or_skip(nothing, bundled=False)
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        server_or_skip({**nothing, REQUIRE_ENV: "1"}, bundled=False)
    assert server_or_skip({SERVER_ENV: "/opt/my-redis", REQUIRE_ENV: "1"}) == "/opt/my-redis"
