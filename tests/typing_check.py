"""Type-checked by `mypy --strict` (not run by pytest): uses only the public API."""

from __future__ import annotations

import attrs

import midvary


async def example() -> list[str]:
    """A typical use, written as a user would."""
    policy = attrs.evolve(midvary.PollPolicy(), timeout=60.0)
    async with midvary.Session(api_key="k", poll=policy) as session:
        handle: midvary.TaskHandle = await session.vary("parent", 0, water_mark=None)
        record: midvary.TaskRecord = await handle
        again: midvary.TaskRecord = await handle.wait(timeout=None)
        snapshot = await session.task(handle.task_id).refresh()
        status: midvary.TaskStatus = snapshot.status
        try:
            await session.get_task("x")
        except midvary.TaskTimeoutError as exc:
            _: str = exc.task_id
        except midvary.APIError as exc:
            code: int = exc.code
            del code
        del again, status
        return list(record.image_urls)
