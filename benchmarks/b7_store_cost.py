"""B7 what a shared store costs its user: round trips, client CPU, and memory per key.

Round trips: the script calls (``EVALSHA``, ``EVAL``, ``SCRIPT``) the server counted
(``INFO commandstats``, read by another client) for N keyed submissions (told a rate, so
each also takes its slot of the shared window); each call is one round trip for its
submission, which awaits its answer before the next.
CPU: N jobs (tasks finished at creation) through ``submit_all``, keyed with a
``RedisStore`` vs unkeyed without a store, alternating rounds; user + system CPU of this
process (the fake provider and the Redis server run in their own processes).
Footprint: 3,000 keyed jobs through ``submit_all`` on each store, then each key marked done
(``store.mark_done``, what the bulk command does once a job is final): the store's memory
per key while submitted and once done. Redis: ``INFO memory`` ``used_memory`` before and
after (the server's whole allocation, its tables included), after a warm-up batch of keys
in another namespace, deleted before the count: a fresh server's first burst of
connections and scripts allocates about 300 KB once, which a ``FLUSHALL`` does not give
back and no key owns; SQLite: the pages in use (``page_count - freelist_count``, times
``page_size``) after a checkpoint of the WAL.
"""

from __future__ import annotations

import gc
import sqlite3
import statistics
import tempfile
import uuid
from pathlib import Path

import redis.asyncio

import midvary

from ._harness import PARENT, FakeServer, Report, cpu_seconds, fake_server

JOBS = 1000
ROUNDS = 9
TARGET_TRIPS = 2.0
FOOTPRINT_JOBS = 3000
#: Keyed jobs of the warm-up batch before the Redis footprint (deleted before the count).
WARM_UP_JOBS = 256
#: Bytes of store memory per done key, Redis and SQLite alike.
TARGET_DONE_BYTES = 200
#: Where the extra CPU goes.
NOTE = (
    "A keyed submission makes two script calls through redis-py (`register_script`, one "
    "pooled connection each): the claim, which also takes the slot of the shared window and "
    "marks the key sending, and the task id, recorded with the slot ended. A claim makes no "
    "renewal task unless it outlives a third of its lease. What the keyed job adds: the two "
    "calls (redis-py packs each command and parses its answer), the fingerprint (canonical "
    "JSON, SHA-256) and the hold."
)


#: The server's counters of the commands the store's script calls are made of.
_SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script")


async def _script_calls(client: redis.asyncio.Redis) -> int:
    """Script commands the server has run so far (``INFO commandstats``)."""
    stats = await client.info("commandstats")
    return sum(
        int(row["calls"])
        for name, row in stats.items()
        if name in _SCRIPT_COMMANDS or name.startswith("cmdstat_script|")
    )


async def _trips(fake: FakeServer, url: str) -> float:
    """Script calls per keyed submission, over one round of JOBS."""
    client = redis.asyncio.Redis.from_url(url)
    run = uuid.uuid4().hex[:8]
    store = midvary.RedisStore(url, namespace=f"b7-{run}")
    requests = [
        midvary.VaryRequest(task_id=PARENT, image_index=n % 4, key=f"b7/{run}/{n}")
        for n in range(JOBS)
    ]
    try:
        async with (
            store,
            midvary.Session(
                api_key=fake.api_key,
                base_url=fake.base_url,
                submit_rate=(100_000, 1.0),
                store=store,
            ) as session,
        ):
            before = await _script_calls(client)
            outcomes = await session.submit_all(requests, concurrency=64)
            sent = await _script_calls(client) - before
    finally:
        await client.aclose()
    if not all(o.ok for o in outcomes):
        raise RuntimeError("B7: a job failed")
    return sent / JOBS


async def _round(fake: FakeServer, url: str | None) -> float:
    """CPU ms per task of one round of JOBS jobs (keyed on a RedisStore when ``url``)."""
    run = uuid.uuid4().hex[:8]
    store = midvary.RedisStore(url, namespace=f"b7-{run}") if url else None
    requests = [
        midvary.VaryRequest(
            task_id=PARENT, image_index=n % 4, key=f"b7/{run}/{n}" if store else None
        )
        for n in range(JOBS)
    ]
    gc.collect()
    if store is not None:
        await store.open()
    try:
        async with midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=midvary.PollPolicy(initial_delay=0.01, jitter=0.0, target_delay=None),
            submit_rate=(100_000, 1.0),
            store=store,
        ) as session:
            started = cpu_seconds()
            outcomes = await session.submit_all(requests, concurrency=64)
            spent = cpu_seconds() - started
    finally:
        if store is not None:
            await store.close()
    if not all(o.ok for o in outcomes):
        raise RuntimeError("B7: a job failed")
    return spent / JOBS * 1000


async def _keyed_jobs(
    fake: FakeServer, store: midvary.Store, run: str, jobs: int = FOOTPRINT_JOBS
) -> list[tuple[str, str]]:
    """Submit ``jobs`` keyed jobs through ``store``; (key, task id) of each."""
    requests = [
        midvary.VaryRequest(task_id=PARENT, image_index=n % 4, key=f"order-{run}-{n}/0")
        for n in range(jobs)
    ]
    async with midvary.Session(
        api_key=fake.api_key, base_url=fake.base_url, submit_rate=None, store=store
    ) as session:
        outcomes = await session.submit_all(requests, concurrency=64)
    if not all(o.ok and o.task_id for o in outcomes):
        raise RuntimeError("B7: a job of the footprint failed")
    return [(r.key or "", o.task_id or "") for r, o in zip(requests, outcomes, strict=True)]


async def _mark_done(store: midvary.Store, namespace: str, jobs: list[tuple[str, str]]) -> None:
    for key, task_id in jobs:
        if not await store.mark_done(namespace, key, task_id=task_id):
            raise RuntimeError(f"B7: key {key} could not be marked done")


async def _redis_footprint(fake: FakeServer, url: str) -> tuple[float, float, float]:
    """Redis bytes per key (used_memory), submitted then done; and the done hash's per key.

    Each figure is read with the store closed, so that the server's buffers of the store's
    connections (up to ``max_connections`` while 64 jobs run) are not counted as keys.
    """
    client = redis.asyncio.Redis.from_url(url)

    async def used() -> int:
        return int((await client.info("memory"))["used_memory"])

    warm_up = f"b7-warm-{uuid.uuid4().hex[:6]}"
    store = midvary.RedisStore(url)  # the namespace of the API key, as by default
    namespace = store.namespace_for(fake.api_key)
    try:
        async with midvary.RedisStore(url, namespace=warm_up) as warm:
            await _keyed_jobs(fake, warm, "warm", WARM_UP_JOBS)
        await client.delete(*[n async for n in client.scan_iter(f"midvary:{{{warm_up}}}:*")])
        async with store:
            await store.allowance(namespace, rate=(20, 10.0))  # the window's keys exist
        before = await used()
        async with store:
            jobs = await _keyed_jobs(fake, store, uuid.uuid4().hex[:6])
        submitted = await used()
        async with store:
            await _mark_done(store, namespace, jobs)
        done = await used()
        hashed = await client.memory_usage(f"midvary:{{{namespace}}}:done", samples=0)
    finally:
        await client.aclose()
    per_key = [(figure - before) / FOOTPRINT_JOBS for figure in (submitted, done)]
    return per_key[0], per_key[1], (hashed or 0) / FOOTPRINT_JOBS


def _sqlite_bytes(path: Path) -> int:
    """Bytes of the SQLite file in use (its free pages left out), its WAL checkpointed."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return int((pages - free) * size)


async def _sqlite_footprint(fake: FakeServer, directory: Path) -> tuple[float, float]:
    """SQLite bytes per key (pages in use), submitted then done."""
    path = directory / "b7.sqlite"
    store = midvary.SQLiteStore(path)
    namespace = store.namespace_for(fake.api_key)
    async with store:
        await store.allowance(namespace, rate=(20, 10.0))
        before = _sqlite_bytes(path)
        jobs = await _keyed_jobs(fake, store, uuid.uuid4().hex[:6])
        submitted = _sqlite_bytes(path)
        await _mark_done(store, namespace, jobs)
        done = _sqlite_bytes(path)
    return (submitted - before) / FOOTPRINT_JOBS, (done - before) / FOOTPRINT_JOBS


async def run(redis_url: str | None) -> Report:
    """Run B7 against the Redis server at ``redis_url`` (``None``: not available)."""
    report = Report(name="B7", title="store cost per submission (RedisStore, happy path)")
    if redis_url is None:
        report.available = False
        report.say("no Redis server found")
        report.check("Redis round trips per submission", "<= 2", "no Redis server", None)
        return report
    args = ("--no-submit-limit", "--duration", "0", "0", "--invisible-for", "0")
    async with fake_server(*args) as fake:
        redis_bytes = await _redis_footprint(fake, redis_url)
        with tempfile.TemporaryDirectory() as directory:
            sqlite_bytes = await _sqlite_footprint(fake, Path(directory))
        await _round(fake, redis_url)  # the warm-up
        trips = await _trips(fake, redis_url)
        pairs = []
        for n in range(ROUNDS):
            order = [None, redis_url] if n % 2 == 0 else [redis_url, None]
            figures = {where: await _round(fake, where) for where in order}
            pairs.append((figures[None], figures[redis_url]))
    ratios = [store / plain for plain, store in pairs]
    ratio = statistics.median(ratios)
    plain_ms = statistics.median(p for p, _ in pairs)
    store_ms = statistics.median(s for _, s in pairs)
    report.say(
        f"{JOBS} jobs per round (tasks final at creation, 64 in flight), {ROUNDS} pairs of "
        "rounds alternating (the figure is the median ratio); keyed with a RedisStore and a "
        "shared rate vs unkeyed without a store; CPU of this process only."
    )
    report.say("")
    report.say("| pair | without store ms/task | RedisStore ms/task | ratio |")
    report.say("|---|---|---|---|")
    for n, (plain, store) in enumerate(pairs, 1):
        report.say(f"| {n} | {plain:.3f} | {store:.3f} | {store / plain:.2f} |")
    report.say("")
    report.say(
        f"Script calls per keyed submission: {trips:.2f} (each one round trip: the claim "
        "that also takes the slot and marks sending, then the task id recorded with the "
        "slot ended; the script is loaded when the store opens)."
    )
    report.say("")
    report.say(NOTE)
    report.say("")
    report.say(
        f"Footprint: {FOOTPRINT_JOBS:,} keyed jobs (keys `order-<run>-<n>/0`, the namespace of "
        f"the API key; Redis after a warm-up batch of {WARM_UP_JOBS} keys, deleted), bytes per "
        "key:"
    )
    report.say("")
    report.say("| store | submitted | done |")
    report.say("|---|---|---|")
    redis_submitted, redis_done, redis_hashed = redis_bytes
    for name, (submitted, done) in (
        ("Redis (`used_memory`)", (redis_submitted, redis_done)),
        ("SQLite (pages in use)", sqlite_bytes),
    ):
        report.say(f"| {name} | {submitted:,.0f} | {done:,.0f} |")
    report.say("")
    report.say(
        f"Redis `MEMORY USAGE` of the done hash: {redis_hashed:,.0f} B per key; `used_memory` "
        "grows by more than the keys' own structures (allocations of the server that "
        "`MEMORY USAGE` gives to no key)."
    )
    report.say("")
    report.say(
        "A submitted key keeps its request (what `store.unfinished()` lists); once done it keeps "
        "its fingerprint, task id and expiry only (Redis: a field of the namespace's done hash; "
        "SQLite: a row of `midvary_done`)."
    )
    for name, done in (
        ("Redis used_memory", redis_done),
        ("Redis MEMORY USAGE", redis_hashed),
        ("SQLite pages in use", sqlite_bytes[1]),
    ):
        report.check(
            f"{name} per done key ({FOOTPRINT_JOBS:,} keys)",
            f"<= {TARGET_DONE_BYTES} B",
            f"{done:,.0f} B",
            done <= TARGET_DONE_BYTES,
        )
    report.check(
        "Redis round trips per submission",
        f"<= {TARGET_TRIPS:g}",
        f"{trips:.2f}",
        trips <= TARGET_TRIPS,
    )
    report.check(
        "client CPU per task, RedisStore / none",
        "(a figure)",
        f"{ratio:.2f}x ({store_ms:.3f} vs {plain_ms:.3f} ms/task)",
        None,
    )
    return report
