"""Campaigns R12 and R16: ``midvary bulk`` in a real process against the account's limits.

R12: the credits run out part-way through a bulk run; after a top-up the same command sends
exactly the jobs left pending. R16: a maintenance window in the middle of a bulk run is
waited out, with one warning line in and one out.

Time is compressed as the fake's test mode compresses it (``MIDVARY_TESTING``, inherited
by the child process): tasks take 0.1 to 0.4 s instead of tens of seconds, and an outage is
probed every 0.01 s doubling to 0.1 s (the defaults: 2 s doubling to 60 s), so a 3 s window
stands for a window of minutes: about 30 probes, as a 10-minute window gets with the
default probes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import attrs
import pytest

from midvary.testing import FakeProvider, FakeSettings

from ..store.redis_server import RedisServer
from .fleet import ArqFigures, arq_campaign
from .scenarios import result_lines, run_cli, write_jobs

SETTINGS = FakeSettings(task_duration=(0.1, 0.4), invisible_for=0.05, submit_limit=None)


@attrs.frozen(kw_only=True)
class CreditsRun:
    """R12's figures."""

    jobs: int
    credits: int
    first_exit: int | None
    stop_lines: list[str]
    posts_after_first_402: int
    pending_after_stop: int
    posts_after_top_up: int
    done: int
    tasks_created: int
    duplicates: int
    wall: float


async def credits_run_out(jobs: int, *, credits: int, workdir: Path) -> CreditsRun:
    """R12: ``bulk`` of ``jobs`` with credits for ``credits``; a top-up; the same command."""
    jobs_path = workdir / "jobs.csv"
    write_jobs(jobs_path, jobs)
    argv = ("bulk", str(jobs_path), "--concurrency", "8", "--submit-rate", "none")
    started = time.perf_counter()
    async with FakeProvider(settings=attrs.evolve(SETTINGS, credits=credits), seed=12) as fake:
        first_exit, output = await run_cli(fake, *argv)
        stop_lines = [line for line in output.splitlines() if line.startswith("stopped:")]
        # Every POST after the first 402 met a 402 too (the balance stayed 0).
        posts_after_first_402 = fake.stats.codes[402] - 1
        pending = jobs - len(result_lines(workdir / "jobs.csv.results.jsonl"))
        fake.update(credits=jobs)  # the top-up
        before = fake.stats.requests["submit"]
        second_exit, second = await run_cli(fake, *argv)
        assert second_exit == 0, second
        lines = result_lines(workdir / "jobs.csv.results.jsonl")
        return CreditsRun(
            jobs=jobs,
            credits=credits,
            first_exit=first_exit,
            stop_lines=stop_lines,
            posts_after_first_402=posts_after_first_402,
            pending_after_stop=pending,
            posts_after_top_up=fake.stats.requests["submit"] - before,
            done=sum(line["status"] == "done" for line in lines),
            tasks_created=fake.stats.tasks_created,
            duplicates=fake.stats.duplicate_submissions,
            wall=time.perf_counter() - started,
        )


def assert_credits_run(run: CreditsRun) -> None:
    """R12's claims: few POSTs after the first 402, one line, the pending jobs sent once."""
    assert run.first_exit == 1
    assert len(run.stop_lines) == 1, run.stop_lines
    assert run.stop_lines[0].startswith("stopped: the account is out of credits (402);")
    assert run.stop_lines[0].endswith("top up, then run the same command again")
    assert f"{run.credits} tasks billed, {run.jobs - run.credits} jobs pending" in run.stop_lines[0]
    assert 0 <= run.posts_after_first_402 < 8  # at most the others in flight (concurrency 8)
    assert run.pending_after_stop == run.jobs - run.credits
    assert run.posts_after_top_up == run.jobs - run.credits  # exactly the pending jobs
    assert run.done == run.jobs
    assert run.tasks_created == run.jobs
    assert run.duplicates == 0


async def test_r12_credits_run_out_then_the_same_command_sends_the_rest(tmp_path: Path) -> None:
    """R12, small: credits for 8 of 40 jobs."""
    run = await credits_run_out(40, credits=8, workdir=tmp_path)
    assert_credits_run(run)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_r12_full_size(tmp_path: Path) -> None:
    """R12 as the issue states it: credits run out after 20 of 200 jobs."""
    run = await credits_run_out(200, credits=20, workdir=tmp_path)
    assert_credits_run(run)


@attrs.frozen(kw_only=True)
class MaintenanceRun:
    """R16's figures (bulk)."""

    jobs: int
    exit_code: int | None
    done: int
    warnings_in: int
    warnings_out: int
    answers_455: int
    tasks_created: int
    duplicates: int
    window: float
    wall: float


async def maintenance_window(jobs: int, *, window: float, workdir: Path) -> MaintenanceRun:
    """R16: ``bulk`` of ``jobs``; a maintenance window of ``window`` s once a tenth are sent."""
    jobs_path = workdir / "jobs.csv"
    write_jobs(jobs_path, jobs)
    argv = ("bulk", str(jobs_path), "--concurrency", "16", "--submit-rate", "none")
    started = time.perf_counter()
    async with FakeProvider(settings=SETTINGS, seed=16) as fake:
        running = asyncio.ensure_future(run_cli(fake, *argv))
        async with asyncio.timeout(60):
            while fake.stats.tasks_created < jobs // 10:  # noqa: ASYNC110 - nothing signals it
                await asyncio.sleep(0.01)
        fake.set_maintenance(True)
        await asyncio.sleep(window)  # the window's length: what is measured is its effect
        fake.set_maintenance(False)
        code, output = await running
        lines = result_lines(workdir / "jobs.csv.results.jsonl")
        return MaintenanceRun(
            jobs=jobs,
            exit_code=code,
            done=sum(line["status"] == "done" for line in lines),
            warnings_in=output.count("requests paused, next try in"),
            warnings_out=output.count("is over after"),
            answers_455=fake.stats.codes[455],
            tasks_created=fake.stats.tasks_created,
            duplicates=fake.stats.duplicate_submissions,
            window=window,
            wall=time.perf_counter() - started,
        )


def assert_maintenance_run(run: MaintenanceRun) -> None:
    """R16's claims: every job done, nothing stuck, one warning in and one out."""
    assert run.exit_code == 0
    assert run.done == run.jobs
    assert run.tasks_created == run.jobs
    assert run.duplicates == 0
    assert run.answers_455 > 0
    assert (run.warnings_in, run.warnings_out) == (1, 1)


async def test_r16_a_maintenance_window_in_a_bulk_run_is_waited_out(tmp_path: Path) -> None:
    """R16, small: 30 jobs, a 1.5 s window."""
    run = await maintenance_window(30, window=1.5, workdir=tmp_path)
    assert_maintenance_run(run)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_r16_full_size(tmp_path: Path) -> None:
    """R16 as the issue states it for bulk: 100 jobs, a window of minutes (3 s compressed)."""
    run = await maintenance_window(100, window=3.0, workdir=tmp_path)
    assert_maintenance_run(run)


def assert_fleet_window(figures: ArqFigures) -> None:
    """R16 on arq: every job succeeded once; each worker that saw the window said so twice."""
    assert figures.missing == {}
    assert figures.states() == {"succeeded": figures.jobs}, figures.states()
    assert figures.duplicates == 0
    assert figures.tasks_created == figures.jobs
    seen = {life: lines for life, lines in figures.outage_lines.items() if lines != (0, 0)}
    assert seen, figures.outage_lines
    assert all(lines == (1, 1) for lines in seen.values()), figures.outage_lines


async def test_r16_a_maintenance_window_on_an_arq_fleet(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """R16 on arq, small: 20 jobs on two workers, a 1.5 s window."""
    figures = await arq_campaign(
        jobs=20, seed=16, redis_url=redis_server.url, workdir=tmp_path, prefix="r16",
        maintenance=1.5,
    )  # fmt: skip
    assert_fleet_window(figures)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_r16_arq_fleet_full_size(redis_server: RedisServer, tmp_path: Path) -> None:
    """R16 on arq: 100 jobs on two workers, a window of minutes (3 s compressed)."""
    figures = await arq_campaign(
        jobs=100, seed=16, redis_url=redis_server.url, workdir=tmp_path, prefix="r16",
        maintenance=3.0,
    )  # fmt: skip
    assert_fleet_window(figures)
