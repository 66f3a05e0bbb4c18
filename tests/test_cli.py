"""The midvary command line, in-process: main(argv) against the fake provider."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import midvary
from midvary._cli import main
from midvary.testing import PNG_SIGNATURE, FakeProvider, FakeSettings

from .bulk_support import job_states, store_path, write_old_journal
from .store.redis_server import free_port

#: Short tasks, as the CLI polls with the default policy (first poll 2 s after submission).
CLI_FAKE: dict[str, Any] = {"task_duration": (0.1, 0.5), "invisible_for": 0.1}


@contextlib.asynccontextmanager
async def provider(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> AsyncIterator[FakeProvider]:
    """A fake provider whose URL and key the CLI finds in the environment."""
    async with FakeProvider(settings=FakeSettings(**{**CLI_FAKE, **settings}), seed=4) as fake:
        monkeypatch.setenv("MIDVARY_API_KEY", fake.api_key)
        monkeypatch.setenv("MIDVARY_BASE_URL", fake.base_url)
        monkeypatch.delenv("KIE_API_KEY", raising=False)
        monkeypatch.setenv("CI", "true")
        yield fake


async def cli(*argv: str) -> int:
    """Run main(argv) in a worker thread, so the fake provider keeps serving meanwhile."""
    return await asyncio.to_thread(main, list(argv))


def write_csv(path: Path, rows: list[str]) -> Path:
    """A JOBS file with a header and ``rows``."""
    path.write_text("task_id,image_index,water_mark,id\n" + "".join(f"{r}\n" for r in rows))
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a results file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def is_png(path: Path) -> bool:
    """Whether ``path`` holds a PNG image."""
    return path.read_bytes().startswith(PNG_SIGNATURE)


def assert_key_absent(key: str, capsys: pytest.CaptureFixture[str], *files: Path) -> None:
    """The API key is in no output and no file the CLI wrote."""
    out, err = capsys.readouterr()
    assert key not in out
    assert key not in err
    for file in files:
        assert key.encode() not in file.read_bytes(), file


async def test_bulk_runs_every_job_downloads_and_writes_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bulk: every job done, one result line each with its times, images downloaded, exit 0."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},{n % 4},wm{n}," for n in range(6)])
    async with provider(monkeypatch) as fake:
        code = await cli("bulk", str(jobs), "--download", str(tmp_path / "img"), "-v")
    assert code == 0
    results = read_results(tmp_path / "jobs.csv.results.jsonl")
    assert sorted(r["line"] for r in results) == list(range(2, 8))
    assert all(r["status"] == "done" and r["error"] is None for r in results)
    assert all(len(r["files"]) == 4 and len(r["image_urls"]) == 4 for r in results)
    assert all(is_png(Path(f)) for r in results for f in r["files"])
    assert {r["task_id"] for r in results} == set(fake.tasks)
    # When each task was created and finished, as the record said (the gallery's timing).
    assert all(r["created_at"] and r["completed_at"] >= r["created_at"] for r in results)
    assert set(job_states(store_path(jobs)).values()) == {"done"}
    # Every job's submission key is done too: the store lists none of them as unfinished.
    async with midvary.SQLiteStore(store_path(jobs)) as store:
        assert await store.unfinished() == []
    out = capsys.readouterr().out
    assert "midvary bulk" in out
    assert "\x1b[" not in out  # no terminal: plain, readable text
    capsys.readouterr()
    assert_key_absent(
        fake.api_key,
        capsys,
        tmp_path / "jobs.csv.results.jsonl",
        store_path(jobs),
    )


async def test_bulk_rerun_skips_finished_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running the same bulk command again submits nothing and writes no duplicate line."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},0,," for n in range(4)])
    async with provider(monkeypatch) as fake:
        assert await cli("bulk", str(jobs)) == 0
        submitted = fake.stats.requests["submit"]
        assert await cli("bulk", str(jobs)) == 0
        assert fake.stats.requests["submit"] == submitted == 4
    assert len(read_results(tmp_path / "jobs.csv.results.jsonl")) == 4


async def test_bad_rows_are_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad JSONL rows are reported with their line numbers; the good ones run; exit 1."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(
            [
                json.dumps({"task_id": "parent-a", "image_index": 0, "id": "a"}),
                "{not json",
                json.dumps({"task_id": "parent-b", "image_index": 9}),
                "",
                json.dumps({"task_id": "parent-c", "image_index": 2, "water_mark": "x"}),
                json.dumps({"image_index": 1}),
                json.dumps({"task_id": "parent-d", "image_index": 1, "id": "a"}),
                json.dumps(["a", 1]),
            ]
        )
    )
    async with provider(monkeypatch):
        code = await cli("bulk", str(jobs), "--concurrency", "2")
    assert code == 1
    err = capsys.readouterr().err
    for line in (2, 3, 6, 7, 8):
        assert f"jobs.jsonl:{line}:" in err
    assert "already used on line 1" in err
    results = read_results(tmp_path / "jobs.jsonl.results.jsonl")
    assert sorted((r["line"], r["status"]) for r in results) == [(1, "done"), (5, "done")]
    assert next(r for r in results if r["line"] == 5)["water_mark"] == "x"


async def test_failed_and_uncertain_jobs_are_reported_and_never_resent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost submit answers are stored uncertain; a re-run only resends them on request."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},1,," for n in range(8)])
    async with provider(monkeypatch, drop_submit_answer_rate=0.4) as fake:
        assert await cli("bulk", str(jobs)) == 1
        lost = fake.stats.dropped_submit_answers
        states = job_states(store_path(jobs))
        assert list(states.values()).count("uncertain") == lost > 0
        assert await cli("bulk", str(jobs)) == 1  # reported again, not re-sent
        assert fake.stats.requests["submit"] == 8
        assert fake.stats.duplicate_submissions == 0
        fake.update(drop_submit_answer_rate=0.0)
        assert await cli("bulk", str(jobs), "--resubmit-uncertain") == 0
        assert fake.stats.requests["submit"] == 8 + lost
    results = read_results(tmp_path / "jobs.csv.results.jsonl")
    last = {r["id"]: r["status"] for r in results}
    assert set(last.values()) == {"done"}
    assert len(results) == 8 + lost  # an uncertain line, then the done line of its re-run


async def test_with_a_callback_url_lost_answers_are_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--callback-url: jobs whose answer was lost wait for their callback and succeed."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},2,," for n in range(8)])
    port = free_port()
    async with provider(monkeypatch, drop_submit_answer_rate=0.4) as fake:
        assert (
            await cli(
                "bulk",
                str(jobs),
                "--callback-url",
                f"http://127.0.0.1:{port}/midvary/callback",
                "--callback-listen",
                f"127.0.0.1:{port}",
            )
            == 0
        )
        lost = fake.stats.dropped_submit_answers
        assert lost > 0
        assert fake.stats.requests["submit"] == 8
        results = read_results(tmp_path / "jobs.csv.results.jsonl")
        assert {r["status"] for r in results} == {"done"}
        assert sum(1 for r in results if r.get("recovered")) == lost
        assert {r["task_id"] for r in results} == set(fake.tasks)
        out = capsys.readouterr().out
        assert re.search(rf"recovered \(by callback\) +│ +{lost} ", out), out

        assert await cli("bulk", str(jobs), "--callback-listen", "nowhere") == 2
        assert "--callback-listen" in capsys.readouterr().err


def old_line(key: str, line: int, parent: str, status: str, task: str | None) -> str:
    """A results line as an earlier midvary wrote it: parent in task_id, task in vary_task_id."""
    error = None if status == "done" else {"type": "SubmitUncertainError", "message": "lost"}
    return json.dumps(
        {"id": key, "line": line, "action": "vary", "task_id": parent, "image_index": 0,
         "water_mark": None, "status": status, "vary_task_id": task, "image_urls": [],
         "files": [], "error": error}
    )  # fmt: skip


async def test_a_journal_of_an_earlier_midvary_is_moved_and_nothing_it_knew_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Submitted, in-flight, uncertain and done jobs of an old journal: none is sent again."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},0,,job-{n}" for n in range(6)])
    async with provider(monkeypatch) as fake:
        parents = [fake.sample_parent_id] * 2
        submitted = await fake_task(fake, parents[0])
        done = await fake_task(fake, parents[1])
        journal = await asyncio.to_thread(
            write_old_journal,
            jobs,
            [
                ("job-0", "submitted", submitted, None),
                ("job-1", "submitting", None, None),
                ("job-2", "uncertain", None, old_line("job-2", 4, "parent-2", "uncertain", None)),
                ("job-3", "done", done, old_line("job-3", 5, "parent-3", "done", done)),
            ],
        )
        before = fake.stats.requests["submit"]
        assert await cli("bulk", str(jobs)) == 1  # two uncertain jobs
        assert fake.stats.requests["submit"] == before + 2  # job-4 and job-5 only
        err = capsys.readouterr().err
        assert "moved the journal of an earlier midvary (6 jobs)" in err
        assert not journal.exists()
        assert journal.with_name(journal.name + ".migrated").exists()
        states = job_states(store_path(jobs))
        assert states == {
            "job-0": "done", "job-1": "uncertain", "job-2": "uncertain", "job-3": "done",
            "job-4": "done", "job-5": "done",
        }  # fmt: skip
        last = {r["id"]: r for r in read_results(tmp_path / "jobs.csv.results.jsonl")}
        assert last["job-0"]["task_id"] == submitted  # re-attached by its task id
        assert last["job-3"]["vary_task_id"] == done  # the journal's line, as it was
        assert await cli("bulk", str(jobs)) == 1  # and again: still nothing re-sent
        assert fake.stats.requests["submit"] == before + 2
        assert await cli("bulk", str(jobs), "--resubmit-uncertain") == 0
        assert fake.stats.requests["submit"] == before + 4


async def fake_task(fake: FakeProvider, parent: str) -> str:
    """A vary task the fake made (as an earlier run would have submitted it)."""
    async with midvary.Session(api_key=fake.api_key, base_url=fake.base_url) as session:
        return (await session.vary(parent, 0)).task_id


async def test_a_journal_of_another_jobs_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An old journal whose ids name other jobs (or none of these) is a usage error."""
    first = write_csv(tmp_path / "a.csv", ["parent-1,0,,job-1"])
    other = write_csv(tmp_path / "b.csv", ["parent-2,0,,job-1"])
    unrelated = write_csv(tmp_path / "c.csv", ["parent-3,3,,"])
    line = old_line("job-1", 2, "parent-1", "done", "t1")
    journal = await asyncio.to_thread(write_old_journal, first, [("job-1", "done", "t1", line)])
    async with provider(monkeypatch) as fake:
        assert await cli("bulk", str(other), "--journal", str(journal)) == 2
        assert "belongs to another JOBS file (ids job-1)" in capsys.readouterr().err
        assert await cli("bulk", str(unrelated), "--journal", str(journal)) == 2
        assert "belongs to another JOBS file" in capsys.readouterr().err
        assert await cli("bulk", str(first), "--journal", str(tmp_path / "none.sqlite")) == 2
        assert "no journal at" in capsys.readouterr().err
        assert fake.stats.requests["submit"] == 0
    assert journal.exists()


async def test_vary_waits_downloads_and_prints_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The vary command with --json --download prints the final record and writes the images."""
    async with provider(monkeypatch) as fake:
        code = await cli("vary", "parent-1", "2", "--json", "--download", str(tmp_path))
        out = capsys.readouterr().out
        data = json.loads(out)
        assert code == 0
        assert data["status"] == "SUCCESS"
        (task,) = fake.tasks.values()
        assert task.image_index == 2
        assert data["task_id"] == task.task_id
        assert [Path(f).name for f in data["files"]] == [
            f"{task.task_id}_{n}.png" for n in range(4)
        ]
        assert await cli("status", task.task_id, "--json") == 0
        assert json.loads(capsys.readouterr().out)["status"] == "SUCCESS"
        assert await cli("wait", task.task_id) == 0
        assert "SUCCESS" in capsys.readouterr().out


async def test_vary_no_wait_prints_the_task_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--no-wait prints the new task id and exits 0 at once."""
    async with provider(monkeypatch) as fake:
        assert await cli("vary", "parent-1", "0", "--no-wait") == 0
        assert capsys.readouterr().out.strip() == next(iter(fake.tasks))


async def test_failures_exit_1_and_bad_usage_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed task or refused submission exits 1; a bad index exits 2 before any request."""
    async with provider(monkeypatch, failure_rate=1.0) as fake:
        assert await cli("vary", "parent-1", "0") == 1
        assert "_FAILED" in capsys.readouterr().err
        assert await cli("vary", "unknown-parent", "0") == 1
        assert "ValidationError" in capsys.readouterr().err
        submitted = fake.stats.requests["submit"]
        assert await cli("vary", "parent-1", "4") == 2
        assert "image_index must be 0, 1, 2 or 3" in capsys.readouterr().err
        assert fake.stats.requests["submit"] == submitted


async def test_options_after_the_command_and_flags_over_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--api-key/--base-url work after the command name and win over the environment."""
    async with provider(monkeypatch) as fake:
        monkeypatch.setenv("MIDVARY_API_KEY", "wrong-key")
        monkeypatch.setenv("MIDVARY_BASE_URL", "http://127.0.0.1:9")
        code = await cli(
            "vary",
            "parent-1",
            "1",
            "--no-wait",
            "--api-key",
            fake.api_key,
            "--base-url",
            fake.base_url,
        )
        assert code == 0
        assert fake.api_key not in capsys.readouterr().out


def test_no_api_key_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a key anywhere the CLI says how to give one and exits 2."""
    monkeypatch.delenv("MIDVARY_API_KEY", raising=False)
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    assert main(["status", "t-1"]) == 2
    assert "MIDVARY_API_KEY" in capsys.readouterr().err


def test_missing_rich_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without rich, bulk exits 2 with the pip command instead of a traceback."""
    monkeypatch.setitem(sys.modules, "rich", None)
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,"])
    assert main(["--api-key", "k", "bulk", str(jobs)]) == 2
    assert "pip install 'midvary[cli]'" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown commands, bad numbers and unreadable JOBS files exit 2."""
    assert main([]) == 2
    assert main(["bulk", "x.csv", "--concurrency", "0"]) == 2
    assert main(["--api-key", "k", "bulk", str(tmp_path / "missing.csv")]) == 2
    (tmp_path / "bad.csv").write_text("parent,index\nparent-1,0\n")
    assert main(["--api-key", "k", "bulk", str(tmp_path / "bad.csv")]) == 2
    assert "task_id and image_index" in capsys.readouterr().err
    assert main(["--version"]) == 0


def test_commands_of_other_modules_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    """The fake-server command, defined in midvary.testing, is one line in COMMANDS."""
    assert main(["fake-server", "--help"]) == 0
    assert "fake provider" in capsys.readouterr().out


def test_a_journal_an_earlier_midvary_runs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While an earlier midvary's run holds its journal, bulk exits 2 and sends nothing."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,"])
    journal = write_old_journal(jobs, [])
    with journal.with_name(journal.name + ".lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["--api-key", "k", "bulk", str(jobs)]) == 2
    assert "in use by a bulk run of an earlier midvary" in capsys.readouterr().err
    assert journal.exists()


def test_a_store_in_use_by_another_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run on the same default store at once exits 2 instead of submitting too."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,"])
    with (tmp_path / "jobs.csv.store.sqlite.lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["--api-key", "k", "bulk", str(jobs)]) == 2
    assert "in use by another bulk run of jobs.csv" in capsys.readouterr().err
    assert not store_path(jobs).exists()
