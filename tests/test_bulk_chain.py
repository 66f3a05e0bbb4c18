"""Chained bulk (generate rows with ``then``): SIGKILLed at several points, then resumed.

The CLI runs in a subprocess, as in test_bulk_resume; a resume never submits a job twice,
whether it is a row or a child made from its parent's task id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .test_bulk_resume import (
    finish,
    in_flight,
    journal_rows,
    kill_when,
    provider,
    result_lines,
    start,
)

PROMPTS = ("a red fox", "a blue owl", "a green frog")
THEN = "vary:all;upscale:0"
#: Each prompt: its generate row, 4 varies and 1 upscale.
JOBS = len(PROMPTS) * 6


def write_chain(tmp_path: Path) -> Path:
    """A JOBS file of generate rows whose children vary every image and upscale one."""
    jobs = tmp_path / "chain.csv"
    rows = "".join(f"generate,{prompt},{THEN}\n" for prompt in PROMPTS)
    jobs.write_text("action,prompt,then\n" + rows)
    return jobs


def children_submitted(journal: Path) -> bool:
    """Some child (a key with a parent part) has a task id."""
    return any("/" in key and task for key, _state, task in journal_rows(journal))


def a_child_done(results: Path) -> bool:
    """Some child's result line is written."""
    return any("parent" in line for line in result_lines(results))


def parents_submitted(journal: Path) -> bool:
    """Some generate row has a task id."""
    return any("/" not in key and task for key, _state, task in journal_rows(journal))


KILL_POINTS: dict[str, Callable[[Path, Path], bool]] = {
    "a parent submitted": lambda journal, _results: parents_submitted(journal),
    "a child submitted": lambda journal, _results: children_submitted(journal),
    "a child done": lambda _journal, results: a_child_done(results),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
async def test_chained_bulk_killed_and_resumed_submits_nothing_twice(
    tmp_path: Path, point: str
) -> None:
    """SIGKILL at a point of the chain; the resume finishes every job, with 0 duplicates."""
    jobs = write_chain(tmp_path)
    journal = tmp_path / "chain.csv.journal.sqlite"
    results = tmp_path / "chain.csv.results.jsonl"
    condition = KILL_POINTS[point]
    async with provider(task_duration=(0.3, 0.8)) as fake:
        process = await start(fake, jobs)
        await kill_when(process, lambda: condition(journal, results), point)
        cut = in_flight(journal)
        code, output = await finish(fake, jobs)
        assert fake.stats.duplicate_submissions == 0
        last = {line["id"]: line for line in result_lines(results)}
        # A cut POST is uncertain; the children of a cut generate cannot run.
        not_run = {
            key
            for key in {k for k, _s, _t in journal_rows(journal)}
            if key.split("/")[0] in cut and key not in cut
        }
        assert code == (1 if cut else 0), output
        done = {key for key, line in last.items() if line["status"] == "done"}
        assert done == {key for key, _s, _t in journal_rows(journal)} - cut - not_run
        assert len(journal_rows(journal)) == JOBS
        assert fake.stats.tasks_created <= JOBS
        by_endpoint = fake.stats.tasks_by_endpoint
        if not cut:
            assert dict(by_endpoint) == {"generate": 3, "submit": 12, "upscale": 3}
        children = [line for line in last.values() if "parent" in line]
        grids = {line["id"]: line["task_id"] for line in last.values() if "parent" not in line}
        assert all(line["parent_task_id"] == grids[line["parent"]] for line in children)
        assert {line["action"] for line in last.values()} <= {"generate", "vary", "upscale"}
        assert {line["prompt"] for line in last.values() if line["action"] == "generate"} <= set(
            PROMPTS
        )


async def test_a_failed_parent_leaves_its_children_not_run(tmp_path: Path) -> None:
    """Every grid fails: no child is sent, each is reported, and the exit code is 1."""
    jobs = write_chain(tmp_path)
    async with provider(failure_rate=1.0) as fake:
        code, output = await finish(fake, jobs)
        assert dict(fake.stats.tasks_by_endpoint) == {"generate": 3}
    assert code == 1
    assert "not run" in output
