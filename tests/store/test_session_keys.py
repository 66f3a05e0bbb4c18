"""Session(store=..., key=...): each key submitted at most once, through the fake provider."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest

import midvary
from midvary.testing import FAST_POLL, FAST_RETRY, FakeProvider

from .redis_server import RedisServer

STORES = ["session", "sqlite", "redis"]
SHARED = ["sqlite", "redis"]

MakeStore = Callable[[], midvary.SQLiteStore | midvary.RedisStore]


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    """Where keys live: the session's own memory, a SQLite file or a real Redis server."""
    return str(request.param)


@pytest.fixture
def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> MakeStore | None:
    """A factory of stores on one shared place (``None`` for the session's own memory)."""
    if kind == "session":
        return None
    ns = f"t-{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        path = tmp_path / "keys.sqlite"
        return lambda: midvary.SQLiteStore(path, claim_lease=0.6)
    server: RedisServer = request.getfixturevalue("redis_session_server")
    return lambda: midvary.RedisStore(server.url, namespace=ns, claim_lease=0.6)


def session_for(
    fake: FakeProvider, store: midvary.SQLiteStore | midvary.RedisStore | None, **options: object
) -> midvary.Session:
    """A fast session on the fake, with ``store``."""
    settings: dict[str, object] = {"submit_rate": None, **options}
    return midvary.Session(
        api_key=fake.api_key,
        base_url=fake.base_url,
        poll=FAST_POLL,
        store=store,
        **{"retry": FAST_RETRY, **settings},  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(make_store: MakeStore | None) -> AsyncIterator[midvary.SQLiteStore | None]:
    """An open store of the kind under test (``None``: the session's own)."""
    if make_store is None:
        yield None
        return
    async with make_store() as opened:
        yield opened  # type: ignore[misc]


async def test_a_key_is_sent_once(fake_provider: FakeProvider, store: midvary.SQLiteStore) -> None:
    """The same key twice: one POST, the second handle names the same task."""
    async with session_for(fake_provider, store) as session:
        first = await session.vary("parent-1", 0, key="order-42/0")
        second = await session.vary("parent-1", 0, key="order-42/0")
        assert second.task_id == first.task_id
        assert (await second).is_final
    assert fake_provider.stats.requests["submit"] == 1
    assert fake_provider.stats.duplicate_submissions == 0


async def test_concurrent_jobs_with_one_key_send_once(
    fake_provider: FakeProvider, store: midvary.SQLiteStore
) -> None:
    """Two jobs of one fan-out with the same key: the second waits for the first, no POST."""
    requests = [midvary.VaryRequest(task_id="parent-1", image_index=2, key="same")] * 2
    events: list[midvary.JobEvent] = []
    async with session_for(fake_provider, store) as session:
        outcomes = await session.submit_all(requests, on_event=events.append)
    assert [o.ok for o in outcomes] == [True, True]
    assert outcomes[0].task_id == outcomes[1].task_id
    submitted = [e for e in events if e.kind is midvary.JobEventKind.SUBMITTED]
    assert sorted(e.reattached for e in submitted) == [False, True]
    assert fake_provider.stats.requests["submit"] == 1


@pytest.mark.parametrize("kind", SHARED)
async def test_another_session_reattaches(
    fake_provider: FakeProvider, make_store: MakeStore
) -> None:
    """A second run of submit_all on the shared store re-attaches every job: no POST."""
    requests = [
        midvary.VaryRequest(task_id="parent-1", image_index=i % 4, key=f"p/{i}") for i in range(8)
    ]
    async with make_store() as store, session_for(fake_provider, store) as session:
        first = await session.submit_all(requests)
        jobs = await store.unfinished()
    assert {job.state for job in jobs} == {"submitted"}
    assert {job.key for job in jobs} == {f"p/{i}" for i in range(8)}
    assert {job.task_id for job in jobs} == {o.task_id for o in first}
    events: list[midvary.JobEvent] = []
    async with make_store() as store, session_for(fake_provider, store) as session:
        second = await session.submit_all(requests, on_event=events.append)
    assert [o.task_id for o in second] == [o.task_id for o in first]
    assert all(o.ok for o in second)
    kinds = [e.kind for e in events]
    assert midvary.JobEventKind.SUBMITTING not in kinds
    assert all(e.reattached for e in events if e.kind is midvary.JobEventKind.SUBMITTED)
    assert fake_provider.stats.requests["submit"] == 8


async def test_same_key_other_request_conflicts(
    fake_provider: FakeProvider, store: midvary.SQLiteStore
) -> None:
    """A key reused for another image index: KeyConflictError (a ValueError), nothing sent."""
    async with session_for(fake_provider, store) as session:
        await session.vary("parent-1", 0, key="k")
        with pytest.raises(midvary.KeyConflictError, match="'k'") as caught:
            await session.vary("parent-1", 1, key="k")
        with pytest.raises(ValueError, match="'k'"):
            await session.vary("parent-1", 0, water_mark="mine", key="k")
    assert isinstance(caught.value, ValueError)
    assert fake_provider.stats.requests["submit"] == 1


async def test_the_callback_url_is_not_part_of_the_request(
    fake_provider: FakeProvider, store: midvary.SQLiteStore
) -> None:
    """The same request with another callback URL is the same request for its key."""
    async with session_for(fake_provider, store) as session:
        first = await session.vary("parent-1", 0, key="k", callback_url="http://127.0.0.1:9/a")
        second = await session.vary("parent-1", 0, key="k")
    assert first.task_id == second.task_id
    assert fake_provider.stats.requests["submit"] == 1


async def test_an_uncertain_key_is_never_resent_until_forgotten(
    fake_provider: FakeProvider, store: midvary.SQLiteStore | None
) -> None:
    """A lost answer: the key is uncertain (error names it) until forget(); then one POST."""
    fake_provider.update(drop_submit_answer_rate=1.0)
    async with session_for(fake_provider, store) as session:
        with pytest.raises(midvary.SubmitUncertainError):
            await session.vary("parent-1", 0, key="lost/0")
        fake_provider.update(drop_submit_answer_rate=0.0)
        with pytest.raises(midvary.SubmitUncertainError, match="'lost/0'"):
            await session.vary("parent-1", 0, key="lost/0")
        assert fake_provider.stats.requests["submit"] == 1
        if store is not None:
            (job,) = await store.unfinished()
            assert (job.key, job.state, job.task_id) == ("lost/0", "uncertain", None)
            assert await store.forget("lost/0")
            handle = await session.vary("parent-1", 0, key="lost/0")
            assert (await handle).is_final
            assert fake_provider.stats.requests["submit"] == 2


async def test_a_refused_key_is_released(
    fake_provider: FakeProvider, store: midvary.SQLiteStore
) -> None:
    """A certain refusal (402) releases the key: a later submission of it POSTs."""
    fake_provider.update(credits=0)
    async with session_for(fake_provider, store) as session:
        with pytest.raises(midvary.InsufficientCreditsError):
            await session.vary("parent-1", 0, key="k")
        fake_provider.update(credits=10)
        handle = await session.vary("parent-1", 0, key="k")
        assert (await handle).is_final
    assert fake_provider.stats.requests["submit"] == 2
    assert fake_provider.stats.tasks_created == 1


async def test_maintenance_retries_then_releases(
    fake_provider: FakeProvider, store: midvary.SQLiteStore
) -> None:
    """455 until the outage budget is spent: RETRYING events, then the claim is released."""
    fake_provider.set_maintenance(True)
    events: list[midvary.JobEvent] = []
    request = midvary.VaryRequest(task_id="parent-1", image_index=0, key="m")
    retry = attrs.evolve(FAST_RETRY, outage_budget=0.2)
    async with session_for(fake_provider, store, retry=retry) as session:
        (outcome,) = await session.submit_all([request], on_event=events.append)
        assert isinstance(outcome.error, midvary.ServiceUnavailableError)
        retries = [e for e in events if e.kind is midvary.JobEventKind.RETRYING]
        assert len(retries) == fake_provider.stats.requests["submit"] - 1
        assert all(isinstance(e.error, midvary.ServiceUnavailableError) for e in retries)
        assert all(e.wait is not None and e.wait >= 0 for e in retries)
        fake_provider.set_maintenance(False)
        (again,) = await session.submit_all([request])
    assert again.ok
    assert fake_provider.stats.tasks_created == 1


async def test_poll_retries_are_reported(fake_provider: FakeProvider) -> None:
    """A poll that fails transiently is retried with a RETRYING event carrying the task id."""
    fake_provider.update(fault_rate=0.5, fault_endpoints=["record-info"])
    events: list[midvary.JobEvent] = []
    async with session_for(fake_provider, None) as session:
        requests = [midvary.VaryRequest(task_id="parent-1", image_index=i) for i in range(4)]
        outcomes = await session.submit_all(requests, on_event=events.append)
    assert all(o.ok for o in outcomes)
    retries = [e for e in events if e.kind is midvary.JobEventKind.RETRYING]
    assert retries
    assert all(e.task_id is not None and e.error is not None for e in retries)


async def test_a_session_never_closes_its_store(
    fake_provider: FakeProvider, store: midvary.SQLiteStore | None
) -> None:
    """After the session closes, the store it was given still works."""
    async with session_for(fake_provider, store) as session:
        await session.vary("parent-1", 0, key="k")
    if store is not None:
        assert [job.key for job in await store.unfinished()] == ["k"]


async def test_key_validation(fake_provider: FakeProvider) -> None:
    """Keys are non-empty strings without control characters; submit(key=) must agree."""
    for bad in ("", "a\nb", "x" * 1025):
        with pytest.raises(ValueError, match="key must be"):
            midvary.VaryRequest(task_id="p", image_index=0, key=bad)
    with pytest.raises(TypeError, match="key must be a str"):
        midvary.VaryRequest(task_id="p", image_index=0, key=7)  # type: ignore[arg-type]
    async with session_for(fake_provider, None) as session:
        request = midvary.VaryRequest(task_id="parent-1", image_index=0, key="a")
        with pytest.raises(ValueError, match="differs"):
            await session.submit(request, key="b")
        handle = await session.submit(
            midvary.VaryRequest(task_id="parent-1", image_index=0), key="a"
        )
        assert handle.request is not None
        assert handle.request.key == "a"
    assert fake_provider.stats.requests["submit"] == 1


def test_a_memory_store_or_other_object_is_refused(fake_provider: FakeProvider) -> None:
    """store= takes a SQLiteStore or RedisStore; anything else is a TypeError."""
    with pytest.raises(TypeError, match="store must be"):
        session_for(fake_provider, object())  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", SHARED)
async def test_unrecorded_task_id_is_logged_and_uncertain_later(
    fake_provider: FakeProvider,
    make_store: MakeStore,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """record_task fails after an accepted POST: handle returned, WARNING, later uncertain."""

    def failing(store: midvary.SQLiteStore | midvary.RedisStore) -> None:
        async def record_task(*_args: object, **_kwargs: object) -> bool:
            raise midvary.StoreError("the store went away (test)")

        store.record_task = record_task  # type: ignore[method-assign]

    async with make_store() as store:
        failing(store)
        async with session_for(fake_provider, store) as session:
            with caplog.at_level(logging.WARNING, logger="midvary"):
                handle = await session.vary("parent-1", 0, key="order-7")
            assert (await handle).is_final
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(handle.task_id in m and "order-7" in m for m in warned), warned
    async with make_store() as store, session_for(fake_provider, store) as session:
        with pytest.raises(midvary.SubmitUncertainError, match="order-7"):
            await session.vary("parent-1", 0, key="order-7")
    assert fake_provider.stats.requests["submit"] == 1


async def test_keyed_and_keyless_submissions_share_the_store_window(
    fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Two sessions on one SQLite file and rate (2 per 0.4 s), one keyed: no 429 at the fake."""
    fake_provider.update(submit_limit=(2, 0.4))

    async def run(store: midvary.SQLiteStore, *, keyed: bool) -> list[midvary.JobOutcome]:
        requests = [
            midvary.VaryRequest(
                task_id="parent-1", image_index=i % 4, key=f"w/{i}" if keyed else None
            )
            for i in range(5)
        ]
        async with session_for(fake_provider, store, submit_rate=(2, 0.4)) as session:
            return await session.submit_all(requests)

    async with (
        midvary.SQLiteStore(tmp_path / "a.sqlite") as one,
        midvary.SQLiteStore(tmp_path / "a.sqlite") as two,
    ):
        results = await asyncio.gather(run(one, keyed=True), run(two, keyed=False))
    assert all(o.ok for outcomes in results for o in outcomes)
    assert fake_provider.stats.tasks_created == 10
    assert fake_provider.stats.rate_limited == 0


async def test_every_request_kind_takes_a_key(
    fake_provider: FakeProvider, store: midvary.SQLiteStore | None
) -> None:
    """Generate and upscale keys work with no extra code; a kind is part of the request."""
    async with session_for(fake_provider, store) as session:
        first = await session.generate("a red fox", key="gen-1")
        again = await session.submit(midvary.GenerateRequest(prompt="a red fox"), key="gen-1")
        assert again.task_id == first.task_id
        parent = (await first).task_id
        up = await session.upscale(parent, 1, key="up-1")
        assert (await session.upscale(parent, 1, key="up-1")).task_id == up.task_id
        with pytest.raises(midvary.KeyConflictError):
            await session.vary(parent, 1, key="up-1")  # same fields, another endpoint
    stats = fake_provider.stats
    assert stats.tasks_by_endpoint["generate"] == 1
    assert stats.tasks_by_endpoint["upscale"] == 1
    assert stats.requests["submit"] == 0


@pytest.mark.parametrize("kind", SHARED, indirect=True)
async def test_one_process_402_pauses_every_session_on_the_account(
    fake_provider: FakeProvider, make_store: MakeStore
) -> None:
    """A 402 seen by one session pauses the shared window: another one waits before its POST."""
    fake_provider.update(credits=0)
    pause = 1.0
    refusing = attrs.evolve(FAST_RETRY, outage_probe_max=pause)
    async with make_store() as first_store, make_store() as second_store:
        async with session_for(
            fake_provider, first_store, submit_rate=(100, 1.0), retry=refusing
        ) as first:
            with pytest.raises(midvary.InsufficientCreditsError):
                await first.vary("parent-1", 0)
        fake_provider.update(credits=5)  # topped up: the other session is still held back
        events: list[midvary.JobEvent] = []
        async with session_for(fake_provider, second_store, submit_rate=(100, 1.0)) as second:
            (outcome,) = await second.submit_all(
                [midvary.VaryRequest(task_id="parent-1", image_index=1)], on_event=events.append
            )
    assert outcome.ok
    waits = [e.wait for e in events if e.kind is midvary.JobEventKind.RATE_LIMITED]
    assert waits
    assert waits[0] is not None
    assert 0.0 < waits[0] <= pause
    assert fake_provider.stats.codes[402] == 1
