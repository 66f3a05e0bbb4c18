"""``midvary bulk JOBS``: run every vary job of a CSV or JSONL file, crash-safely.

Flow: read and check the JOBS file (bad rows are reported with their line number and
skipped), open the journal (:mod:`midvary._cli.journal`), decide per job whether to skip it
(finished earlier), re-attach it (submitted earlier), report it uncertain (its POST was in
flight when an earlier run stopped) or run it; then run the jobs through
``Session.vary_many`` with a live progress display, journaling each step before it matters,
append one JSON line per finished job to the results file, and print a summary.

Writes go journal first, results file second: if a run dies between the two, the next run
appends the line the journal kept. A results file may thus hold a second line for a job
only when an uncertain job was later re-submitted (``--resubmit-uncertain``): the last line
of a job wins.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

import midvary

from ._kit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    add_command,
    error_json,
    open_session,
    positive_float,
    positive_int,
    record_json,
    require_rich,
    say,
)
from .journal import JobState, Journal, JournalBusyError, JournalMismatchError

if TYPE_CHECKING:
    from rich.table import Table

logger = logging.getLogger(__name__)

_HELP: Final = """\
JOBS is a CSV file with a header row, or a JSONL file (one JSON object a line), with the
columns task_id (the parent task) and image_index (0..3), and optionally water_mark and id.

Re-running the same command resumes: finished jobs are skipped, submitted jobs are awaited
by task id and never submitted again, and jobs whose submission was in flight when the run
stopped are reported as uncertain (re-submitted only with --resubmit-uncertain).

exit codes: 0 every job succeeded; 1 some job failed, is uncertain, or a row was bad;
2 usage error; 130 interrupted (run again to resume).
"""


def add_bulk_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``midvary bulk JOBS``: run many jobs with progress, a journal and a results file."""
    parser = add_command(
        subparsers,
        "bulk",
        _bulk,
        help="run every vary job of a CSV or JSONL file (resumable)",
        description="Run every vary job of a CSV or JSONL file (resumable).\n\n" + _HELP,
    )
    parser.add_argument("jobs", metavar="JOBS", type=Path, help="the jobs file (.csv or .jsonl)")
    parser.add_argument(
        "--out", type=Path, metavar="PATH", help="results, one JSON line a job (JOBS.results.jsonl)"
    )
    parser.add_argument("--download", type=Path, metavar="DIR", help="download images into DIR")
    parser.add_argument(
        "--concurrency", type=positive_int, default=16, metavar="N", help="jobs in flight (16)"
    )
    parser.add_argument(
        "--timeout", type=positive_float, metavar="S", help="seconds each job may wait (900)"
    )
    parser.add_argument(
        "--submit-rate",
        nargs=2,
        metavar=("N", "WINDOW"),
        default=("20", "10"),
        help="at most N submissions per WINDOW seconds (20 10: the provider's limit)",
    )
    parser.add_argument(
        "--journal", type=Path, metavar="PATH", help="the journal (JOBS.journal.sqlite)"
    )
    parser.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit again the jobs whose earlier submission may or may not have been accepted "
        "(each may then be billed twice)",
    )


# -- the JOBS file ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BulkJob:
    """One valid row of the JOBS file."""

    key: str
    line: int
    content: str
    request: midvary.VaryRequest


@attrs.frozen(kw_only=True)
class JobsFile:
    """The JOBS file read: its valid jobs, its bad rows, and its hash."""

    jobs: tuple[BulkJob, ...]
    bad_rows: tuple[str, ...]
    sha256: str


def _rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """``(line number, row)`` pairs; a row is a dict, or an error message."""
    stripped = text.lstrip()
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json") or (
        path.suffix.lower() != ".csv" and stripped.startswith("{")
    )
    if jsonl:
        # Only "\n" ends a JSON line: str.splitlines() would also split at U+2028, U+0085
        # and others, which json.dumps(ensure_ascii=False) leaves raw inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                yield number, f"not valid JSON ({exc})"
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [name.strip().lower() for name in reader.fieldnames or ()]
    if "task_id" not in fields or "image_index" not in fields:
        raise UsageError(
            f"{path}: the CSV header must name task_id and image_index (found: {fields or 'none'})"
        )
    reader.fieldnames = fields
    rows = iter(reader)
    failed_at = None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            # The reader goes on with the next row (DictReader's own line_num is stale here);
            # an error that does not move it on ends the file rather than loop.
            if reader.reader.line_num == failed_at:
                return
            failed_at = reader.reader.line_num
            yield failed_at, f"unreadable CSV ({exc})"
            continue
        yield reader.line_num, row


def _request(row: object) -> midvary.VaryRequest:
    if not isinstance(row, dict):
        raise TypeError(f"expected an object with task_id and image_index, got {row!r:.60}")
    task_id = row.get("task_id")
    if task_id is None or task_id == "":
        raise ValueError("task_id is missing")
    index = row.get("image_index")
    if isinstance(index, str) and index.strip().lstrip("-").isdigit():
        index = int(index)
    if index is None or index == "":
        raise ValueError("image_index is missing")
    water_mark = row.get("water_mark") or None
    job_id = row.get("id")
    job_id = str(job_id).strip() if job_id not in (None, "") else None
    return midvary.VaryRequest(
        task_id=task_id.strip() if isinstance(task_id, str) else task_id,
        image_index=index,
        water_mark=water_mark,
        id=job_id,
    )


def read_jobs(path: Path) -> JobsFile:
    """Read and check the JOBS file.

    Raises:
        UsageError: The file cannot be read, or a CSV file has no usable header.

    """
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    jobs: list[BulkJob] = []
    bad: list[str] = []
    ids: dict[str, int] = {}
    occurrences: dict[str, int] = {}
    for line, row in _rows(path, text):
        if isinstance(row, str):
            bad.append(f"{path}:{line}: {row}")
            continue
        try:
            request = _request(row)
        except (TypeError, ValueError) as exc:
            bad.append(f"{path}:{line}: {exc}")
            continue
        content = hashlib.sha256(
            json.dumps([request.task_id, request.image_index, request.water_mark]).encode()
        ).hexdigest()[:16]
        if request.id is not None:
            if request.id in ids:
                bad.append(
                    f"{path}:{line}: id {request.id!r} was already used on line {ids[request.id]}"
                )
                continue
            ids[request.id] = line
            key = request.id
        else:
            # Identical rows are distinct jobs: number their occurrences.
            occurrences[content] = occurrences.get(content, 0) + 1
            key = f"{content}#{occurrences[content]}"
        jobs.append(BulkJob(key=key, line=line, content=content, request=request))
    return JobsFile(jobs=tuple(jobs), bad_rows=tuple(bad), sha256=hashlib.sha256(raw).hexdigest())


# -- the results file --------------------------------------------------------------------


class ResultsFile:
    """The append-only results file: one JSON line per finished job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, str] = {}
        if path.exists():
            self._repair()
        self._file = path.open("a", encoding="utf-8")

    def _repair(self) -> None:
        """Drop a line cut by a crash; remember each job's last line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("dropping a results line cut by a crash in %s", self.path)
            with self.path.open("r+b") as file:
                file.truncate(keep)
            data = data[:keep]
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                key = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if isinstance(key, str):
                self._last[key] = line

    def ensure(self, results: dict[str, str]) -> int:
        """Append every journaled result line this file lacks; return how many."""
        missing = [line for key, line in results.items() if self._last.get(key) != line]
        for line in missing:
            self.write(json.loads(line)["id"], line)
        return len(missing)

    def write(self, key: str, line: str) -> None:
        """Append ``line`` (the result of job ``key``)."""
        self._file.write(line + "\n")
        self._file.flush()
        self._last[key] = line

    def close(self) -> None:
        """Flush the file to disk and close it."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def result_line(
    job: BulkJob,
    status: str,
    *,
    task_id: str | None = None,
    record: midvary.TaskRecord | None = None,
    error: BaseException | None = None,
    paths: Sequence[Path] = (),
) -> str:
    """The JSON line of one finished job."""
    data: dict[str, Any] = {
        "id": job.key,
        "line": job.line,
        "task_id": job.request.task_id,
        "image_index": job.request.image_index,
        "water_mark": job.request.water_mark,
        "status": status,
        "vary_task_id": task_id,
        "image_urls": list(record.image_urls) if record is not None else [],
        "files": [str(path) for path in paths],
        "error": error_json(error) if error is not None else None,
    }
    if isinstance(error, midvary.TaskFailedError):
        data["record"] = record_json(error.record)
    return json.dumps(data, ensure_ascii=False)


class UncertainAtResumeError(midvary.MidvaryError):
    """The job's submission was in flight when an earlier run stopped."""


# -- progress ----------------------------------------------------------------------------


class Progress:
    """Counters fed by job events, drawn live by rich on a terminal, as plain lines if not.

    ``label`` names the command in the bar and in the plain lines (``bulk``, ``demo``).
    """

    def __init__(self, total: int, *, done: int = 0, failed: int = 0, label: str = "bulk") -> None:
        from rich.console import Console  # noqa: PLC0415 - rich is optional
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress  # noqa: PLC0415

        self.console = Console(stderr=True)
        self.label = label
        self.total = total
        self.submitted = 0
        self.running: set[int] = set()
        self.done = done
        self.failed = failed
        self.uncertain = 0
        self.rate_limited = 0
        self._live = self.console.is_terminal
        self._bar = RichProgress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self._live,
        )
        self._task = self._bar.add_task(label, total=total, counts=self.counts())
        self._step = max(1, total // 10)
        self._next_line = self._step
        self._printed = -1

    @property
    def finished(self) -> int:
        """Jobs finished, this run and earlier."""
        return self.done + self.failed + self.uncertain

    def counts(self) -> str:
        """The counters as one line of text."""
        return (
            f"submitted {self.submitted} · running {len(self.running)} · done {self.done} · "
            f"failed {self.failed} · "
            + (f"uncertain {self.uncertain} · " if self.uncertain else "")
            + f"rate-limited waits {self.rate_limited}"
        )

    def __enter__(self) -> Progress:
        self._bar.start()
        self._refresh()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._refresh()
        self._bar.stop()
        if not self._live and self._printed != self.finished:
            self._print_line()

    def _print_line(self) -> None:
        """One plain progress line, for logs (no terminal)."""
        self._printed = self.finished
        self.console.print(
            f"{self.label}: {self.finished}/{self.total} finished; {self.counts()}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def _refresh(self) -> None:
        self._bar.update(self._task, completed=self.finished, counts=self.counts())

    def event(self, event: midvary.JobEvent) -> None:
        """Count one job event."""
        kind = event.kind
        if kind is midvary.JobEventKind.SUBMITTED:
            self.submitted += 1
            self.running.add(event.index)
        elif kind is midvary.JobEventKind.RATE_LIMITED:
            self.rate_limited += 1
        elif kind in (midvary.JobEventKind.DONE, midvary.JobEventKind.FAILED):
            self.running.discard(event.index)
        self._refresh()

    def ended(self, ok: bool, message: str | None = None, *, uncertain: bool = False) -> None:
        """Count one finished job; ``message`` describes a failure (or an uncertain job)."""
        if ok:
            self.done += 1
        else:
            if uncertain:
                self.uncertain += 1
            else:
                self.failed += 1
            if message is not None:
                self.console.print(message, markup=False, highlight=False, soft_wrap=True)
        self._refresh()
        if not self._live and self.finished >= self._next_line:
            self._next_line += self._step
            self._print_line()


# -- the command -------------------------------------------------------------------------


@attrs.define
class Summary:
    """What one bulk run did, for the table and the exit code."""

    total: int = 0
    done: int = 0
    failed: int = 0
    uncertain: int = 0
    skipped: int = 0
    reattached: int = 0
    resubmitted: int = 0
    bad_rows: int = 0
    rate_limited_waits: int = 0
    problems: list[tuple[BulkJob, str, str]] = attrs.field(factory=list)


def _submit_rate(values: Sequence[str]) -> tuple[int, float]:
    try:
        return int(values[0]), positive_float(values[1])
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise UsageError(f"--submit-rate takes N WINDOW, e.g. 20 10 ({exc})") from None


def _bulk(args: argparse.Namespace) -> int:
    require_rich()
    jobs_path: Path = args.jobs
    out_path: Path = args.out or jobs_path.with_name(jobs_path.name + ".results.jsonl")
    journal_path: Path = args.journal or jobs_path.with_name(jobs_path.name + ".journal.sqlite")
    rate = _submit_rate(args.submit_rate)
    jobs_file = read_jobs(jobs_path)
    for message in jobs_file.bad_rows:
        say(f"bad row skipped: {message}", stream=sys.stderr)
    try:
        journal = Journal(journal_path)
    except JournalBusyError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # sqlite3.Error, OSError, JournalMismatchError: not usable
        raise UsageError(f"cannot open journal {journal_path}: {exc}") from None
    try:
        try:
            view, warnings = journal.register(
                jobs_path.name,
                jobs_file.sha256,
                ((job.key, job.line, job.content) for job in jobs_file.jobs),
            )
        except JournalMismatchError as exc:
            raise UsageError(str(exc)) from None
        for warning in warnings:
            say(f"warning: {warning}", stream=sys.stderr)
        results = ResultsFile(out_path)
        try:
            summary = Summary(total=len(jobs_file.jobs), bad_rows=len(jobs_file.bad_rows))
            repaired = results.ensure(dict(journal.results()))
            if repaired:
                logger.info("appended %d result lines the journal kept to %s", repaired, out_path)
            try:
                asyncio.run(
                    _run(
                        args,
                        rate=rate,
                        jobs_file=jobs_file,
                        view=view,
                        journal=journal,
                        results=results,
                        summary=summary,
                    )
                )
            except KeyboardInterrupt:
                say(
                    "interrupted: the journal is up to date; run the same command again to "
                    "resume (submitted jobs are awaited, never submitted twice)",
                    stream=sys.stderr,
                )
                return EXIT_INTERRUPTED
        finally:
            results.close()
    finally:
        journal.close()
    _print_summary(summary, out_path, journal_path)
    if summary.failed or summary.uncertain or summary.bad_rows:
        return EXIT_FAILED
    return EXIT_OK


async def _run(
    args: argparse.Namespace,
    *,
    rate: tuple[int, float],
    jobs_file: JobsFile,
    view: dict[str, Any],
    journal: Journal,
    results: ResultsFile,
    summary: Summary,
) -> None:
    async with open_session(args, submit_rate=rate) as session:
        to_run: list[BulkJob] = []
        items: list[midvary.VaryRequest | midvary.TaskHandle] = []
        for job in jobs_file.jobs:
            known = view[job.key]
            state: JobState = known.state
            if state.finished:
                summary.skipped += 1
                if state is JobState.DONE:
                    summary.done += 1
                else:
                    summary.failed += 1
                    summary.problems.append((job, "failed", _journaled_error(known.result)))
            elif state is JobState.SUBMITTED and known.task_id:
                summary.reattached += 1
                to_run.append(job)
                items.append(session.task(known.task_id))
            elif state in (JobState.SUBMITTING, JobState.UNCERTAIN):
                if args.resubmit_uncertain:
                    summary.resubmitted += 1
                    to_run.append(job)
                    items.append(job.request)
                    continue
                summary.uncertain += 1
                message = (
                    "its submission was in flight when an earlier run stopped: the task may "
                    "exist and be billed; check the provider's dashboard, or run again with "
                    "--resubmit-uncertain"
                )
                summary.problems.append((job, "uncertain", message))
                if state is JobState.SUBMITTING:
                    line = result_line(job, "uncertain", error=UncertainAtResumeError(message))
                    journal.finished(job.key, JobState.UNCERTAIN, None, line)
                    results.write(job.key, line)
            else:
                to_run.append(job)
                items.append(job.request)

        progress = Progress(len(jobs_file.jobs), done=summary.done, failed=summary.failed)
        progress.running.update(
            n for n, item in enumerate(items) if isinstance(item, midvary.TaskHandle)
        )

        def on_event(event: midvary.JobEvent) -> None:
            job = to_run[event.index]
            if event.kind is midvary.JobEventKind.SUBMITTING:
                journal.submitting(job.key)  # durable before the POST is sent
            elif event.kind is midvary.JobEventKind.SUBMITTED and event.task_id is not None:
                journal.submitted(job.key, event.task_id)
            elif event.kind is midvary.JobEventKind.RATE_LIMITED and event.error is not None:
                # Refused with 429: certainly not accepted, so not uncertain if we die now.
                journal.refused(job.key)
            progress.event(event)

        with progress:
            async with session.vary_many(
                items,
                concurrency=args.concurrency,
                timeout=args.timeout if args.timeout is not None else midvary.USE_DEFAULT,
                on_event=on_event,
                download=args.download,
            ) as outcomes:
                async for outcome in outcomes:
                    _record(
                        to_run[outcome.index],
                        outcome,
                        journal=journal,
                        results=results,
                        summary=summary,
                        progress=progress,
                    )
        summary.rate_limited_waits = progress.rate_limited


def _record(
    job: BulkJob,
    outcome: midvary.VaryOutcome,
    *,
    journal: Journal,
    results: ResultsFile,
    summary: Summary,
    progress: Progress,
) -> None:
    """Journal a finished job, append its result line, count it."""
    if outcome.ok:
        status, state = "done", JobState.DONE
    elif outcome.uncertain:
        status, state = "uncertain", JobState.UNCERTAIN
    else:
        status, state = "failed", JobState.FAILED
    line = result_line(
        job,
        status,
        task_id=outcome.task_id,
        record=outcome.record,
        error=outcome.error,
        paths=outcome.paths,
    )
    journal.finished(job.key, state, outcome.task_id, line)
    results.write(job.key, line)
    if outcome.ok:
        summary.done += 1
        progress.ended(ok=True)
        return
    error = outcome.error
    message = f"{type(error).__name__}: {error}"
    if state is JobState.UNCERTAIN:
        summary.uncertain += 1
    else:
        summary.failed += 1
    summary.problems.append((job, status, message))
    progress.ended(
        ok=False,
        message=f"line {job.line} ({job.key}) {status}: {message}",
        uncertain=state is JobState.UNCERTAIN,
    )


def _journaled_error(result: str | None) -> str:
    try:
        error = json.loads(result or "{}").get("error") or {}
        return f"{error.get('type')}: {error.get('message')} (in an earlier run)"
    except (ValueError, AttributeError):
        return "failed in an earlier run"


def summary_table(
    title: str,
    rows: Iterable[tuple[str, object]],
    *,
    columns: tuple[str, str] | None = ("jobs", "count"),
) -> Table:
    """A two-column rich table of ``(label, value)`` rows, values right-aligned.

    ``columns`` are the headings; ``None`` means no heading row.
    """
    from rich.table import Table  # noqa: PLC0415 - rich is optional

    table = Table(title=title, show_header=columns is not None)
    table.add_column(columns[0] if columns else "", justify="left")
    table.add_column(columns[1] if columns else "", justify="right")
    for label, value in rows:
        table.add_row(label, str(value))
    return table


def _print_summary(summary: Summary, out_path: Path, journal_path: Path) -> None:
    from rich.console import Console  # noqa: PLC0415 - rich is optional
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    rows = (
        ("total (valid rows)", summary.total),
        ("done", summary.done),
        ("failed", summary.failed),
        ("uncertain", summary.uncertain),
        ("skipped (finished earlier)", summary.skipped),
        ("re-attached by task id", summary.reattached),
        ("re-submitted (were uncertain)", summary.resubmitted),
        ("bad rows skipped", summary.bad_rows),
        ("rate-limited waits", summary.rate_limited_waits),
    )
    console.print(summary_table("midvary bulk", rows))
    if summary.problems:
        problems = Table(title="jobs that did not succeed", show_header=True)
        for column in ("line", "id", "status", "error"):
            problems.add_column(column)
        for job, status, message in summary.problems[:20]:
            problems.add_row(str(job.line), job.key, status, message)
        console.print(problems)
        if len(summary.problems) > 20:
            console.print(f"... and {len(summary.problems) - 20} more (see {out_path})")
    console.print(f"results: {out_path}", markup=False, highlight=False)
    console.print(f"journal: {journal_path}", markup=False, highlight=False)
