"""Local faults in ``midvary bulk``: checked before the first POST, or one line and a resume.

A download folder that cannot be used, a results file in a missing folder: a usage error
naming the path, before anything is sent. A results file that cannot grow (a file size
limit, as a full disk would) after jobs were accepted: one ``midvary bulk: error:`` line
naming the file, no traceback; once it can grow again, the same command finishes every job
without submitting any twice.
"""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path

import pytest

from midvary.testing import FakeProvider

from .conditions import until
from .test_bulk_resume import command, environment, provider
from .test_cli import cli, write_csv
from .test_cli import provider as cli_provider


async def test_a_download_path_that_is_a_file_is_refused_before_any_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--download naming a file, or a folder under a file: exit 2, one line, nothing sent."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,a"])
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder")
    async with cli_provider(monkeypatch) as fake:
        assert await cli("bulk", str(jobs), "--download", str(plain)) == 2
        first = capsys.readouterr().err
        assert await cli("bulk", str(jobs), "--download", str(plain / "images")) == 2
        second = capsys.readouterr().err
        assert fake.stats.requests["submit"] == 0
    assert first.strip() == f"midvary bulk: error: --download {plain} is not a folder"
    assert second.startswith(f"midvary bulk: error: --download {plain / 'images'}: cannot write")
    assert "Traceback" not in first + second


async def test_results_in_a_missing_folder_are_refused_before_any_post(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out in a folder that does not exist: exit 2, one line naming it, nothing sent."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,a"])
    out = tmp_path / "missing" / "results.jsonl"
    async with cli_provider(monkeypatch) as fake:
        assert await cli("bulk", str(jobs), "--out", str(out)) == 2
        assert fake.stats.requests["submit"] == 0
    err = capsys.readouterr().err
    assert err.strip() == f"midvary bulk: error: --out {out}: no folder {out.parent}"


def _limit_file_size(size: int) -> None:
    # In the child only: its files cannot grow past ``size`` bytes (EFBIG, as a full disk
    # gives ENOSPC; Python ignores SIGXFSZ, so the write raises instead of killing it).
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


async def bulk_run(fake: FakeProvider, jobs: Path, file_size: int | None) -> tuple[int, str, str]:
    """``midvary bulk JOBS`` in a subprocess (its files capped at ``file_size`` bytes)."""
    child = await asyncio.create_subprocess_exec(
        *command(),
        "bulk",
        str(jobs),
        "--submit-rate",
        "none",
        env=environment(fake),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if file_size is None else lambda: _limit_file_size(file_size),
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def test_a_results_file_that_cannot_grow_is_one_line_and_a_resume(tmp_path: Path) -> None:
    """Results writes failing after accepted POSTs: one error line; the re-run finishes all."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},{n % 4},,job-{n}" for n in range(4)])
    results = tmp_path / "jobs.csv.results.jsonl"
    limit = 512 * 1024
    filler = json.dumps({"id": "filler", "pad": "x" * (limit - 100)})
    results.write_text(filler + "\n")
    async with provider(task_duration=(0.1, 0.3), submit_limit=None) as fake:
        code, out, err = await bulk_run(fake, jobs, limit)
        assert code == 1, out + err
        assert "Traceback" not in out + err
        assert f"midvary bulk: error: cannot write {results}" in err
        assert fake.stats.tasks_created >= 1
        code, out, err = await bulk_run(fake, jobs, None)
        assert code == 0, out + err
        assert fake.stats.duplicate_submissions == 0
        assert fake.stats.tasks_created == 4
    lines = [json.loads(line) for line in results.read_text().splitlines()[1:]]
    assert {line["id"]: line["status"] for line in lines} == {f"job-{n}": "done" for n in range(4)}


async def test_a_download_folder_lost_after_the_posts_leaves_the_jobs_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Downloads failing after acceptance: jobs unfinished, not failed; the re-run saves them."""
    jobs = write_csv(tmp_path / "jobs.csv", [f"parent-{n},{n % 4},,job-{n}" for n in range(3)])
    images = tmp_path / "images"
    bulk = ("bulk", str(jobs), "--download", str(images), "--submit-rate", "none")
    async with cli_provider(monkeypatch, task_duration=(0.5, 0.8)) as fake:
        run = asyncio.ensure_future(cli(*bulk))
        await until(lambda: fake.stats.tasks_created == 3)
        # The folder goes (a disk unmounted, a folder removed) while the tasks run.
        images.rmdir()
        images.write_text("not a folder any more")
        assert await run == 1
        assert "unfinished" in capsys.readouterr().out
        results = tmp_path / "jobs.csv.results.jsonl"
        assert results.read_text() == ""  # no job recorded as failed (nor as done)
        images.unlink()
        assert await cli(*bulk) == 0
        assert fake.stats.tasks_created == 3  # re-attached, nothing submitted again
        assert fake.stats.duplicate_submissions == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert {line["id"]: line["status"] for line in lines} == {f"job-{n}": "done" for n in range(3)}
    assert all(len(line["files"]) == 4 for line in lines)


async def test_a_run_that_cannot_start_creates_no_download_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No API key: exit 2 before the download folder check makes the folder."""
    monkeypatch.delenv("MIDVARY_API_KEY", raising=False)
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,a"])
    assert await cli("bulk", str(jobs), "--download", str(tmp_path / "images")) == 2
    assert not (tmp_path / "images").exists()
