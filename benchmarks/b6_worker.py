"""One B6 worker process: ``python -m benchmarks.b6_worker STORE FIRST COUNT START_AT``.

Runs jobs FIRST..FIRST+COUNT-1 (keyed ``b6/<run>/<n>``) with the public API, told the
account's limit, at the wall-clock moment START_AT (so that every process starts together),
and prints the wall-clock times of its acceptances as one JSON list. STORE is a SQLite path,
a ``redis://`` URL, or ``-`` for no store. The fake's address and key come from
``MIDVARY_BASE_URL`` / ``MIDVARY_API_KEY``; ``B6_RUN`` names the run, ``B6_NAMESPACE`` the
store namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time

import midvary

LIMIT = (20, 2.0)


async def main(where: str, first: int, count: int, start_at: float) -> None:
    """Run the jobs, print the acceptance times."""
    run = os.environ.get("B6_RUN", "0")
    namespace = os.environ.get("B6_NAMESPACE")
    store: midvary.SQLiteStore | midvary.RedisStore | None = None
    if where.startswith("redis://"):
        store = midvary.RedisStore(where, namespace=namespace)
    elif where != "-":
        store = midvary.SQLiteStore(where, namespace=namespace)
    accepted: list[float] = []

    def on_event(event: midvary.JobEvent) -> None:
        if event.kind is midvary.JobEventKind.SUBMITTED:
            accepted.append(time.time())

    requests = [
        midvary.VaryRequest(
            task_id="parent-bench",
            image_index=n % 4,
            key=f"b6/{run}/{n}" if store is not None else None,
        )
        for n in range(first, first + count)
    ]
    async with contextlib.AsyncExitStack() as stack:
        if store is not None:
            await stack.enter_async_context(store)
        session = await stack.enter_async_context(midvary.Session(submit_rate=LIMIT, store=store))
        await asyncio.sleep(max(start_at - time.time(), 0.0))
        outcomes = await session.submit_all(requests, concurrency=count, on_event=on_event)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed, e.g. {failed[0].error!r}")
    sys.stdout.write(json.dumps(accepted) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
