"""Injected faults, lost submit answers and latency."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from midvary.testing import FAULT_KINDS, ManualClock

from .conftest import Answer, Client, StartFake, finish


async def assert_fault(client: Client, kind: str, call: str) -> None:
    """The answer of one call is the bad answer the fault kind describes."""
    if kind == "reset":
        with pytest.raises(aiohttp.ClientConnectionError):
            await _call(client, call)
        return
    answer = await _call(client, call)
    if kind == "html_502":
        assert answer.status == 502
        assert answer.content_type == "text/html"
        assert answer.raw.lstrip().startswith(b"<html>")
    elif kind == "truncated_json":
        assert answer.status == 200
        assert answer.content_type == "application/json"
        assert answer.raw
        with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
            json.loads(answer.raw)
    elif kind == "empty_body":
        assert answer.status == 200
        assert answer.raw == b""
    else:
        assert kind == "server_error"
        assert (answer.status, answer.code, answer.data) == (200, 500, None)


async def _call(client: Client, call: str) -> Answer:
    if call == "submit":
        return await client.submit(envelope=False)
    return await client.record("parent-1", envelope=False)


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
async def test_each_fault_on_submit_gives_its_bad_answer_and_creates_no_task(
    start_fake: StartFake, kind: str
) -> None:
    """Forced faults on submit answer as described and never create (or bill) a task."""
    fake, client = await start_fake(
        fault_rate=1.0, fault_kinds=[kind], fault_endpoints=["submit"], credits=5
    )
    await assert_fault(client, kind, "submit")
    assert fake.stats.faults == {kind: 1}
    assert fake.stats.faults_by_endpoint == {"submit": 1}
    assert fake.stats.tasks_created == 0
    assert len(fake.tasks) == 0
    assert fake.credits_left == 5
    # record-info is not in fault_endpoints: it answers normally.
    assert (await client.record("parent-1")).code == 200


@pytest.mark.parametrize("kind", sorted(FAULT_KINDS))
async def test_each_fault_on_record_info_gives_its_bad_answer(
    start_fake: StartFake, kind: str
) -> None:
    """Forced faults on record-info answer as described; submit is left alone."""
    fake, client = await start_fake(
        fault_rate=1.0, fault_kinds=[kind], fault_endpoints=["record-info"]
    )
    await client.submit_ok()
    await assert_fault(client, kind, "record-info")
    # aiohttp itself re-sends an idempotent GET once after a reset, so allow two.
    assert 1 <= fake.stats.faults[kind] <= (2 if kind == "reset" else 1)
    assert fake.stats.requests["record-info"] == fake.stats.faults[kind]
    assert fake.stats.faults_by_endpoint == {"record-info": fake.stats.faults[kind]}


async def test_server_error_fault_is_mirrored_as_http_500(start_fake: StartFake) -> None:
    """A server_error fault has HTTP 500 when mirror_http_status is on."""
    _, client = await start_fake(
        fault_rate=1.0, fault_kinds="server_error", mirror_http_status=True
    )
    answer = await client.submit()
    assert (answer.status, answer.code) == (500, 500)


async def test_fault_rate_spoils_a_share_reproducibly(start_fake: StartFake) -> None:
    """With fault_rate 0.5 some answers are spoiled, the same ones for the same seed."""
    runs = []
    for _ in range(2):
        fake, client = await start_fake(
            fault_rate=0.5, fault_kinds=["server_error", "empty_body"], seed=7
        )
        codes = []
        for _ in range(30):
            answer = await client.submit(envelope=False)
            codes.append(answer.body["code"] if answer.body else None)
        runs.append(codes)
        assert fake.stats.tasks_created == codes.count(200)
        assert sum(fake.stats.faults.values()) == 30 - codes.count(200)
    assert runs[0] == runs[1]
    assert {200, 500, None} <= set(runs[0])


async def test_dropped_submit_answer_still_creates_the_task(
    start_fake: StartFake, clock: ManualClock
) -> None:
    """drop_submit_answer_rate: the connection closes unanswered, yet the task exists and runs."""
    fake, client = await start_fake(drop_submit_answer_rate=1.0, credits=3)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.submit(taskId="parent-lost", imageIndex=1)
    assert fake.stats.tasks_created == 1
    assert fake.stats.dropped_submit_answers == 1
    assert fake.credits_left == 2
    assert fake.stats.faults == {}
    (task_id,) = fake.tasks
    assert fake.task(task_id).parent_task_id == "parent-lost"
    finish(clock, fake, task_id)
    assert (await client.record(task_id)).data["successFlag"] == 1


async def test_latency_delays_answers(start_fake: StartFake) -> None:
    """Latency holds each API answer back by at least the given seconds (real time)."""
    fake, client = await start_fake(latency=(0.05, 0.06))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.submit_ok()
    assert loop.time() - started >= 0.05
    fake.update(latency=0.0)
    assert fake.settings.latency == 0.0
