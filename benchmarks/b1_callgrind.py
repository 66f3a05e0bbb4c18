"""B1 in instructions: callgrind counts per task of each client, stable on a loaded machine.

Wall-clock CPU ratios move with whatever else runs on the machine; instruction counts do not.
This runs each client under ``valgrind --tool=callgrind`` twice, for ``SMALL`` and ``LARGE``
tasks (the same B1 workload: tasks finished at creation, 64 in flight, one poll), and takes
the difference, so interpreter start-up, imports and warm-up cancel out::

    python -m benchmarks.b1_callgrind            # about 5 minutes
    PYTHONHASHSEED=0 python -m benchmarks.b1_callgrind --in-flight 1 --only midvary

At 64 in flight the counts move by about 1 % between runs (how many answers one event-loop
turn finds depends on the fake's speed); with one task in flight and ``PYTHONHASHSEED=0`` a
run repeats to about 0.1 %, which is what measuring one change needs.

The fake provider runs in its own process, outside valgrind. Each client runs in a child
``python -m benchmarks.b1_callgrind --client ...``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aiohttp

import midvary

from ._callgrind import arguments, per_task, require_valgrind
from ._harness import PARENT, BaselineClient, fake_server, fixed, run_concurrently, session_options
from .b1_overhead import CONCURRENCY, INTERVAL, _policy

CLIENTS = ("baseline", "midvary")


async def _midvary(base_url: str, api_key: str, tasks: int, in_flight: int) -> None:
    options = session_options(poll=_policy(), submit_rate=None)
    async with midvary.Session(api_key=api_key, base_url=base_url, **options) as session:

        async def job(number: int) -> None:
            await (await session.vary(PARENT, number % 4))

        await run_concurrently(tasks, in_flight, job)


async def _baseline(base_url: str, api_key: str, tasks: int, in_flight: int) -> None:
    timeout = aiohttp.ClientTimeout(total=30.0, connect=10.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        client = BaselineClient(http, base_url, api_key)

        async def job(number: int) -> None:
            task_id = await client.submit(PARENT, number % 4)
            assert task_id is not None
            await client.wait(task_id, fixed(INTERVAL))

        await run_concurrently(tasks, in_flight, job)


async def _main(in_flight: int, clients: tuple[str, ...]) -> None:
    require_valgrind()
    args = ("--duration", "0", "0", "--invisible-for", "0", "--no-submit-limit")
    per_client: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        async with fake_server(*args) as fake:
            child = ("--in-flight", str(in_flight), "--base-url", fake.base_url)
            for client in clients:
                per_client[client] = await per_task(
                    "benchmarks.b1_callgrind",
                    client,
                    (*child, "--api-key", fake.api_key),
                    Path(workdir),
                )
    if len(per_client) == len(CLIENTS):
        ratio = per_client["midvary"] / per_client["baseline"]
        print(f"midvary / baseline: {ratio:.3f}")


def main() -> None:
    """Measure both clients (no arguments), or run one client's tasks (``--client``)."""
    parser = arguments(CLIENTS, in_flight=CONCURRENCY)
    args = parser.parse_args()
    if args.client is None:
        asyncio.run(_main(args.in_flight, (args.only,) if args.only else CLIENTS))
        return
    run = _midvary if args.client == "midvary" else _baseline
    asyncio.run(run(args.base_url, args.api_key, args.tasks, args.in_flight))


if __name__ == "__main__":
    main()
