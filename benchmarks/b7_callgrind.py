"""B7 in instructions: callgrind counts per task with and without a RedisStore.

B7's CPU ratio moves with whatever else runs on the machine; instruction counts do not.
This runs the B7 workload (tasks final at creation, ``submit_all`` with 64 in flight, told a
rate) under ``valgrind --tool=callgrind`` for ``SMALL`` and ``LARGE`` jobs, keyed with a
``RedisStore`` and unkeyed without a store, and takes the difference, so interpreter
start-up, imports and warm-up cancel out::

    python -m benchmarks.b7_callgrind            # about 4 minutes
    PYTHONHASHSEED=0 python -m benchmarks.b7_callgrind --in-flight 1

The fake provider and the Redis server run in their own processes, outside valgrind. Each
client runs in a child ``python -m benchmarks.b7_callgrind --client ...``.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import midvary

from ._callgrind import arguments, per_task, require_valgrind
from ._harness import PARENT, fake_server, redis_server

CLIENTS = ("plain", "redis")
CONCURRENCY = 64


async def _client(
    base_url: str, api_key: str, redis_url: str | None, jobs: int, in_flight: int
) -> None:
    run = uuid.uuid4().hex[:8]
    store = midvary.RedisStore(redis_url, namespace=f"b7cg-{run}") if redis_url else None
    requests = [
        midvary.VaryRequest(
            task_id=PARENT, image_index=n % 4, key=f"b7/{run}/{n}" if store else None
        )
        for n in range(jobs)
    ]
    if store is not None:
        await store.open()
    try:
        async with midvary.Session(
            api_key=api_key,
            base_url=base_url,
            poll=midvary.PollPolicy(initial_delay=0.01, jitter=0.0, target_delay=None),
            submit_rate=(100_000, 1.0),
            store=store,
        ) as session:
            outcomes = await session.submit_all(requests, concurrency=in_flight)
    finally:
        if store is not None:
            await store.close()
    if not all(o.ok for o in outcomes):
        raise SystemExit("B7: a job failed")


async def _main(in_flight: int, clients: tuple[str, ...]) -> None:
    require_valgrind()
    args = ("--duration", "0", "0", "--invisible-for", "0", "--no-submit-limit")
    per_client: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir, redis_server(Path(workdir)) as redis_url:
        if redis_url is None:
            raise SystemExit("no Redis server found (redis-server, valkey-server)")
        async with fake_server(*args) as fake:
            child = ("--in-flight", str(in_flight), "--base-url", fake.base_url)
            for client in clients:
                per_client[client] = await per_task(
                    "benchmarks.b7_callgrind",
                    client,
                    (*child, "--api-key", fake.api_key, "--redis-url", redis_url),
                    Path(workdir),
                )
    if len(per_client) == len(CLIENTS):
        ratio = per_client["redis"] / per_client["plain"]
        print(f"RedisStore / none: {ratio:.3f}")


def main() -> None:
    """Measure both (no arguments), or run one client's jobs (``--client``)."""
    parser = arguments(CLIENTS, in_flight=CONCURRENCY)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if args.client is None:
        asyncio.run(_main(args.in_flight, (args.only,) if args.only else CLIENTS))
        return
    redis_url = args.redis_url if args.client == "redis" else None
    asyncio.run(_client(args.base_url, args.api_key, redis_url, args.tasks, args.in_flight))


if __name__ == "__main__":
    main()
