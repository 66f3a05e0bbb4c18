"""Bulk on several machines: ``midvary bulk JOBS --store redis://...`` in several processes.

Each run is a real subprocess, as in test_bulk_resume; the fake provider runs in the test
process on loopback and a real Redis server (with a password, which must never show) in its
own. The runs share the JOBS file's jobs through the store: each job is submitted once
whichever run takes it, a killed run's jobs are taken over by a later one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import midvary
from midvary.testing import FakeProvider

from .store.redis_server import RedisServer, server_or_skip
from .test_bulk_chain import PROMPTS, THEN
from .test_bulk_resume import command as midvary_command
from .test_bulk_resume import (
    environment,
    provider,
    start,
    summary_count,
)

PASSWORD = "s3cret-redis-pw"
#: Fast enough that no test waits long for a stopped run's claims to lapse.
LEASE = ("--claim-lease", "2", "--submit-rate", "1000", "1", "-v")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own, behind a password."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(server_or_skip(), directory, password=PASSWORD)
    server.start()
    yield server
    server.stop()


class SkippingClock:
    """The fake provider's clock: real time plus the seconds a test skips (tasks end early)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        """Seconds (monotonic), ``skipped`` ahead."""
        return time.monotonic() + self.skipped


def write_jobs(path: Path, count: int) -> Path:
    """A JOBS file of ``count`` distinct vary jobs with ids."""
    rows = "".join(f"parent-{n},{n % 4},,job-{n}\n" for n in range(count))
    path.write_text("task_id,image_index,water_mark,id\n" + rows)
    return path


async def ended(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """Wait for a run to end; its exit code and output (never the password or the key)."""
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    text = out.decode() + err.decode()
    assert PASSWORD not in text
    assert process.returncode is not None
    return process.returncode, text


async def run_bulk(fake: FakeProvider, jobs: Path, out: Path, *extra: str) -> tuple[int, str]:
    """One ``midvary bulk`` run to its end."""
    return await ended(await start(fake, jobs, "--out", str(out), *extra))


async def two_runs(
    fake: FakeProvider, jobs: Path, directory: Path, *extra: str
) -> tuple[tuple[int, str], tuple[int, str]]:
    """Two runs started together, results in ``a.jsonl`` and ``b.jsonl``; both to their end."""
    first = await start(fake, jobs, "--out", str(directory / "a.jsonl"), *extra)
    second = await start(fake, jobs, "--out", str(directory / "b.jsonl"), *extra)
    return await asyncio.gather(ended(first), ended(second))


def lines_by_id(path: Path) -> dict[str, str]:
    """The results file's last line per job, as raw JSON text."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        found[json.loads(line)["id"]] = line
    return found


async def test_two_runs_split_the_work_and_a_third_submits_nothing(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Two runs on one store submit each job once between them; a third only writes lines."""
    count = 24
    jobs = write_jobs(tmp_path / "jobs.csv", count)
    store = ("--store", redis.url, *LEASE, "--concurrency", "3")
    async with provider(task_duration=(0.6, 1.0), submit_limit=None) as fake:
        (code_a, out_a), (code_b, out_b) = await two_runs(fake, jobs, tmp_path, *store)
        assert (code_a, code_b) == (0, 0), out_a + out_b
        assert fake.stats.requests["submit"] == fake.stats.tasks_created == count
        assert fake.stats.duplicate_submissions == 0
        ran = [summary_count(out, "ended in this run") for out in (out_a, out_b)]
        assert sum(ran) == count
        assert min(ran) >= 1, ran  # both runs took part
        a, b = lines_by_id(tmp_path / "a.jsonl"), lines_by_id(tmp_path / "b.jsonl")
        for lines, took in ((a, ran[0]), (b, ran[1])):
            assert len(lines) >= took
            assert {json.loads(line)["status"] for line in lines.values()} == {"done"}
        assert set(a) | set(b) == {f"job-{n}" for n in range(count)}
        # Each task belongs to the one job that submitted it, whichever run wrote the line.
        tasks = {key: json.loads(line)["task_id"] for key, line in (a | b).items()}
        assert len(set(tasks.values())) == count
        assert set(tasks.values()) == set(fake.tasks)

        code, output = await run_bulk(fake, jobs, tmp_path / "c.jsonl", *store)
        assert code == 0, output
        assert fake.stats.requests["submit"] == count
        assert summary_count(output, "ended in this run") == 0
        assert summary_count(output, "skipped (finished earlier)") == count
        assert lines_by_id(tmp_path / "c.jsonl") == a | b
        assert "***" in output  # the store is named, its password redacted


async def test_a_killed_run_leaves_its_jobs_to_a_later_run(
    tmp_path: Path, redis: RedisServer
) -> None:
    """SIGKILL mid-run: a later run re-attaches its submitted jobs, its POST in flight uncertain."""
    count = 8
    jobs = write_jobs(tmp_path / "jobs.csv", count)
    # One submission a second, so the kill finds some jobs submitted and one POST hanging.
    store = ("--store", redis.url, "--claim-lease", "2", "-v")
    clock = SkippingClock()
    async with (
        provider(task_duration=(20.0, 21.0), submit_limit=None, clock=clock) as fake,
        midvary.RedisStore(redis.url) as view,
    ):

        async def submission_states() -> dict[str, str]:
            return {
                job.key.rpartition("/")[2]: job.state
                for job in await view.unfinished()
                if not job.key.startswith("bulk/")
            }

        process = await start(
            fake, jobs, "--out", str(tmp_path / "a.jsonl"), *store, "--submit-rate", "1", "1"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while fake.stats.tasks_created < 2:
            assert loop.time() < deadline, "the first run never submitted two jobs"
            await asyncio.sleep(0.01)
        fake.update(latency=30.0)  # the next POST hangs
        # In flight: marked sending in the store, and arrived at the fake, which holds it (a
        # key is marked sending just before its POST leaves, so the mark alone comes first).
        while "sending" not in (states := await submission_states()).values() or (
            fake.stats.requests["submit"] <= fake.stats.tasks_created
        ):
            assert loop.time() < deadline, f"no POST in flight: {states}"
            await asyncio.sleep(0.01)
        process.kill()
        await process.communicate()
        states = await submission_states()
        submitted = {key for key, state in states.items() if state == "submitted"}
        cut = {key for key, state in states.items() if state == "sending"}
        assert len(submitted) >= 2
        assert len(cut) == 1
        fake.update(latency=0.0, task_duration=(0.2, 0.4))
        clock.skipped = 21.0  # the first run's tasks end now: the later run need not wait

        code, output = await run_bulk(
            fake, jobs, tmp_path / "b.jsonl", *store, "--submit-rate", "1000", "1"
        )
        assert code == 1, output  # the cut POST is uncertain
        assert summary_count(output, "re-attached by task id") == len(submitted)
        lines = {key: json.loads(line) for key, line in lines_by_id(tmp_path / "b.jsonl").items()}
        assert len(lines) == count
        assert {key for key, line in lines.items() if line["status"] == "uncertain"} == cut
        assert {line["status"] for key, line in lines.items() if key not in cut} == {"done"}
        assert fake.stats.duplicate_submissions == 0
        # Every POST but the cut one made one task; the cut one was never sent again.
        assert fake.stats.requests["submit"] == count
        assert fake.stats.tasks_created <= count


async def test_chained_rows_split_between_runs_with_children_keyed_from_the_parent(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Generate rows with ``then`` on a store: every row and child submitted once, by any run."""
    jobs = tmp_path / "chain.csv"
    rows = "".join(f"generate,{prompt},{THEN},row-{n}\n" for n, prompt in enumerate(PROMPTS))
    jobs.write_text("action,prompt,then,id\n" + rows)
    total = len(PROMPTS) * 6
    store = ("--store", redis.url, *LEASE, "--concurrency", "2")
    async with provider(task_duration=(0.3, 0.6), submit_limit=None) as fake:
        (code_a, out_a), (code_b, out_b) = await two_runs(fake, jobs, tmp_path, *store)
        assert (code_a, code_b) == (0, 0), out_a + out_b
        assert fake.stats.tasks_created == total
        assert fake.stats.duplicate_submissions == 0
        ran = [summary_count(out, "ended in this run") for out in (out_a, out_b)]
        assert sum(ran) == total
        both = lines_by_id(tmp_path / "a.jsonl") | lines_by_id(tmp_path / "b.jsonl")
        lines = {key: json.loads(line) for key, line in both.items()}
        assert len(lines) == total
        assert {line["status"] for line in lines.values()} == {"done"}
        for key, line in lines.items():
            if "parent" in line:  # a child: made from its parent's task
                assert key.startswith(line["parent"] + "/")
                assert line["parent_task_id"] == lines[line["parent"]]["task_id"]

        code, output = await run_bulk(fake, jobs, tmp_path / "c.jsonl", *store)
        assert code == 0, output
        assert fake.stats.tasks_created == total
        assert lines_by_id(tmp_path / "c.jsonl") == both


async def test_a_local_store_path_shares_the_jobs_between_processes(tmp_path: Path) -> None:
    """``--store PATH`` (SQLite): two processes on one machine split the jobs the same way."""
    count = 12
    jobs = write_jobs(tmp_path / "jobs.csv", count)
    store = ("--store", str(tmp_path / "shared.sqlite"), *LEASE, "--concurrency", "3")
    async with provider(task_duration=(0.5, 0.8), submit_limit=None) as fake:
        (code_a, out_a), (code_b, out_b) = await two_runs(fake, jobs, tmp_path, *store)
        assert (code_a, code_b) == (0, 0), out_a + out_b
        assert fake.stats.requests["submit"] == fake.stats.tasks_created == count
        assert fake.stats.duplicate_submissions == 0
        ran = [summary_count(out, "ended in this run") for out in (out_a, out_b)]
        assert sum(ran) == count


@pytest.mark.parametrize("where", ["argv", "env"])
async def test_store_errors_never_show_the_password(tmp_path: Path, where: str) -> None:
    """An unreachable store (--store or MIDVARY_STORE_URL) is a usage error, no password."""
    jobs = write_jobs(tmp_path / "jobs.csv", 2)
    url = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    async with provider() as fake:
        env = environment(fake)
        if where == "env":
            env["MIDVARY_STORE_URL"] = url
        process = await asyncio.create_subprocess_exec(
            *midvary_command(),
            "bulk",
            str(jobs),
            *(("--store", url) if where == "argv" else ()),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        code, output = await ended(process)
        assert code == 2, output
        assert "cannot use the store" in output
        assert "127.0.0.1:1" in output
        assert fake.stats.requests["submit"] == 0


async def test_a_job_id_too_long_for_the_store_keys_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    """With --store a job id is prefixed with the JOBS hash: one too long stops the run at once.

    The longest id that fits (1024 less ``bulk/<sha256>/``) runs.
    """
    longest = 1024 - len(f"bulk/{'0' * 64}/")
    store = ("--store", str(tmp_path / "shared.sqlite"), *LEASE)
    async with provider(submit_limit=None) as fake:
        for size, expected in ((longest + 1, 2), (longest, 0)):
            jobs = tmp_path / f"jobs-{size}.csv"
            jobs.write_text(
                f"task_id,image_index,water_mark,id\nparent-0,0,,short\nparent-1,1,,{'x' * size}\n"
            )
            code, output = await ended(await start(fake, jobs, *store))
            assert code == expected, output
            if expected:
                assert f"jobs-{size}.csv:3: a job's key is at most {longest}" in output
                assert "no job was run" in output
                assert fake.stats.requests["submit"] == 0
        assert fake.stats.requests["submit"] == fake.stats.tasks_created == 2
