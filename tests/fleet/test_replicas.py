"""Callbacks across replicas: two real processes, each one's callbacks land on the other."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import yarl

from midvary.testing import FakeProvider, FakeSettings, ManualClock

from ..store.redis_server import RedisServer
from ..test_callbacks import callback_body, until

ROOT = Path(__file__).resolve().parents[2]
TASKS_EACH = 12


class Replica:
    """A ``tests.fleet.replica`` process: send it commands, read its JSON answers."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.port = 0  # where its receiver serves

    async def read(self) -> dict[str, Any]:
        """The next JSON line it printed."""
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        assert line, "the replica exited early"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def send(self, *words: object) -> None:
        """Send one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())
        await self.proc.stdin.drain()

    async def ask(self, *words: object) -> dict[str, Any]:
        """Send a command and read its answer."""
        await self.send(*words)
        return await self.read()

    async def stop(self) -> None:
        """Tell it to stop and check it exited cleanly."""
        await self.send("stop")
        _, err = await self.proc.communicate()
        assert self.proc.returncode == 0, err.decode()


class StartPair(Protocol):
    """The type of the ``start_pair`` fixture."""

    def __call__(
        self, fake: FakeProvider, *, wake_interval: float = ...
    ) -> Awaitable[tuple[Replica, Replica]]:
        """Start two replicas against ``fake``; their receivers' ``wake_interval`` (seconds)."""
        ...


@pytest.fixture
async def start_pair(redis_session_server: RedisServer, namespace: str) -> AsyncIterator[StartPair]:
    """Start two replicas on one Redis, each with the other's URL as its public URL."""
    started: list[Replica] = []

    async def start(fake: FakeProvider, *, wake_interval: float = 10.0) -> tuple[Replica, Replica]:
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.fleet.replica",
                fake.base_url, fake.api_key, fake.sample_parent_id,
                redis_session_server.url, namespace, str(wake_interval),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            started.append(Replica(proc))
        a, b = started
        a.port, b.port = (await a.read())["port"], (await b.read())["port"]
        await a.send(b.port)
        await b.send(a.port)
        assert await a.read() == await b.read() == {"ready": True}
        return a, b

    yield start
    for replica in started:
        if replica.proc.returncode is None:
            replica.proc.kill()
            await replica.proc.wait()


async def test_every_callback_wakes_the_other_replicas_handle(start_pair: StartPair) -> None:
    """Each replica's callbacks reach the other one: every handle resolves with one GET."""
    settings = FakeSettings(task_duration=(0.3, 0.9), invisible_for=0.0, submit_limit=None)
    async with FakeProvider(settings=settings) as fake:
        a, b = await start_pair(fake)
        mine = {a: (await a.ask("submit", TASKS_EACH))["submitted"]}
        mine[b] = (await b.ask("submit", TASKS_EACH))["submitted"]
        results = {replica: (await replica.ask("results"))["results"] for replica in (a, b)}
        await a.stop()
        await b.stop()
        stats = fake.stats
    task_ids = mine[a] + mine[b]
    for replica, peer in ((a, b), (b, a)):
        assert [r["task_id"] for r in results[replica]] == mine[replica]
        for result in results[replica]:
            assert result["status"] == "SUCCESS"
            assert tuple(result["image_urls"]) == fake.task(result["task_id"]).result_urls
            # Its callback went to the other replica's receiver.
            assert yarl.URL(fake.task(result["task_id"]).callback_url).port == peer.port
    assert stats.callbacks_delivered == len(task_ids)
    assert stats.callback_failures == []
    # The first safety poll is 600 s away: one GET per task means a wake-up did it.
    assert {stats.polls[task_id] for task_id in task_ids} == {1}
    delays = [stats.detection_delays[task_id] for task_id in task_ids]
    print(  # noqa: T201 - the issue's figures, reported (timing is the machine's), not asserted
        f"\ncallbacks across replicas: {len(task_ids)} tasks, "
        f"polls/task {sum(stats.polls[t] for t in task_ids) / len(task_ids):.2f}, "
        f"median completion-to-GET {statistics.median(delays) * 1000:.0f} ms, "
        f"max {max(delays) * 1000:.0f} ms"
    )


async def test_forged_or_replayed_delivery_costs_at_most_one_get_fleet_wide(
    start_pair: StartPair,
) -> None:
    """Through the other replica: a forged delivery is one GET, replays after the end none."""
    clock = ManualClock(1000.0)
    settings = FakeSettings(task_duration=(5.0, 5.0), invisible_for=0.0, submit_limit=None)
    async with (
        FakeProvider(settings=settings, clock=clock) as fake,
        aiohttp.ClientSession() as http,
    ):

        async def deliver(url: str, body: dict[str, Any]) -> int:
            async with http.post(url, json=body) as response:
                return response.status

        def polls(task_id: str) -> int:
            return fake.stats.polls.get(task_id, 0)

        # The real delivery comes wake_interval after the forged one's wake: 0.5 s, not 10.
        a, b = await start_pair(fake, wake_interval=0.5)
        (first,) = (await a.ask("submit", 1))["submitted"]
        url = fake.task(first).callback_url
        assert url is not None
        assert yarl.URL(url).port == b.port
        forged = callback_body(first, ["https://evil.test/forged.png"])
        assert await deliver(url, forged) == 200
        await until(lambda: polls(first) == 1)  # the owner's one GET: still running
        # A token nobody issued is refused by the store lookup: no wake-up, no GET.
        assert await deliver(url.rsplit("/", 1)[0] + "/not-a-token", forged) == 404
        clock.advance(5.0)
        await fake.settle_callbacks()
        (result,) = (await a.ask("results"))["results"]
        assert tuple(result["image_urls"]) == fake.task(first).result_urls
        assert polls(first) == 2
        for _ in range(3):  # replays of the real delivery, after the handle saw the end
            assert await deliver(url, callback_body(first, list(result["image_urls"]))) == 200
        # Barrier: a later wake-up on the same channel is handled after the replays.
        (second,) = (await a.ask("submit", 1))["submitted"]
        second_url = fake.task(second).callback_url
        assert second_url is not None
        assert await deliver(second_url, callback_body(second)) == 200
        await until(lambda: polls(second) == 1)
        assert polls(first) == 2
        await a.stop()
        await b.stop()
