"""Type-checked by `mypy --strict` (not run by pytest): uses only the public API."""

from __future__ import annotations

from collections.abc import Sequence

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


async def fan_out(parents: list[str]) -> list[str]:
    """Fan-out, events and downloads, as a user would write them."""
    seen: list[midvary.JobEventKind] = []

    def on_event(event: midvary.JobEvent) -> None:
        seen.append(event.kind)

    requests = (midvary.VaryRequest(task_id=p, image_index=i) for p in parents for i in range(4))
    async with midvary.Session(api_key="k", submit_rate=(20, 10.0)) as session:
        fanout: midvary.FanOut = session.submit_many(requests, concurrency=8, on_event=on_event)
        async with fanout:
            async for outcome in fanout:
                if outcome.record is not None:
                    paths = await session.download(outcome.record, "images")
                    del paths
                elif outcome.uncertain or isinstance(outcome.error, midvary.DownloadError):
                    pass
        left: tuple[midvary.UnfinishedJob, ...] = fanout.unfinished
        del left
        outcomes: Sequence[midvary.JobOutcome] = await session.submit_all([session.task("t")])
        succeeded = [o.record for o in await session.submit_all(list(requests)) if o.ok]
        records: list[midvary.TaskRecord] = succeeded  # ok narrows: record is a TaskRecord
        del records
        return [o.task_id or "" for o in outcomes]


async def workflow(prompts: list[str]) -> int:
    """The workflow (generate, vary, upscale, a mixed fan-out) as a user writes it."""
    async with midvary.Session(api_key="k") as session:
        grid: midvary.TaskRecord = await (await session.generate("a fox", aspect_ratio="3:2"))
        varied = [await (await session.vary(grid.task_id, i)) for i in range(4)]
        big: midvary.TaskRecord = await (await session.upscale(grid.task_id, 2, key="k1"))
        jobs: list[midvary.GenerateRequest | midvary.VaryRequest | midvary.UpscaleRequest] = [
            midvary.GenerateRequest(prompt=p, speed="fast") for p in prompts
        ]
        jobs.append(midvary.UpscaleRequest(task_id=grid.task_id, image_index=0))
        outcomes = await session.submit_all(jobs)
        handle = await session.submit(midvary.GenerateRequest(prompt="p", key="k2"))
        del handle, big
        return len(varied) + len(outcomes)


def blocking(parents: list[str]) -> list[str]:
    """The blocking session, as a script or a web view writes it."""
    with midvary.SyncSession(api_key="k", submit_rate=None) as session:
        handle: midvary.SyncTaskHandle = session.vary(parents[0], 0, key="order-1/0")
        record: midvary.TaskRecord = handle.wait(timeout=600.0)
        again: midvary.TaskRecord = session.task(handle.task_id).wait(timeout=None)
        snapshot: midvary.TaskRecord = session.get_task(record.task_id)
        grid = session.generate("a fox", aspect_ratio="3:2").wait()
        big = session.upscale(grid.task_id, 2).refresh()
        paths = session.download(record, "images")
        outcomes: Sequence[midvary.JobOutcome] = session.submit_all(
            [midvary.VaryRequest(task_id=p, image_index=0) for p in parents], concurrency=4
        )
        session.poll = attrs.evolve(session.poll, timeout=60.0)
        done: midvary.TaskRecord = session.run(midvary.GenerateRequest(prompt="p"), timeout=60.0)
        credits: int = session.credits()
        mine: int = session.call(lambda s, n: s.credits(), 1)
        del again, done, credits, mine, snapshot, big, paths
        return [o.task_id or "" for o in outcomes]
