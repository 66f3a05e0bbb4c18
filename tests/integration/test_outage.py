"""Outages: maintenance (455) and a provider that cannot be reached, waited out per session."""

from __future__ import annotations

import asyncio
import logging
import socket

import attrs
import pytest

import midvary
from midvary.testing import FakeProvider, FakeSettings

from ..conditions import until
from .conftest import BASE_SETTINGS, FAST_POLL, FAST_RETRY, OpenSession, StartFake

#: Probes every 0.05 s at most, so that a 0.5 s window sees only a handful.
PROBING = attrs.evolve(FAST_RETRY, outage_probe=0.02, outage_probe_max=0.05, outage_budget=10.0)


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING lines of the outage watch."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "midvary._outage" and r.levelno == logging.WARNING
    ]


async def test_maintenance_pauses_every_submission_and_probes_one_at_a_time(
    start_fake: StartFake, open_session: OpenSession, caplog: pytest.LogCaptureFixture
) -> None:
    """20 jobs in a window: a few probes instead of 20 retry storms; each job sent once."""
    fake = await start_fake()
    session = await open_session(fake, retry=PROBING)
    fake.set_maintenance(True)
    with caplog.at_level(logging.WARNING, logger="midvary"):
        jobs = [
            midvary.VaryRequest(task_id=f"parent-{n // 4}", image_index=n % 4) for n in range(20)
        ]
        running = asyncio.ensure_future(session.submit_all(jobs, concurrency=20))
        await until(lambda: session.outage is not None)
        outage = session.outage
        assert outage is not None
        assert outage.what == "maintenance (455)"
        assert outage.since <= outage.next_try < outage.gives_up_at
        await until(lambda: fake.stats.codes[455] >= 25)
        fake.set_maintenance(False)
        outcomes = await running

    assert all(outcome.ok for outcome in outcomes)
    assert fake.stats.tasks_created == 20
    assert fake.stats.duplicate_submissions == 0
    assert session.outage is None
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("maintenance (455) since ")
    assert "next try in" in lines[0]
    assert "is over after" in lines[1]


async def test_one_probe_at_a_time_during_an_outage(
    start_fake: StartFake, open_session: OpenSession
) -> None:
    """While it lasts, the 455s after the first wave come one per probe, not one per job."""
    fake = await start_fake()
    retry = attrs.evolve(FAST_RETRY, outage_probe=0.05, outage_probe_max=0.05, outage_budget=10.0)
    session = await open_session(fake, retry=retry)
    fake.set_maintenance(True)
    jobs = [midvary.VaryRequest(task_id="parent-probe", image_index=n % 4) for n in range(12)]
    running = asyncio.ensure_future(session.submit_all(jobs, concurrency=12))
    await until(lambda: fake.stats.codes[455] >= 12)  # the first wave: each job's first POST
    first_wave = fake.stats.codes[455]
    await asyncio.sleep(0.5)  # time for the probes to run: what is counted is how many
    probes = fake.stats.codes[455] - first_wave
    fake.set_maintenance(False)
    outcomes = await running

    assert all(outcome.ok for outcome in outcomes)
    # About 0.5 / 0.05 = 10 probes; 12 jobs retrying on their own would be 12 times that.
    assert 1 <= probes <= 15
    assert fake.stats.tasks_created == 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_provider_that_cannot_be_reached_is_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection refused, then the provider comes up on that port: the vary goes through."""
    port = _free_port()
    fake = FakeProvider(settings=FakeSettings(**BASE_SETTINGS), port=port)
    session = midvary.Session(
        api_key=fake.api_key,
        base_url=f"http://127.0.0.1:{port}",
        poll=FAST_POLL,
        retry=PROBING,
        submit_rate=None,
    )
    with caplog.at_level(logging.WARNING, logger="midvary"):
        async with session:
            submitting = asyncio.ensure_future(session.vary("parent-down", 0))
            await until(lambda: session.outage is not None)
            outage = session.outage
            assert outage is not None
            assert "no connection" in outage.what
            async with fake:
                handle = await submitting
                record = await handle
    assert record.status is midvary.TaskStatus.SUCCESS
    assert fake.stats.tasks_created == 1
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert "unreachable (no connection) since" in lines[0]


async def test_an_unreachable_provider_past_the_budget_raises_unsent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody listening past outage_budget: TransportError(sent=False), never uncertain."""
    port = _free_port()
    retry = attrs.evolve(PROBING, outage_budget=0.3)
    async with midvary.Session(
        api_key="fake-key-unreachable",
        base_url=f"http://127.0.0.1:{port}",
        poll=FAST_POLL,
        retry=retry,
        submit_rate=None,
    ) as session:
        with pytest.raises(midvary.TransportError) as info:
            await session.vary("parent-down", 1)
    assert not info.value.sent
    assert not isinstance(info.value, midvary.SubmitUncertainError)
    assert len(outage_lines(caplog)) == 1  # it started; nothing answered to end it
