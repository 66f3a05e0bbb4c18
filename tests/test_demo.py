"""`midvary demo`, in-process: main(["demo", ...]) with its own fake provider, times x0.1."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from midvary._cli import main
from midvary._cli.demo import FAST_SCALE
from midvary._cli.demo import run as demo_run
from midvary._cli.demo.assess import assess
from midvary._cli.demo.plan import DemoPlan
from midvary._cli.demo.run import Observed, run_demo
from midvary._cli.progress import Progress
from midvary.testing import PNG_SIGNATURE

# The fake provider's generated keys look like this; none may be printed.
FAKE_KEY = re.compile(r"fake-[0-9a-f]{24}")
IMAGE_NAME = re.compile(r"(?P<task_id>fake(?:gen|vary|ups)[0-9a-f]+)_(?P<n>[0-3])\.png")
#: The fake's task ids carry their kind.
TAGS = {"generate": "fakegen", "vary": "fakevary", "upscale": "fakeups"}


def run_json(out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any, str]:
    """Run the fast demo with --json; return the exit code, the summary and stderr."""
    code = main(["demo", "--out", str(out), "--fast", "--json", *extra])
    stdout, stderr = capsys.readouterr()
    assert not FAKE_KEY.search(stdout + stderr)
    return code, json.loads(stdout), stderr


def test_demo_succeeds_counts_every_job_and_writes_png_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fast demo exits 0: every kind counted, failures reported, every image a PNG."""
    out = tmp_path / "images"
    code, summary, stderr = run_json(out, capsys)

    assert code == 0, summary["problems"]
    assert summary["ok"] is True
    assert summary["problems"] == []
    assert summary["prompts"] == 6
    assert summary["jobs"] == 36
    kinds = summary["kinds"]
    assert {kind: counts["jobs"] for kind, counts in kinds.items()} == {
        "generate": 6,
        "vary": 24,
        "upscale": 6,
    }
    for counts in kinds.values():
        ended = counts["done"] + counts["failed"] + counts["uncertain"] + counts["not_run"]
        assert ended == counts["jobs"]
    for total in ("done", "uncertain", "not_run", "tasks_billed"):
        assert summary[total] == sum(counts[total] for counts in kinds.values())
    assert kinds["generate"]["not_run"] == 0
    # Each grid that did not succeed leaves exactly its 4 varies and 1 upscale not run.
    grids_lost = kinds["generate"]["failed"] + kinds["generate"]["uncertain"]
    assert summary["not_run"] == 5 * grids_lost
    assert kinds["vary"]["not_run"] == 4 * grids_lost
    assert summary["done"] + summary["failed"] + summary["uncertain"] + summary["not_run"] == 36
    assert summary["unexpected"] == 0
    # The fake makes about 15% of tasks fail: they are outcomes, not a crash of the batch.
    assert summary["failed"] >= 1
    assert summary["failed"] == summary["failed_create"] + summary["failed_generate"]
    assert summary["uncertain"] == summary["uncertain_billed"] + summary["uncertain_not_created"]
    assert summary["duplicates"] == 0
    assert summary["http_429"] == 0  # the session was told the limit all three kinds share
    assert summary["tasks_billed"] == (
        summary["done"] + summary["failed"] + summary["uncertain_billed"]
    )
    assert summary["polls_per_task_mean"] >= 1

    files = sorted(path for path in out.iterdir() if path.suffix == ".png")
    images = 4 * (kinds["generate"]["done"] + kinds["vary"]["done"]) + kinds["upscale"]["done"]
    assert len(files) == summary["files_written"] == images
    tasks: dict[str, set[int]] = {}
    for path in files:
        match = IMAGE_NAME.fullmatch(path.name)
        assert match is not None, path.name
        tasks.setdefault(match["task_id"], set()).add(int(match["n"]))
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert len(tasks) == summary["done"]
    by_kind = {kind: sum(tag in task for task in tasks) for kind, tag in TAGS.items()}
    assert by_kind == {kind: counts["done"] for kind, counts in kinds.items()}
    for task, indexes in tasks.items():
        assert indexes == ({0} if TAGS["upscale"] in task else {0, 1, 2, 3})

    # The gallery page beside them shows the workflow: each prompt's grid with its children.
    assert sorted(path.name for path in out.iterdir() if path.suffix != ".png") == [
        "index.html",
        "results.jsonl",
    ]
    assert summary["gallery"] == str(out / "index.html")
    page = (out / "index.html").read_text()
    assert "could not be read" not in page  # every kind's line is a gallery line
    assert page.count('<section class="parent grid"') == 6
    assert page.count('loading="lazy"') == summary["files_written"]
    assert all(f'src="{path.name}"' in page for path in files)

    # Not a terminal: progress is plain lines, failed jobs are named as they end.
    assert "demo: 36/36 finished" in stderr
    assert "TaskFailedError" in stderr


def assess_tampered(tmp_path: Path, tamper: Callable[[Observed], Observed]) -> tuple[str, ...]:
    """Run a small fast demo; return its problems once ``tamper`` has changed what it saw."""
    plan = DemoPlan(scale=FAST_SCALE, prompts=2)
    observed = asyncio.run(
        run_demo(plan, out=tmp_path, seed=7, progress=Progress(plan.jobs, label="demo"))
    )
    assert assess(observed).ok, assess(observed).problems
    return assess(tamper(observed)).problems


def test_demo_check_catches_a_task_of_the_wrong_kind(tmp_path: Path) -> None:
    """A vary job whose task the fake made as an upscale is a problem, per job and per kind."""

    def tamper(observed: Observed) -> Observed:
        task_id = next(o.task_id for o in observed.outcomes if o.ok and "vary" in str(o.task_id))
        assert task_id is not None
        tasks = dict(observed.fake_tasks)
        tasks[task_id] = attrs.evolve(tasks[task_id], kind="upscale")
        observed.stats.tasks_by_endpoint["submit"] -= 1
        observed.stats.tasks_by_endpoint["upscale"] += 1
        return attrs.evolve(observed, fake_tasks=tasks)

    problems = assess_tampered(tmp_path, tamper)
    assert any("a upscale at the fake" in problem for problem in problems)
    assert any(problem.startswith("the fake created") for problem in problems)


def test_demo_check_catches_a_child_not_run_without_cause(tmp_path: Path) -> None:
    """A child said not run though its grid succeeded (and it ran) is a problem."""

    def tamper(observed: Observed) -> Observed:
        child = next(job for job in observed.jobs if job.parent is not None)
        return attrs.evolve(observed, not_run=(*observed.not_run, child))

    problems = assess_tampered(tmp_path, tamper)
    assert any(problem.startswith("not run: prompt-") for problem in problems)


def test_demo_prints_a_summary_table_for_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json the demo prints its figures as a table and says the run was ok."""
    code = main(["demo", "--out", str(tmp_path), "--fast", "--prompts", "2", "--seed", "3"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "midvary demo (seed 3)" in stdout
    for row in ("duplicate submissions", "polls per task", "HTTP 429", "wall time", "not run"):
        assert row in stdout
    by_kind = stdout[stdout.index("by kind") :]
    for row in ("generated", "varied", "upscaled", "tasks billed"):
        assert row in by_kind
    assert "ok: every job ended done" in stdout
    assert not FAKE_KEY.search(stdout + stderr)


def test_demo_exits_1_and_names_jobs_that_ended_unexpectedly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome the fake did not inject (here a wait's deadline) makes the demo exit 1."""
    monkeypatch.setattr(demo_run, "JOB_TIMEOUT", 0.001)
    code, summary, stderr = run_json(tmp_path, capsys, "--prompts", "2")
    assert code == 1
    assert summary["ok"] is False
    assert summary["done"] == 0
    assert summary["not_run"] == 10  # no grid came: no child ran
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


def test_make_demo_installs_only_what_the_demo_needs() -> None:
    """`make demo` installs midvary[cli] into a venv of its own, not the dev toolchain."""
    root = Path(__file__).resolve().parent.parent
    plan = subprocess.run(  # noqa: S603 - make from PATH with fixed arguments, as users run it
        ["make", "-n", "-B", "-C", str(root), "demo"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # a dry run: prints the commands, runs none
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert installs, plan
    assert all('".[cli]"' in line for line in installs), installs
    assert "[dev]" not in plan


def test_the_help_counts_the_jobs_the_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """`midvary --help` says how many jobs the demo runs: the plan's own count."""
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"upscale: {DemoPlan().jobs} jobs)" in out


def test_progress_table_and_log_tell_the_same_tally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One vocabulary: the progress line's counts are the summary's; a grid's children say why."""
    code, summary, stderr = run_json(tmp_path, capsys, "--seed", "7")
    assert code == 0, summary["problems"]
    last = [line for line in stderr.splitlines() if line.startswith("demo: 36/36 finished")]
    assert last, stderr
    counts = dict(re.findall(r"(done|failed|uncertain|not run) (\d+)", last[-1]))
    assert {word: int(n) for word, n in counts.items() if int(n)} == {
        word: summary[key]
        for word, key in (
            ("done", "done"),
            ("failed", "failed"),
            ("uncertain", "uncertain"),
            ("not run", "not_run"),
        )
        if summary[key]
    }
    # Each grid that did not succeed: its 5 children not run, saying how the grid ended.
    grids = summary["kinds"]["generate"]
    assert stderr.count("not run: its grid is uncertain") == 5 * grids["uncertain"]
    assert stderr.count("not run: its grid failed") == 5 * grids["failed"]
