"""The CLI as a newcomer meets it (issue 14): JOBS files, re-runs, messages, the gallery."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from midvary._cli import main
from midvary._cli.jobs import read_jobs
from midvary.testing import FakeProvider, FakeSettings

from .bulk_support import job_states, store_path
from .test_cli import cli, provider, read_results, write_csv


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the JOBS file ---------------------------------------------------------------------------


async def test_a_byte_that_is_not_utf8_spoils_only_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One non-UTF-8 byte in a CSV: that row is reported by its line; the others run."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_bytes(
        b"task_id,image_index,water_mark,id\n"
        b"parent-a,0,,\n"
        b"parent-b,1,caf\xe9,\n"  # Latin-1, not UTF-8
        b"parent-c,2,,\n"
    )
    async with provider(monkeypatch):
        assert await cli("bulk", str(jobs)) == 1
    err = capsys.readouterr().err
    assert "jobs.csv:3: byte 0xe9 is not UTF-8" in err
    results = read_results(tmp_path / "jobs.csv.results.jsonl")
    assert sorted((r["line"], r["status"]) for r in results) == [(2, "done"), (4, "done")]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("jobs.csv", "task_id,image_index,watermark\nparent-a,0,x\n"),
        (
            "jobs.jsonl",
            '{"task_id": "parent-a", "image_index": 0}\n'
            '{"task_id": "parent-a", "image_index": 1, "watermark": "x"}\n',
        ),
    ],
)
def test_an_unknown_column_is_refused_with_the_allowed_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str
) -> None:
    """A misspelt column (watermark) exits 2 naming the allowed ones; nothing is stored."""
    jobs = tmp_path / name
    jobs.write_text(content)
    assert main(["--api-key", "k", "bulk", str(jobs)]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err
    assert "'watermark'" in err
    assert "task_id, image_index, water_mark, id" in err
    assert not store_path(jobs).exists()


async def test_a_repeated_row_runs_and_is_warned_about_with_both_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two identical rows: a warning names lines 4 and 2; both are submitted."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a,0,,", "parent-b,1,,", "parent-a,0,,"])
    async with provider(monkeypatch) as fake:
        assert await cli("bulk", str(jobs)) == 0
        assert fake.stats.requests["submit"] == 3
    err = capsys.readouterr().err
    assert "jobs.csv:4 repeats line 2" in err


@pytest.mark.parametrize(("value", "ok"), [(2, True), ("2", False), (2.0, False), (True, False)])
def test_jsonl_image_index_is_a_json_integer_only(tmp_path: Path, value: object, ok: bool) -> None:
    """JSONL image_index: 2 is a job; "2", 2.0 and true are bad rows saying why."""
    from midvary._cli.jobs import read_jobs  # noqa: PLC0415 - the reader under test

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"task_id": "parent-a", "image_index": value}) + "\n")
    read = read_jobs(jobs)
    assert len(read.jobs) == int(ok)
    if not ok:
        (bad,) = read.bad_rows
        assert "jobs.jsonl:1: image_index" in bad


def test_csv_image_index_is_digits(tmp_path: Path) -> None:
    """CSV image_index: digits (spaces around allowed) are a job; 1.0 is a bad row."""
    from midvary._cli.jobs import read_jobs  # noqa: PLC0415 - the reader under test

    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a, 2 ,,", "parent-b,1.0,,"])
    read = read_jobs(jobs)
    assert [job.request.image_index for job in read.jobs] == [2]
    (bad,) = read.bad_rows
    assert "jobs.csv:3: image_index must be a whole number" in bad


# -- re-runs -------------------------------------------------------------------------------


async def test_a_rerun_keeps_the_real_reason_of_an_uncertain_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job whose answer was lost in a run that ended normally is not said to be in flight."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a,0,,"])
    async with provider(monkeypatch, drop_submit_answer_rate=1.0):
        assert await cli("bulk", str(jobs)) == 1
        capsys.readouterr()
        assert await cli("bulk", str(jobs)) == 1
    out = capsys.readouterr().out
    assert "in flight when an earlier run stopped" not in out
    assert "SubmitUncertainError" in out
    assert "earlier run" in out


async def test_retry_failed_resubmits_jobs_whose_task_failed_never_uncertain_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--retry-failed submits failed tasks' jobs again (once each), never the uncertain one."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a,0,,", "parent-b,1,,"])
    store = store_path(jobs)
    async with provider(monkeypatch, failure_rate=1.0) as fake:
        assert await cli("bulk", str(jobs)) == 1
        assert set(job_states(store).values()) == {"failed"}
        fake.update(failure_rate=0.0, drop_submit_answer_rate=1.0)
        # Without the flag, failed jobs are skipped: nothing is sent.
        assert await cli("bulk", str(jobs)) == 1
        assert fake.stats.requests["submit"] == 2
        # The first retry loses its answers: those jobs are uncertain now, and stay so.
        assert await cli("bulk", str(jobs), "--retry-failed") == 1
        assert fake.stats.requests["submit"] == 4
        assert set(job_states(store).values()) == {"uncertain"}
        fake.update(drop_submit_answer_rate=0.0)
        assert await cli("bulk", str(jobs), "--retry-failed") == 1
        assert fake.stats.requests["submit"] == 4


async def test_retry_failed_runs_failed_jobs_to_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed task's job, retried once the provider is healthy, ends done."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a,0,,"])
    async with provider(monkeypatch, failure_rate=1.0) as fake:
        assert await cli("bulk", str(jobs)) == 1
        fake.update(failure_rate=0.0)
        assert await cli("bulk", str(jobs), "--retry-failed") == 0
    results = read_results(tmp_path / "jobs.csv.results.jsonl")
    assert [r["status"] for r in results] == ["failed", "done"]


# -- messages in the CLI's words -----------------------------------------------------------


def test_a_missing_key_names_the_option_and_variables_and_leaves_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key: exit 2 saying --api-key / MIDVARY_API_KEY / KIE_API_KEY; bulk writes nothing."""
    for name in ("MIDVARY_API_KEY", "KIE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a,0,,"])
    assert main(["bulk", str(jobs)]) == 2
    assert main(["status", "some-task"]) == 2
    err = capsys.readouterr().err
    assert err.count("pass --api-key KEY, or set MIDVARY_API_KEY (or KIE_API_KEY)") == 2
    assert "Session(" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["jobs.csv"]


def test_a_timeout_says_how_to_reattach_and_that_the_provider_was_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`midvary wait` against a refused port: the timeout names `midvary wait ID` and the outage."""
    base = f"http://127.0.0.1:{closed_port()}"
    code = main(["--api-key", "k", "--base-url", base, "wait", "abc", "--timeout", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "re-attach it with `midvary wait abc`" in err
    assert "session.task()" not in err
    assert "the provider was unreachable for the last" in err


async def test_a_base_url_with_a_path_says_what_a_base_url_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--base-url with /api/v1: the 404 comes with what the base URL should be."""
    async with provider(monkeypatch) as fake:
        code = await cli("--base-url", fake.base_url + "/api/v1", "status", "fakeabc")
    assert code == 1
    err = capsys.readouterr().err
    assert "the base URL has the path '/api/v1'" in err
    assert "https://api.kie.ai" in err


@pytest.mark.parametrize("extra", [("--download", "images"), ("--timeout", "5")])
def test_no_wait_with_download_or_timeout_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], extra: tuple[str, str]
) -> None:
    """A `vary --no-wait` with --download or --timeout exits 2 before any request."""
    assert main(["--api-key", "k", "vary", "parent-a", "0", "--no-wait", *extra]) == 2
    assert f"--no-wait does not wait, so {extra[0]}" in capsys.readouterr().err


async def test_submit_rate_none_turns_the_client_limit_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bulk --submit-rate none` is accepted and runs the jobs."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-a,0,,"])
    async with provider(monkeypatch):
        assert await cli("bulk", str(jobs), "--submit-rate", "none") == 0
    assert await cli("--api-key", "k", "bulk", str(jobs), "--submit-rate", "5") == 2


# -- the gallery ---------------------------------------------------------------------------


async def test_bulk_gallery_writes_the_page_beside_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `bulk --gallery`: RESULTS.html next to the results, with the downloaded images."""
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "jobs.csv", ["parent-a,0,<b>wm</b>,", "parent-a,1,,"])
    async with provider(monkeypatch):
        code = await cli("bulk", "jobs.csv", "--download", "img", "--gallery")
    assert code == 0
    page = tmp_path / "jobs.csv.results.html"
    assert f"gallery: {page.name} (2 jobs)" in capsys.readouterr().out
    html = page.read_text()
    assert html.count('loading="lazy"') == 8
    assert 'src="img/' in html
    assert "<b>wm</b>" not in html


def test_gallery_command_writes_the_page_and_warns_about_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`midvary gallery RESULTS` --out: writes the page, says where, warns about a bad line."""
    results = tmp_path / "r.jsonl"
    # A line in the format before issue 18 (the parent in task_id): still read.
    line = {"id": "j1", "task_id": "parent-a", "image_index": 0, "status": "done",
            "vary_task_id": "t1", "image_urls": [], "files": [], "error": None}  # fmt: skip
    results.write_text(json.dumps(line) + "\n{broken\n")
    out = tmp_path / "site" / "page.html"
    assert main(["gallery", str(results), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"gallery: {out} (1 jobs)" in captured.out
    assert f"{results}:2:" in captured.err
    assert "parent-a" in out.read_text()
    assert main(["gallery", str(tmp_path / "missing.jsonl")]) == 2


async def test_status_right_after_no_wait_says_not_visible_yet_and_wait_tolerates_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A task still invisible: `status` says so (exit 0, with the wait hint); `wait` waits."""
    async with provider(monkeypatch, invisible_for=2.0) as fake:
        assert await cli("vary", fake.sample_parent_id, "0", "--no-wait") == 0
        task_id = capsys.readouterr().out.strip()
        assert await cli("status", task_id) == 0
        out, err = capsys.readouterr()
        assert "submitted, not visible yet" in out
        assert f"midvary wait {task_id}" in err
        assert await cli("status", task_id, "--json") == 0
        assert json.loads(capsys.readouterr().out) == {
            "task_id": task_id,
            "status": "NOT_VISIBLE_YET",
        }
        assert await cli("wait", task_id) == 0
        assert "status   SUCCESS" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("jobs.csv", ""),
        ("jobs.csv", "task_id,image_index\n"),
        ("jobs.jsonl", ""),
        ("jobs.jsonl", "\n"),
    ],
    ids=["empty-csv", "header-only-csv", "empty-jsonl", "blank-jsonl"],
)
def test_a_file_without_jobs_is_a_usage_error_that_creates_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str,
) -> None:
    """No rows: "no jobs in FILE", exit 2, and no journal, store or results file."""
    monkeypatch.setenv("MIDVARY_API_KEY", "sk-unused")
    jobs = tmp_path / name
    jobs.write_text(content)
    assert main(["bulk", str(jobs)]) == 2
    assert f"no jobs in {jobs}" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]


def test_gallery_of_a_jobs_file_names_the_results_file_it_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`midvary gallery jobs.csv`: exit 2, no page, and the results file's name."""
    jobs = write_csv(tmp_path / "jobs.csv", ["parent-1,0,,", "parent-1,1,,"])
    assert main(["gallery", str(jobs)]) == 2
    err = capsys.readouterr().err
    assert "is not a results file" in err
    assert f"{jobs}.results.jsonl" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["jobs.csv"]


async def test_ctrl_c_while_waiting_names_the_task_and_how_to_reattach() -> None:
    """SIGINT during `midvary vary`'s wait: exit 130, the task id and `midvary wait ID`."""
    async with FakeProvider(settings=FakeSettings(task_duration=(30.0, 30.0)), seed=3) as fake:
        env = {k: v for k, v in os.environ.items() if k not in ("KIE_API_KEY",)}
        env.update(MIDVARY_API_KEY=fake.api_key, MIDVARY_BASE_URL=fake.base_url, CI="true")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "midvary", "vary", fake.sample_parent_id, "0",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        async with asyncio.timeout(30):
            line = (await process.stderr.readline()).decode()
        assert line.startswith("submitted "), line
        task_id = line.split()[1]
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _out, err = await process.communicate()
    assert process.returncode == 130
    assert f"task {task_id} was submitted" in err.decode()
    assert f"`midvary wait {task_id}`" in err.decode()
    assert fake.api_key not in err.decode()


async def test_failures_are_listed_in_line_order_with_the_way_to_retry_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Failures are listed in the JOBS file's line order, with how to send them again."""
    rows = [f"parent-{letter},{index},," for letter in "abc" for index in range(3)]
    jobs = write_csv(tmp_path / "jobs.csv", rows)
    async with provider(monkeypatch, failure_rate=1.0, task_duration=(0.01, 0.3)):
        for _run in range(2):
            assert await cli("bulk", str(jobs)) == 1
            out = capsys.readouterr().out
            table = out.split("jobs that did not succeed", 1)[1]
            lines = [int(match) for match in re.findall(r"^\W*(\d+)\s*│", table, re.MULTILINE)]
            assert lines == list(range(2, 2 + len(rows))), table
            assert "the same command with --retry-failed" in out


def test_a_generate_column_on_a_vary_row_is_a_bad_row_named_by_its_line(tmp_path: Path) -> None:
    """A prompt on a vary row would be sent nowhere: the row is refused, with its line."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("task_id,image_index,prompt\nparent-1,0,a red fox\nparent-1,1,\n")
    read = read_jobs(jobs)
    assert [job.line for job in read.jobs] == [3]
    assert read.bad_rows == (f"{jobs}:2: prompt is only for generate rows, not vary",)
