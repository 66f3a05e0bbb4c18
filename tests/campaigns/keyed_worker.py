"""A queue worker as a user writes one, with the public API only (run with `python -m`).

Usage: ``keyed_worker STORE JOB...`` where STORE is a SQLite path or a ``redis://`` URL and
each JOB is ``key=parent:index``. The provider's address and key come from
``MIDVARY_BASE_URL`` / ``MIDVARY_API_KEY``; ``MIDVARY_TEST_NAMESPACE`` names a Redis
namespace, ``MIDVARY_TEST_LEASE`` the claim lease. It prints one JSON line per event, flushed,
so that a runner that kills it knows which POSTs were in flight:
``{"sending": key}``, ``{"submitted": key, "task_id": ..., "reattached": bool}``,
``{"done": key, "task_id": ..., "uncertain": bool, "recovered": bool, "error": ...}``.

With ``MIDVARY_TEST_CALLBACK_URL`` (a load balancer's URL in front of every worker) it also
serves a :class:`midvary.CallbackReceiver` on the shared Redis store, on a free port it
prints first (``{"port": N}``), with tokens living ``MIDVARY_TEST_TOKEN_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator

import midvary
from midvary.testing import FAST_POLL, FAST_RETRY


def say(**line: object) -> None:
    """One JSON line on stdout, flushed at once."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def open_store(where: str) -> midvary.SQLiteStore | midvary.RedisStore:
    """A RedisStore for a redis:// URL, else a SQLiteStore for a path."""
    lease = float(os.environ.get("MIDVARY_TEST_LEASE", "30"))
    if where.startswith("redis://"):
        namespace = os.environ.get("MIDVARY_TEST_NAMESPACE")
        return midvary.RedisStore(where, namespace=namespace, claim_lease=lease)
    return midvary.SQLiteStore(where, claim_lease=lease)


def on_event(event: midvary.JobEvent) -> None:
    """Journal what a runner needs: a POST about to leave, a task id, an outcome."""
    key = event.request.key if event.request is not None else None
    if event.kind is midvary.JobEventKind.SUBMITTING:
        say(sending=key)
    elif event.kind is midvary.JobEventKind.SUBMITTED:
        say(submitted=key, task_id=event.task_id, reattached=event.reattached)


@contextlib.asynccontextmanager
async def receiving(
    store: midvary.SQLiteStore | midvary.RedisStore,
) -> AsyncIterator[midvary.CallbackReceiver | None]:
    """This worker's receiver behind the runner's load balancer, or ``None`` without one."""
    public_url = os.environ.get("MIDVARY_TEST_CALLBACK_URL")
    if not public_url or not isinstance(store, midvary.RedisStore):
        yield None
        return
    receiver = midvary.CallbackReceiver(
        public_url=public_url,
        store=store,
        safety_poll=FAST_POLL,
        token_ttl=float(os.environ.get("MIDVARY_TEST_TOKEN_TTL", "3600")),
    )
    async with receiver:
        await receiver.start("127.0.0.1", 0)
        say(port=receiver.port)
        yield receiver


async def main(where: str, jobs: list[str]) -> None:
    """Run every job once with its key; print each outcome."""
    requests = []
    for job in jobs:
        key, _, target = job.partition("=")
        parent, _, index = target.rpartition(":")
        requests.append(midvary.VaryRequest(task_id=parent, image_index=int(index), key=key))
    rate = os.environ.get("MIDVARY_TEST_RATE")
    submit_rate = tuple(json.loads(rate)) if rate else None
    async with (
        open_store(where) as store,
        receiving(store) as receiver,
        midvary.Session(
            poll=FAST_POLL,
            retry=FAST_RETRY,
            submit_rate=submit_rate,
            store=store,
            callbacks=receiver,
        ) as session,
    ):
        async for outcome in session.submit_many(requests, concurrency=8, on_event=on_event):
            assert outcome.request is not None
            say(
                done=outcome.request.key,
                task_id=outcome.task_id,
                uncertain=outcome.uncertain,
                recovered=outcome.recovered,
                error=None if outcome.ok else repr(outcome.error),
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
