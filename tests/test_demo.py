"""`midvary demo`, in-process: main(["demo", ...]) with its own fake provider, times x0.1."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from midvary._cli import main
from midvary._cli.demo import run as demo_run
from midvary.testing import PNG_SIGNATURE

# The fake provider's generated keys look like this; none may be printed.
FAKE_KEY = re.compile(r"fake-[0-9a-f]{24}")
IMAGE_NAME = re.compile(r"(?P<task_id>fakevary[0-9a-f]+)_(?P<n>[0-3])\.png")


def run_json(out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any, str]:
    """Run the fast demo with --json; return the exit code, the summary and stderr."""
    code = main(["demo", "--out", str(out), "--fast", "--json", *extra])
    stdout, stderr = capsys.readouterr()
    assert not FAKE_KEY.search(stdout + stderr)
    return code, json.loads(stdout), stderr


def test_demo_succeeds_counts_every_job_and_writes_png_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fast demo exits 0: no duplicates or 429s, failures reported, every image a PNG."""
    out = tmp_path / "images"
    code, summary, stderr = run_json(out, capsys)

    assert code == 0, summary["problems"]
    assert summary["ok"] is True
    assert summary["problems"] == []
    assert summary["jobs"] == 24
    assert summary["done"] + summary["failed"] + summary["uncertain"] == 24
    assert summary["unexpected"] == 0
    # The fake makes about 15% of tasks fail: they are outcomes, not a crash of the batch.
    assert summary["failed"] >= 1
    assert summary["failed"] == summary["failed_create"] + summary["failed_generate"]
    assert summary["uncertain"] == summary["uncertain_billed"] + summary["uncertain_not_created"]
    assert summary["duplicates"] == 0
    assert summary["http_429"] == 0  # the session was told the provider's limit
    assert (
        summary["tasks_billed"]
        == summary["done"] + summary["failed"] + (summary["uncertain_billed"])
    )
    assert summary["polls_per_task_mean"] >= 1

    files = sorted(path for path in out.iterdir() if path.suffix == ".png")
    assert len(files) == summary["files_written"] == 4 * summary["done"]
    # The gallery page beside them shows every job, its images by relative path.
    assert sorted(path.name for path in out.iterdir() if path.suffix != ".png") == [
        "index.html",
        "results.jsonl",
    ]
    assert summary["gallery"] == str(out / "index.html")
    page = (out / "index.html").read_text()
    assert page.count('loading="lazy"') == summary["files_written"]
    assert all(f'src="{path.name}"' in page for path in files)
    tasks: dict[str, set[int]] = {}
    for path in files:
        match = IMAGE_NAME.fullmatch(path.name)
        assert match is not None, path.name
        tasks.setdefault(match["task_id"], set()).add(int(match["n"]))
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert len(tasks) == summary["done"]
    assert all(indexes == {0, 1, 2, 3} for indexes in tasks.values())

    # Not a terminal: progress is plain lines, failed jobs are named as they end.
    assert "demo: 24/24 finished" in stderr
    assert "TaskFailedError" in stderr


def test_demo_prints_a_summary_table_for_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json the demo prints its figures as a table and says the run was ok."""
    code = main(["demo", "--out", str(tmp_path), "--fast", "--parents", "2", "--seed", "3"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "midvary demo (seed 3)" in stdout
    for row in ("duplicate submissions", "polls per task", "HTTP 429", "wall time"):
        assert row in stdout
    assert "ok: every job ended done" in stdout
    assert not FAKE_KEY.search(stdout + stderr)


def test_demo_exits_1_and_names_jobs_that_ended_unexpectedly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome the fake did not inject (here a wait's deadline) makes the demo exit 1."""
    monkeypatch.setattr(demo_run, "JOB_TIMEOUT", 0.001)
    code, summary, stderr = run_json(tmp_path, capsys, "--parents", "1")
    assert code == 1
    assert summary["ok"] is False
    assert summary["done"] == 0
    assert summary["unexpected"] >= 1
    assert any("TaskTimeoutError" in problem for problem in summary["problems"])
    assert "midvary demo: the library misbehaved" in stderr


def test_demo_stops_at_its_deadline_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cut by the demo's deadline exits 1 naming the jobs in flight, nothing left open."""
    monkeypatch.setattr(demo_run, "DEADLINE", 0.05)
    code, summary, _stderr = run_json(tmp_path, capsys)
    assert code == 1
    assert summary["done"] < summary["jobs"]
    assert any("did not finish within 0.05 s" in problem for problem in summary["problems"])
    assert summary["duplicates"] == 0


@pytest.mark.parametrize("option", [["--api-key", "k"], ["--base-url", "http://127.0.0.1:1"]])
def test_demo_refuses_options_for_a_real_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    """--api-key and --base-url are a usage error: the demo only talks to its own fake."""
    assert main(["demo", "--out", str(tmp_path), *option]) == 2
    assert "fake provider" in capsys.readouterr().err
