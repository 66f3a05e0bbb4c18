"""Type-checked by `mypy --strict` (not run by pytest): uses only the public API."""

from __future__ import annotations

import attrs
from aiohttp import web

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


async def with_callbacks(app: web.Application) -> int:
    """Callbacks, served three ways, as a user would write them."""
    receiver = midvary.CallbackReceiver(
        public_url="https://my.host/midvary/callback",
        hmac_key=None,
        safety_poll=attrs.evolve(midvary.DEFAULT_SAFETY_POLL, timeout=600.0),
    )
    receiver.add_routes(app)
    async with receiver:
        await receiver.start("127.0.0.1", 0)
        port: int | None = receiver.port
        del port
        status: int = await receiver.handle(b"{}", {"X-Webhook-Timestamp": "1"}, "/x/y")
        async with midvary.Session(api_key="k", callbacks=receiver) as session:
            record: midvary.TaskRecord = await (await session.vary("parent", 2))
            del record
    try:
        midvary.Session(api_key="k", callbacks=receiver)
    except midvary.ReceiverClosedError as exc:
        return len(str(exc))
    return status
