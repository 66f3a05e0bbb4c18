"""One contract for every store: memory, SQLite and Redis behave alike.

Leases and windows are tens of milliseconds of the store's own clock; a test that needs one
to pass sleeps past it (the clock moving on is the behaviour under test, not a race).
"""

from __future__ import annotations

import asyncio

import pytest

import midvary
from midvary._store import Claim, ClaimState, SlotRequest

from .conftest import Backend

REQ = {"taskId": "parent-1", "imageIndex": 0}
FP = "vary:parent-1:0:"
LONG = 30.0
SHORT = 0.05


async def claim(
    b: Backend,
    ns: str,
    holder: str,
    *,
    key: str = "k",
    lease: float = LONG,
    slot: SlotRequest | None = None,
    fp: str = FP,
) -> Claim:
    return await b.store.claim(
        ns, key, fingerprint=fp, request=REQ, holder=holder, lease_s=lease, slot=slot
    )


async def test_first_claim_owns_and_a_second_is_busy(backend: Backend, namespace: str) -> None:
    """The first claim of a key is CLAIMED; another holder meanwhile sees BUSY with a wait."""
    first = await claim(backend, namespace, "a")
    second = await claim(backend, namespace, "b")
    assert first.state is ClaimState.CLAIMED
    assert second.state is ClaimState.BUSY
    assert second.retry_after is not None
    assert 0 < second.retry_after <= LONG


async def test_recorded_task_is_known_to_later_claims(backend: Backend, namespace: str) -> None:
    """After record_task, a claim by anyone returns KNOWN with the task id (nothing to send)."""
    await claim(backend, namespace, "a")
    await backend.store.mark_sending(namespace, "k", holder="a", lease_s=LONG, slot=None)
    assert await backend.store.record_task(namespace, "k", holder="a", task_id="task-9")
    later = await claim(backend, namespace, "b")
    assert later.state is ClaimState.KNOWN
    assert later.task_id == "task-9"


async def test_other_fingerprint_conflicts(backend: Backend, namespace: str) -> None:
    """The same key for another request raises KeyConflictError (a ValueError), any state."""
    await claim(backend, namespace, "a")
    with pytest.raises(midvary.KeyConflictError, match="'k'") as info:
        await claim(backend, namespace, "b", fp="vary:parent-1:1:")
    assert isinstance(info.value, ValueError)
    assert await backend.store.record_task(namespace, "k", holder="a", task_id="t")
    with pytest.raises(midvary.KeyConflictError):
        await claim(backend, namespace, "c", fp="other")
    assert (await claim(backend, namespace, "c")).state is ClaimState.KNOWN


async def test_holder_dead_before_sending_is_taken_over(backend: Backend, namespace: str) -> None:
    """A claim whose lease expired before it was marked sending goes to the next claimer."""
    await claim(backend, namespace, "dead", lease=SHORT)
    await asyncio.sleep(SHORT * 2)
    taken = await claim(backend, namespace, "b")
    assert taken.state is ClaimState.CLAIMED
    with pytest.raises(midvary.StoreError, match="lost"):
        await backend.store.mark_sending(namespace, "k", holder="dead", lease_s=LONG, slot=None)
    assert not await backend.store.renew(namespace, "k", holder="dead", lease_s=LONG)


async def test_holder_dead_while_sending_is_uncertain(backend: Backend, namespace: str) -> None:
    """A sending claim whose holder stopped renewing is UNCERTAIN, until forget()."""
    await claim(backend, namespace, "dead", lease=SHORT)
    assert (
        await backend.store.mark_sending(namespace, "k", holder="dead", lease_s=SHORT, slot=None)
        == 0.0
    )
    await asyncio.sleep(SHORT * 2)
    assert (await claim(backend, namespace, "b")).state is ClaimState.UNCERTAIN
    assert (await claim(backend, namespace, "c")).state is ClaimState.UNCERTAIN
    assert await backend.store.forget("k", namespace=namespace)
    assert (await claim(backend, namespace, "d")).state is ClaimState.CLAIMED


async def test_live_sender_is_busy(backend: Backend, namespace: str) -> None:
    """A sending claim with a fresh lease is BUSY for others, not uncertain."""
    await claim(backend, namespace, "a")
    await backend.store.mark_sending(namespace, "k", holder="a", lease_s=LONG, slot=None)
    assert (await claim(backend, namespace, "b")).state is ClaimState.BUSY


async def test_release_lets_a_later_submission_send(backend: Backend, namespace: str) -> None:
    """A released key is claimable at once; only its holder can release it."""
    await claim(backend, namespace, "a")
    assert not await backend.store.release(namespace, "k", holder="b")
    assert await backend.store.release(namespace, "k", holder="a")
    assert (await claim(backend, namespace, "b")).state is ClaimState.CLAIMED


async def test_uncertain_then_task_recorded(backend: Backend, namespace: str) -> None:
    """An uncertain key stays uncertain; a late task id for it still becomes KNOWN."""
    await claim(backend, namespace, "a")
    await backend.store.mark_sending(namespace, "k", holder="a", lease_s=LONG, slot=None)
    assert await backend.store.mark_uncertain(namespace, "k", holder="a")
    assert (await claim(backend, namespace, "b")).state is ClaimState.UNCERTAIN
    assert await backend.store.record_task(namespace, "k", holder="a", task_id="late")
    assert (await claim(backend, namespace, "b")).task_id == "late"


async def test_unsend_then_death_is_taken_over(backend: Backend, namespace: str) -> None:
    """A holder waiting out a 429 (unsend) that dies leaves a claimable key, not uncertain."""
    await claim(backend, namespace, "a", lease=SHORT)
    await backend.store.mark_sending(namespace, "k", holder="a", lease_s=SHORT, slot=None)
    assert await backend.store.unsend(namespace, "k", holder="a")
    await asyncio.sleep(SHORT * 2)
    assert (await claim(backend, namespace, "b")).state is ClaimState.CLAIMED


async def test_reclaim_by_same_holder_after_lost_reply(backend: Backend, namespace: str) -> None:
    """A claim retried by its own holder (reply lost) returns CLAIMED and keeps its slot."""
    slot = SlotRequest(slot_id="s1", rate=(1, LONG))
    first = await claim(backend, namespace, "a", slot=slot)
    again = await claim(backend, namespace, "a", slot=slot)
    assert first.sending
    assert again.sending
    other = SlotRequest(slot_id="s2", rate=(1, LONG))
    assert (
        await backend.store.acquire_slot(
            namespace, rate=(1, LONG), slot_id=other.slot_id, lease_s=LONG
        )
        > 0
    )


async def test_claim_with_full_window_waits(backend: Backend, namespace: str) -> None:
    """A claim whose slot is not free is CLAIMED with a wait, not sending, until a slot frees."""
    rate = (1, LONG)
    assert (await claim(backend, namespace, "a", key="k1",
                        slot=SlotRequest(slot_id="s1", rate=rate))).sending  # fmt: skip
    second = await claim(backend, namespace, "b", key="k2",
                         slot=SlotRequest(slot_id="s2", rate=rate))  # fmt: skip
    assert second.state is ClaimState.CLAIMED
    assert second.slot_wait is not None
    assert second.slot_wait > 0
    assert not second.sending
    assert await backend.store.release(namespace, "k1", holder="a", slot_id="s1")
    wait = await backend.store.mark_sending(
        namespace, "k2", holder="b", lease_s=LONG, slot=SlotRequest(slot_id="s2", rate=rate)
    )
    assert wait == 0.0
    assert (await claim(backend, namespace, "c", key="k2")).state is ClaimState.BUSY


async def test_unfinished_lists_keys_until_done(backend: Backend, namespace: str) -> None:
    """unfinished() reports key, request, task id and state; mark_done removes a key."""
    store = backend.store
    await claim(backend, namespace, "a", key="claimed")
    await claim(backend, namespace, "a", key="sent")
    await store.mark_sending(namespace, "sent", holder="a", lease_s=LONG, slot=None)
    await store.record_task(namespace, "sent", holder="a", task_id="t-1")
    await claim(backend, namespace, "a", key="lost")
    await store.mark_sending(namespace, "lost", holder="a", lease_s=LONG, slot=None)
    await store.mark_uncertain(namespace, "lost", holder="a")
    jobs = await store.unfinished(namespace=namespace)
    assert [(j.key, j.state, j.task_id) for j in jobs] == [
        ("claimed", "claimed", None),
        ("lost", "uncertain", None),
        ("sent", "submitted", "t-1"),
    ]
    assert all(j.request == REQ and j.namespace == namespace for j in jobs)
    assert await store.mark_done(namespace, "sent", task_id="t-1")
    assert [j.key for j in await store.unfinished(namespace=namespace)] == ["claimed", "lost"]
    assert (await claim(backend, namespace, "b", key="sent")).task_id == "t-1"
    assert await store.unfinished(namespace=namespace + "-other") == []


async def test_forget_without_namespace_covers_all(backend: Backend, namespace: str) -> None:
    """forget(key) with no namespace deletes the key in every namespace; False if absent."""
    await claim(backend, namespace, "a")
    await claim(backend, namespace + "-2", "a")
    assert await backend.store.forget("k")
    assert not await backend.store.forget("k")
    assert (await claim(backend, namespace, "b")).state is ClaimState.CLAIMED
    assert (await claim(backend, namespace + "-2", "b")).state is ClaimState.CLAIMED


async def test_lost_data_is_detected(backend: Backend, namespace: str) -> None:
    """A store that lost its data makes every key operation raise StoreError, not re-send."""
    await claim(backend, namespace, "a")
    await backend.store.record_task(namespace, "k", holder="a", task_id="t")
    await backend.wipe()
    with pytest.raises(midvary.StoreError, match="lost its data"):
        await claim(backend, namespace, "b")
    with pytest.raises(midvary.StoreError, match="lost its data"):
        await backend.store.record_task(namespace, "k", holder="a", task_id="t")
    fresh = backend.sibling()  # a process started after the loss cannot tell
    async with fresh:
        assert (await fresh.claim(namespace, "k", fingerprint=FP, request=REQ, holder="c",
                                  lease_s=LONG)).state is ClaimState.CLAIMED  # fmt: skip


async def test_key_ttl_expires_keys(backend: Backend, namespace: str) -> None:
    """A key older than key_ttl is gone: a later claim sends again."""
    backend.store.key_ttl = SHORT
    await claim(backend, namespace, "a")
    await backend.store.record_task(namespace, "k", holder="a", task_id="t")
    await asyncio.sleep(SHORT * 3)
    assert (await claim(backend, namespace, "b")).state is ClaimState.CLAIMED


# --- the shared submission window ----------------------------------------------------------


async def test_window_admits_count_then_waits(backend: Backend, namespace: str) -> None:
    """At most count slots (in flight or stamped) per window; a refund frees one at once."""
    store, rate = backend.store, (2, LONG)
    assert await store.acquire_slot(namespace, rate=rate, slot_id="a", lease_s=LONG) == 0.0
    assert await store.acquire_slot(namespace, rate=rate, slot_id="a", lease_s=LONG) == 0.0
    assert await store.acquire_slot(namespace, rate=rate, slot_id="b", lease_s=LONG) == 0.0
    assert await store.acquire_slot(namespace, rate=rate, slot_id="c", lease_s=LONG) > 0
    stamp = await store.end_slot(namespace, "a", refunded=False)
    assert stamp is not None
    wait = await store.acquire_slot(namespace, rate=rate, slot_id="c", lease_s=LONG)
    assert 0 < wait <= LONG  # "a" is a stamp now: it counts for a window
    assert await store.end_slot(namespace, "b", refunded=True) is None
    assert await store.acquire_slot(namespace, rate=rate, slot_id="c", lease_s=LONG) == 0.0


async def test_stamps_leave_after_the_window(backend: Backend, namespace: str) -> None:
    """A stamp stops counting once the window has passed it."""
    store, rate = backend.store, (1, 0.1)
    assert await store.acquire_slot(namespace, rate=rate, slot_id="a", lease_s=LONG) == 0.0
    await store.end_slot(namespace, "a", refunded=False)
    wait = await store.acquire_slot(namespace, rate=rate, slot_id="b", lease_s=LONG)
    assert 0 < wait <= 0.1
    await asyncio.sleep(0.15)
    assert await store.acquire_slot(namespace, rate=rate, slot_id="b", lease_s=LONG) == 0.0


async def test_dead_slot_expires_into_a_stamp(backend: Backend, namespace: str) -> None:
    """A slot whose owner died counts until its lease ends, then as a stamp for a window."""
    store, rate = backend.store, (1, 0.3)
    assert await store.acquire_slot(namespace, rate=rate, slot_id="dead", lease_s=SHORT) == 0.0
    await asyncio.sleep(SHORT * 2)
    wait = await store.acquire_slot(namespace, rate=rate, slot_id="b", lease_s=LONG)
    assert 0 < wait <= 0.3
    await asyncio.sleep(0.35)
    assert await store.acquire_slot(namespace, rate=rate, slot_id="b", lease_s=LONG) == 0.0


async def test_slow_down_halves_once_and_pauses(backend: Backend, namespace: str) -> None:
    """A 429 halves the shared allowance once per pause, and pauses every acquirer."""
    store, rate = backend.store, (8, LONG)
    assert await store.allowance(namespace, rate=rate) == 8
    assert await store.slow_down(namespace, rate=rate, pause_s=0.5) == 4
    assert await store.slow_down(namespace, rate=rate, pause_s=0.5) == 4
    wait = await store.acquire_slot(namespace, rate=rate, slot_id="a", lease_s=LONG)
    assert 0 < wait <= 0.5
    assert await store.allowance(namespace, rate=rate) == 4


async def test_allowance_grows_back_per_quiet_window(backend: Backend, namespace: str) -> None:
    """After a slow-down the allowance grows by one per quiet window, up to the count."""
    store, rate = backend.store, (4, 0.1)
    assert await store.slow_down(namespace, rate=rate, pause_s=0.0) == 2
    await asyncio.sleep(0.25)
    assert await store.allowance(namespace, rate=rate) == 4
    assert await store.slow_down(namespace, rate=rate, pause_s=0.0) == 2
    assert await store.slow_down(namespace, rate=rate, pause_s=0.0) == 1
