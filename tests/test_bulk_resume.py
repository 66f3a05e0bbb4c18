"""Crash safety: a bulk run killed with SIGKILL at several points, then resumed.

The CLI runs in a subprocess; the fake provider runs in the test process. Kill points are
conditions read from the store or the results file (a bounded wait, no blind sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from midvary.testing import FakeProvider, FakeSettings

from .bulk_support import job_rows, store_path
from .conditions import until

JOBS = 10


def command() -> list[str]:
    """The installed ``midvary`` console script, else the same entry point through -c."""
    script = Path(sys.executable).with_name("midvary")
    if script.exists():
        return [str(script)]
    found = shutil.which("midvary")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from midvary._cli import main; sys.exit(main())"]


@contextlib.asynccontextmanager
async def provider(
    *, clock: Callable[[], float] | None = None, **settings: Any
) -> AsyncIterator[FakeProvider]:
    """A fake provider with short tasks and a nearly invisible invisibility window."""
    base = {"task_duration": (0.1, 0.3), "invisible_for": 0.1}
    settings = {**base, **settings}
    async with FakeProvider(settings=FakeSettings(**settings), seed=9, clock=clock) as fake:
        yield fake


def environment(fake: FakeProvider) -> dict[str, str]:
    """The child's environment: the key and URL in variables (not in argv), no terminal."""
    unset = ("KIE_API_KEY", "MIDVARY_API_KEY", "MIDVARY_STORE_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(MIDVARY_API_KEY=fake.api_key, MIDVARY_BASE_URL=fake.base_url, CI="true")
    return env


async def start(fake: FakeProvider, jobs: Path, *extra: str) -> asyncio.subprocess.Process:
    """Start ``midvary bulk JOBS`` in a subprocess."""
    return await asyncio.create_subprocess_exec(
        *command(),
        "bulk",
        str(jobs),
        "--concurrency",
        str(JOBS),
        *extra,
        env=environment(fake),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(fake: FakeProvider, jobs: Path, *extra: str) -> tuple[int, str]:
    """Run ``midvary bulk JOBS`` to its end; return its exit code and its output."""
    process = await start(fake, jobs, *extra)
    out, err = await asyncio.wait_for(process.communicate(), timeout=50)
    text = out.decode() + err.decode()
    assert fake.api_key not in text
    assert process.returncode is not None
    return process.returncode, text


def result_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a results file."""
    if not path.exists():
        return []
    return [
        json.loads(line)
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    ]


async def kill_when(
    process: asyncio.subprocess.Process, condition: Callable[[], bool], what: str
) -> None:
    """SIGKILL ``process`` as soon as ``condition()`` holds (bounded wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not condition():
        assert process.returncode is None, f"the run ended before {what}"
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    process.kill()
    await process.communicate()


def write_jobs(tmp_path: Path) -> Path:
    """A JOBS file of distinct jobs (so any duplicate submission would show)."""
    jobs = tmp_path / "jobs.csv"
    rows = "".join(f"parent-{n},{n % 4},,\n" for n in range(JOBS))
    jobs.write_text("task_id,image_index,water_mark,id\n" + rows)
    return jobs


def summary_count(output: str, label: str) -> int:
    """A count from the summary table the run printed."""
    match = re.search(re.escape(label) + r"\W*(\d+)", output)
    assert match is not None, output
    return int(match[1])


def in_flight(store: Path) -> set[str]:
    """The jobs whose POST was in flight: the resume must report them, never re-send them."""
    return {key for key, state, _task in job_rows(store) if state == "submitting"}


def assert_resumed(fake: FakeProvider, results: Path, store: Path, uncertain: set[str]) -> None:
    """Each job ended done, except those cut mid-POST (reported uncertain); none created twice."""
    last = {line["id"]: line for line in result_lines(results)}
    assert len(last) == JOBS
    assert {key for key, line in last.items() if line["status"] == "uncertain"} == uncertain
    assert {line["status"] for key, line in last.items() if key not in uncertain} == {"done"}
    assert {line["task_id"] for line in last.values()} - {None} <= set(fake.tasks)
    assert fake.stats.duplicate_submissions == 0
    assert fake.stats.tasks_created <= JOBS
    assert fake.api_key.encode() not in results.read_bytes()
    assert fake.api_key.encode() not in store.read_bytes()


@pytest.mark.parametrize("k", [1, pytest.param(4, marks=pytest.mark.slow)])
async def test_killed_after_k_submissions_resumes_without_resubmitting(
    tmp_path: Path, k: int
) -> None:
    """SIGKILL once k jobs have task ids: the resume re-attaches them and submits the rest."""
    jobs = write_jobs(tmp_path)
    store = store_path(jobs)
    results = tmp_path / "jobs.csv.results.jsonl"
    async with provider(task_duration=(1.0, 1.5)) as fake:
        process = await start(fake, jobs)
        await kill_when(
            process,
            lambda: sum(1 for _key, _state, task in job_rows(store) if task) >= k,
            f"{k} submitted jobs",
        )
        reattach = sum(1 for _key, _state, task in job_rows(store) if task)
        cut = in_flight(store)
        code, output = await finish(fake, jobs)
        assert code == (1 if cut else 0), output
        assert summary_count(output, "re-attached by task id") == reattach
        assert_resumed(fake, results, store, cut)


async def test_killed_after_results_were_written_resumes_without_duplicates(
    tmp_path: Path,
) -> None:
    """SIGKILL once 3 results are written: the resume skips them and writes each job once."""
    jobs = write_jobs(tmp_path)
    store = store_path(jobs)
    results = tmp_path / "jobs.csv.results.jsonl"

    def three_results_and_no_post_in_flight() -> bool:
        # Every job submits at once (concurrency = JOBS), so this point comes after the
        # last POST: the kill cannot cut a submission (that case has its own test).
        rows = job_rows(store)
        return len(result_lines(results)) >= 3 and all(task for _k, _s, task in rows)

    async with provider(task_duration=(0.1, 2.5)) as fake:
        process = await start(fake, jobs)
        await kill_when(process, three_results_and_no_post_in_flight, "3 results")
        finished = sum(1 for _key, state, _task in job_rows(store) if state == "done")
        code, output = await finish(fake, jobs)
        assert code == 0, output
        assert fake.stats.requests["submit"] == JOBS
        ids = [line["id"] for line in result_lines(results)]
        assert len(ids) == len(set(ids)) == JOBS
        assert summary_count(output, "skipped (finished earlier)") == finished >= 3
        assert_resumed(fake, results, store, set())


async def test_killed_during_a_post_reports_it_uncertain_until_told(tmp_path: Path) -> None:
    """SIGKILL while a POST is unanswered: the job is uncertain, re-sent only on request."""
    jobs = write_jobs(tmp_path)
    store = store_path(jobs)
    results = tmp_path / "jobs.csv.results.jsonl"
    async with provider() as fake:
        process = await start(fake, jobs, "--concurrency", "1")
        # Slow answers once the run asked for its balance: a POST hangs, not that question.
        await until(lambda: fake.stats.requests["credit"] > 0, timeout=30)
        fake.update(latency=3.0)
        await kill_when(process, lambda: bool(in_flight(store)), "a POST in flight")
        cut = in_flight(store)
        assert len(cut) == 1
        fake.update(latency=0.0)
        code, output = await finish(fake, jobs)
        assert code == 1, output
        assert "uncertain" in output
        assert_resumed(fake, results, store, cut)
        sent = fake.stats.requests["submit"]

        code, output = await finish(fake, jobs, "--resubmit-uncertain")
        assert code == 0, output
        last = {line["id"]: line["status"] for line in result_lines(results)}
        assert set(last.values()) == {"done"}
        assert fake.stats.requests["submit"] == sent + 1
        # Only the job the user explicitly re-sent can be a duplicate.
        assert fake.stats.duplicate_submissions <= 1


async def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    """SIGINT exits 130 with a resume hint; the same command then finishes every job once."""
    jobs = write_jobs(tmp_path)
    store = store_path(jobs)
    results = tmp_path / "jobs.csv.results.jsonl"
    async with provider(task_duration=(1.0, 1.5)) as fake:
        process = await start(fake, jobs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not all(task for _k, _s, task in job_rows(store) or [("", "", None)]):
            assert loop.time() < deadline, "timed out waiting for every job to be submitted"
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 130, out.decode() + err.decode()
        assert "run the same command again to resume" in err.decode()
        assert "fan-out closed with" not in err.decode()  # said once, in the CLI's words
        assert in_flight(store) == set()
        code, output = await finish(fake, jobs)
        assert code == 0, output
        assert (
            summary_count(output, "re-attached by task id")
            + summary_count(output, "skipped (finished earlier)")
            == JOBS
        )
        assert fake.stats.requests["submit"] == JOBS
        assert_resumed(fake, results, store, set())
