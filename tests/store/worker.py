"""A worker process of the multi-process store tests: ``python -m tests.store.worker ...``.

Prints one JSON line with what it saw. It uses only the store interface.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from midvary._store import RedisStore, SQLiteStore, Store


def open_store(where: str) -> Store:
    """A SQLiteStore for a path, a RedisStore for a redis:// URL."""
    return RedisStore(where) if where.startswith("redis://") else SQLiteStore(where)


async def claims(where: str, ns: str, keys: int) -> dict[str, str]:
    """Claim keys 0..keys-1 once each; return key -> state."""
    seen = {}
    async with open_store(where) as store:
        for i in range(keys):
            claim = await store.claim(
                ns, f"k{i}", fingerprint="fp", request={"i": i},
                holder=uuid.uuid4().hex, lease_s=60.0,
            )  # fmt: skip
            seen[f"k{i}"] = claim.state.name
    return seen


async def slots(where: str, ns: str, count: int, window: float, n: int) -> list[float]:
    """Take and end n slots of the shared window; return the store's stamps."""
    stamps = []
    async with open_store(where) as store:
        for _ in range(n):
            slot_id = uuid.uuid4().hex
            while wait := await store.acquire_slot(  # noqa: ASYNC110 - another process's slot
                ns, rate=(count, window), slot_id=slot_id, lease_s=30.0
            ):
                await asyncio.sleep(wait)
            stamp = await store.end_slot(ns, slot_id, refunded=False)
            assert stamp is not None
            stamps.append(stamp)
    return stamps


def main(argv: list[str]) -> None:
    """Run the job named by argv[0] and print its result as JSON."""
    job, where, ns, *rest = argv
    numbers = [float(x) for x in rest]
    if job == "claims":
        result: object = asyncio.run(claims(where, ns, int(numbers[0])))
    else:
        count, window, n = numbers
        result = asyncio.run(slots(where, ns, int(count), window, int(n)))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
