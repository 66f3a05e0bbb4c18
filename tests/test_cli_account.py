"""The account in the command line: ``midvary credits`` against the fake provider."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import midvary
from midvary._cli.progress import Progress

from .bulk_support import write_old_journal
from .conditions import until
from .test_cli import cli, provider, read_results, write_csv


async def test_credits_prints_the_balance_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``midvary credits`` prints the balance grouped for people, ``--json`` an object."""
    async with provider(monkeypatch, credits=12_400) as fake:
        assert await cli("credits") == 0
        assert capsys.readouterr().out == "credits 12,400\n"
        fake.update(credits=7)
        assert await cli("credits", "--json") == 0
        assert json.loads(capsys.readouterr().out) == {"credits": 7}


async def test_credits_with_a_wrong_key_exits_1_without_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong key is reported as AuthenticationError (exit 1); no key is printed."""
    async with provider(monkeypatch):
        assert await cli("credits", "--api-key", "fake-wrong-cli-key") == 1
        out, err = capsys.readouterr()
        assert "AuthenticationError" in err
        assert "fake-wrong-cli-key" not in out + err


def vary_rows(count: int) -> list[str]:
    """``count`` distinct vary rows (4 images per parent)."""
    return [f"parent-{n // 4},{n % 4},,job-{n}" for n in range(count)]


async def test_bulk_stops_at_402_and_the_same_command_sends_the_pending_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credits for 5 of 20: one stop line, exit 1; after a top-up the re-run sends the 15."""
    jobs = write_csv(tmp_path / "jobs.csv", vary_rows(20))
    async with provider(monkeypatch, credits=5, submit_limit=None) as fake:
        assert await cli("bulk", str(jobs), "--concurrency", "4") == 1
        out, err = capsys.readouterr()
        assert fake.stats.tasks_created == 5
        assert 1 <= fake.stats.codes[402] <= 4  # only the POSTs in flight at the first one
        stops = [line for line in err.splitlines() if line.startswith("stopped")]
        assert stops == [
            "stopped: the account is out of credits (402); 5 tasks billed, 15 jobs pending: "
            "top up, then run the same command again"
        ]
        assert "credits 5 -> 0: 5 spent on 5 tasks" in out
        assert "InsufficientCreditsError" not in out  # no line per job
        results = read_results(tmp_path / "jobs.csv.results.jsonl")
        assert [r["status"] for r in results] == ["done"] * 5

        fake.update(credits=100)
        posts = fake.stats.requests["submit"]
        assert await cli("bulk", str(jobs), "--concurrency", "4") == 0
        out, _err = capsys.readouterr()
        assert fake.stats.requests["submit"] - posts == 15
        assert "credits 100 -> 85: 15 spent on 15 tasks" in out
    assert fake.stats.tasks_created == 20
    assert fake.stats.duplicate_submissions == 0
    results = read_results(tmp_path / "jobs.csv.results.jsonl")
    assert sorted(r["id"] for r in results) == sorted(f"job-{n}" for n in range(20))


async def test_bulk_with_a_wrong_key_stops_after_the_posts_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """50 jobs, a wrong key: at most `concurrency` POSTs and one line; nothing recorded."""
    jobs = write_csv(tmp_path / "jobs.csv", vary_rows(50))
    async with provider(monkeypatch, submit_limit=None) as fake:
        # No client-side limit, like the fake here: at the default 20 per 10 s the second
        # run would wait 20 s for its window.
        rate = ("--submit-rate", "none")
        code = await cli(
            "bulk", str(jobs), "--concurrency", "8", *rate, "--api-key", "fake-wrong-bulk"
        )
        out, err = capsys.readouterr()
        assert code == 1
        assert 1 <= fake.stats.requests["submit"] <= 8
        assert "stopped: the API key was refused (401); 0 tasks billed, 50 jobs pending" in err
        assert "fake-wrong-bulk" not in out + err
        assert "credits" not in out  # the endpoint refused the key too: nothing said
        # With the right key the same command sends all 50.
        assert await cli("bulk", str(jobs), "--concurrency", "8", *rate) == 0
    assert fake.stats.tasks_created == 50


async def test_bulk_max_tasks_leaves_the_rest_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-tasks 3 of 10: 3 tasks, exit 1 with the line; the next run sends the other 7."""
    jobs = write_csv(tmp_path / "jobs.csv", vary_rows(10))
    async with provider(monkeypatch, submit_limit=None) as fake:
        assert await cli("bulk", str(jobs), "--max-tasks", "3", "--concurrency", "2") == 1
        out, _err = capsys.readouterr()
        assert fake.stats.tasks_created == 3
        assert "--max-tasks reached: 3 tasks billed, 7 jobs pending" in out
        assert await cli("bulk", str(jobs), "--max-tasks", "100") == 0
    assert fake.stats.tasks_created == 10
    assert fake.stats.duplicate_submissions == 0


async def test_validation_refusals_stay_failed_and_retry_failed_sends_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 422 (unknown parent) is failed: a plain re-run skips it, --retry-failed sends it."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,good", "unknown-9,0,,bad"])
    async with provider(monkeypatch, submit_limit=None) as fake:
        assert await cli("bulk", str(jobs)) == 1
        assert fake.stats.requests["submit"] == 2
        assert await cli("bulk", str(jobs)) == 1
        assert fake.stats.requests["submit"] == 2
        assert await cli("bulk", str(jobs), "--retry-failed") == 1
        assert fake.stats.requests["submit"] == 3
    capsys.readouterr()


async def test_bulk_waits_out_maintenance_and_says_so_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 455 window mid-run: every job done, one line when it starts and one when it ends."""
    jobs = write_csv(tmp_path / "jobs.csv", vary_rows(8))
    async with provider(monkeypatch, submit_limit=None) as fake:
        fake.set_maintenance(True)
        running = asyncio.ensure_future(cli("bulk", str(jobs), "--concurrency", "8"))
        await until(lambda: fake.stats.codes[455] >= 8)
        fake.set_maintenance(False)
        assert await running == 0
        _out, err = capsys.readouterr()
    assert fake.stats.tasks_created == 8
    assert len([line for line in err.splitlines() if "maintenance (455) since" in line]) == 2
    assert "is over after" in err


async def test_a_job_an_earlier_version_recorded_failed_by_402_is_sent_by_a_plain_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal line "failed: InsufficientCreditsError" with no task: pending, sent once."""
    jobs = write_csv(tmp_path / "jobs.csv", vary_rows(2))
    # What the journal of an earlier version held for a job refused with 402 (moved into
    # the store by the first run); the other job had not run.
    line = json.dumps({
        "id": "job-1", "status": "failed", "task_id": None,
        "error": {"type": "InsufficientCreditsError", "message": "Insufficient credits"},
    })  # fmt: skip
    await asyncio.to_thread(write_old_journal, jobs, [("job-1", "failed", None, line)])
    async with provider(monkeypatch, submit_limit=None) as fake:
        assert await cli("bulk", str(jobs)) == 0
        assert fake.stats.requests["submit"] == 2  # job-0, and job-1: nothing was billed
        assert await cli("bulk", str(jobs)) == 0  # and only once
        assert fake.stats.requests["submit"] == 2
    capsys.readouterr()


async def test_the_progress_line_shows_the_outage_while_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``paused: maintenance (455) since ..., next try ...`` while the session waits it out."""
    async with provider(monkeypatch, submit_limit=None) as fake:
        session = midvary.Session(api_key=fake.api_key, base_url=fake.base_url)
        async with session:
            progress = Progress(4, outage=lambda: session.outage)
            assert "paused" not in progress.counts()
            fake.set_maintenance(True)
            with pytest.raises(midvary.ServiceUnavailableError):
                await session.credits()  # not a submission or a poll: no outage
            assert "paused" not in progress.counts()
            waiting = asyncio.ensure_future(session.vary("parent-1", 0))
            await until(lambda: session.outage is not None)
            outage = session.outage
            assert outage is not None
            line = progress.counts()
            assert f"paused: maintenance (455) since {outage.since:%H:%M:%S} UTC" in line
            assert f"next try {outage.next_try:%H:%M:%S}" in line
            fake.set_maintenance(False)
            await waiting
            assert "paused" not in progress.counts()
