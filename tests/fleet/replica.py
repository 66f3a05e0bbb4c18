"""One replica of a service behind a load balancer: ``python -m tests.fleet.replica ...``.

It serves a :class:`midvary.CallbackReceiver` whose public URL is the *other* replica's (so
every callback for its tasks lands on the peer), with a shared :class:`midvary.RedisStore`
and the ``wake_interval`` given last on the command line (seconds), and obeys commands on
stdin, one per line, answering JSON lines on stdout:

- first it prints ``{"port": N}``, reads the peer's port, and prints ``{"ready": true}``
  once its receiver serves;
- ``submit N``: submit N vary tasks, print ``{"submitted": [task ids]}`` and wait for them
  in the background;
- ``results``: print ``{"results": [{"task_id", "status", "image_urls"}]}`` once every
  task waited on is final;
- ``stop``: close everything and exit 0.

Safety polls are so slow (first after 600 s) that a handle resolves only by a wake-up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

from aiohttp import web

import midvary

SLOW = midvary.PollPolicy(
    initial_delay=600.0, max_delay=600.0, jitter=0.0, timeout=None, target_delay=None
)


def say(message: dict[str, Any]) -> None:
    """Print one JSON line."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def command() -> list[str]:
    """The next command line, split."""
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.split() or ["stop"]


async def main(
    base_url: str, api_key: str, parent: str, redis_url: str, ns: str, wake_interval: str
) -> None:
    """Serve, then obey the commands."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    say({"port": sock.getsockname()[1]})
    peer = int((await command())[0])
    async with midvary.RedisStore(redis_url, namespace=ns) as store:
        receiver = midvary.CallbackReceiver(
            public_url=f"http://127.0.0.1:{peer}/midvary/callback",
            store=store,
            safety_poll=SLOW,
            wake_interval=float(wake_interval),
        )
        app = web.Application()
        receiver.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        say({"ready": True})
        waits: list[asyncio.Task[midvary.TaskRecord]] = []
        try:
            async with (
                receiver,
                midvary.Session(
                    api_key=api_key, base_url=base_url, callbacks=receiver, submit_rate=None
                ) as session,
            ):
                while (words := await command())[0] != "stop":
                    if words[0] == "submit":
                        handles = [await session.vary(parent, i % 4) for i in range(int(words[1]))]
                        waits += [asyncio.create_task(handle.wait()) for handle in handles]
                        say({"submitted": [handle.task_id for handle in handles]})
                    elif words[0] == "results":
                        records = await asyncio.gather(*waits)
                        say({"results": [
                            {"task_id": r.task_id, "status": r.status.name,
                             "image_urls": list(r.image_urls)}
                            for r in records
                        ]})  # fmt: skip
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
