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
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import midvary

from ._kit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    open_session,
    positive_float,
    positive_int,
    require_api_key,
    require_rich,
    say,
)
from .feed import Feed
from .jobs import BulkJob, JobsFile, read_jobs
from .journal import JobState, Journal, JournalBusyError, JournalMismatchError
from .progress import Progress
from .results import ResultsFile, UncertainAtResumeError, result_line
from .summary import BulkSummary, print_summary
from .tally import Ending, Tally

logger = logging.getLogger(__name__)

_HELP: Final = """\
JOBS is a CSV file with a header row, or a JSONL file (one JSON object a line), with the
columns task_id (the parent task) and image_index (0..3), and optionally water_mark and id.
An action column chooses what a row does: vary (the default), upscale (same columns) or
generate (a prompt column, optionally aspect_ratio, speed, version, task_type, and then:
vary:all, upscale:0,2, ... joined by ';'). A generate row's children are submitted when it
succeeds, each journaled like a row, so a resume never submits one twice.

Columns other than these are refused (exit 2). image_index is a whole number: digits in a
CSV file, a JSON integer in JSONL (not "2", not 2.0). A row that repeats an earlier one runs
too (each is billed) and is warned about.

Re-running the same command resumes: finished jobs are skipped, submitted jobs are awaited
by task id and never submitted again, and jobs whose submission was in flight when the run
stopped are reported as uncertain (re-submitted only with --resubmit-uncertain). Jobs whose
task failed at the provider are submitted again with --retry-failed.

exit codes: 0 every job succeeded; 1 some job failed, is uncertain, or a row was bad;
2 usage error; 130 interrupted (run again to resume).
"""


def options(parser: argparse.ArgumentParser) -> None:
    """``midvary bulk JOBS``: run many jobs with progress, a journal and a results file."""
    parser.description = "Run every vary job of a CSV or JSONL file (resumable).\n\n" + _HELP
    parser.set_defaults(handler=_bulk)
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
        nargs="+",
        action=_SubmitRate,
        metavar="N WINDOW",
        default=("20", "10"),
        help="at most N submissions per WINDOW seconds (20 10: the provider's limit); "
        "none: no client-side limit",
    )
    parser.add_argument(
        "--journal", type=Path, metavar="PATH", help="the journal (JOBS.journal.sqlite)"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="submit again the jobs whose task failed at the provider in an earlier run "
        "(never the uncertain ones)",
    )
    parser.add_argument(
        "--gallery",
        action="store_true",
        help="after the run, write an HTML page of the results beside them (RESULTS.html)",
    )
    parser.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit again the jobs whose earlier submission may or may not have been accepted "
        "(each may then be billed twice)",
    )


class _SubmitRate(argparse.Action):
    """``--submit-rate N WINDOW``, or ``--submit-rate none``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = [values] if isinstance(values, str) else list(values or ())
        if len(words) == 1 and words[0].lower() == "none":
            setattr(namespace, self.dest, None)
            return
        if len(words) != 2:
            parser.error(f"{option_string} takes N WINDOW (e.g. 20 10), or none")
        setattr(namespace, self.dest, tuple(words))


def _submit_rate(values: Sequence[str] | None) -> tuple[int, float] | None:
    if values is None:
        return None
    try:
        return positive_int(values[0]), positive_float(values[1])
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise UsageError(f"--submit-rate takes N WINDOW (e.g. 20 10) or none ({exc})") from None


def _bulk(args: argparse.Namespace) -> int:
    require_rich()
    jobs_path: Path = args.jobs
    out_path: Path = args.out or jobs_path.with_name(jobs_path.name + ".results.jsonl")
    journal_path: Path = args.journal or jobs_path.with_name(jobs_path.name + ".journal.sqlite")
    rate = _submit_rate(args.submit_rate)
    require_api_key(args)  # before the journal: a run that cannot start leaves nothing
    jobs_file = read_jobs(jobs_path)
    for message in jobs_file.bad_rows:
        say(f"bad row skipped: {message}", stream=sys.stderr)
    for message in jobs_file.warnings:
        say(f"warning: {message}", stream=sys.stderr)
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
            summary = BulkSummary(total=len(jobs_file.jobs), bad_rows=len(jobs_file.bad_rows))
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
    print_summary(summary, out_path, journal_path)
    if args.gallery:
        from .gallery import make_gallery  # noqa: PLC0415 - only when asked

        make_gallery(out_path)
    if summary.failed or summary.uncertain or summary.bad_rows:
        return EXIT_FAILED
    return EXIT_OK


async def _run(
    args: argparse.Namespace,
    *,
    rate: tuple[int, float] | None,
    jobs_file: JobsFile,
    view: dict[str, Any],
    journal: Journal,
    results: ResultsFile,
    summary: BulkSummary,
) -> None:
    async with open_session(args, submit_rate=rate) as session:
        feed = Feed()
        for job in jobs_file.jobs:
            _place(job, view, feed, session, args, journal, results, summary)
        feed.start()

        earlier = Tally(done=summary.done, failed=summary.failed)  # as the bar always showed
        progress = Progress(len(jobs_file.jobs), tally=earlier)
        progress.running.update(
            n for n, (_job, item) in enumerate(feed.queue) if isinstance(item, midvary.TaskHandle)
        )

        def on_event(event: midvary.JobEvent) -> None:
            job = feed.to_run[event.index]
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
                feed.items(),
                concurrency=args.concurrency,
                timeout=args.timeout if args.timeout is not None else midvary.USE_DEFAULT,
                on_event=on_event,
                download=args.download,
            ) as outcomes:
                async for outcome in outcomes:
                    job = feed.to_run[outcome.index]
                    _record(
                        job,
                        outcome,
                        request=outcome.request or feed.request_of(job),
                        journal=journal,
                        results=results,
                        summary=summary,
                        progress=progress,
                    )
                    feed.parent_ended(job, outcome)
        for child in feed.orphans():
            summary.count(Ending.FAILED)
            message = f"not run: its parent {child.parent} has not succeeded"
            summary.problems.append((child, "not run", message))
        summary.rate_limited_waits = progress.rate_limited


def _place(  # noqa: PLR0917 - one step of _run, given its parts
    job: BulkJob,
    view: dict[str, Any],
    feed: Feed,
    session: midvary.Session,
    args: argparse.Namespace,
    journal: Journal,
    results: ResultsFile,
    summary: BulkSummary,
) -> None:
    """Decide what this run does with ``job`` from what the journal knows of it."""
    known = view[job.key]
    state: JobState = known.state
    if args.retry_failed and state is JobState.FAILED and _task_failed(known.result):
        summary.retried += 1
        _submit(job, view, feed)
    elif state.finished:
        summary.skipped += 1
        if state is JobState.DONE:
            summary.count(Ending.DONE)
        else:
            summary.count(Ending.FAILED)
            summary.problems.append((job, "failed", _journaled_error(known.result)))
    elif state is JobState.SUBMITTED and known.task_id:
        summary.reattached += 1
        feed.add(job, session.task(known.task_id), _request_of(job, view))
    elif state in (JobState.SUBMITTING, JobState.UNCERTAIN) and not args.resubmit_uncertain:
        summary.count(Ending.UNCERTAIN)
        if state is JobState.SUBMITTING:
            why = "its submission was in flight when an earlier run stopped"
        else:  # the earlier run ended it uncertain and kept why in its result line
            why = _journaled_error(known.result)
        message = (
            f"{why}: the task may exist and be billed; check the provider's "
            "dashboard, or run again with --resubmit-uncertain"
        )
        summary.problems.append((job, "uncertain", message))
        if state is JobState.SUBMITTING:
            line = result_line(
                job,
                Ending.UNCERTAIN,
                error=UncertainAtResumeError(message),
                request=_request_of(job, view),
            )
            journal.finished(job.key, JobState.UNCERTAIN, None, line)
            results.write(job.key, line)
    else:
        if state in (JobState.SUBMITTING, JobState.UNCERTAIN):
            summary.resubmitted += 1
        _submit(job, view, feed)


def _submit(job: BulkJob, view: dict[str, Any], feed: Feed) -> None:
    """Submit ``job`` in this run: now, or once its parent succeeds."""
    request = _request_of(job, view)
    if request is not None:
        feed.add(job, request)
    else:
        feed.wait_for_parent(job)


def _request_of(job: BulkJob, view: dict[str, Any]) -> Any:
    """A row's request, or a child's once its parent succeeded (in an earlier run)."""
    if job.parent is None:
        return job.request
    parent = view[job.parent]
    if parent.state is JobState.DONE and parent.task_id:
        return job.request_for(parent.task_id)
    return None


def _record(
    job: BulkJob,
    outcome: midvary.VaryOutcome,
    *,
    request: Any,
    journal: Journal,
    results: ResultsFile,
    summary: BulkSummary,
    progress: Progress,
) -> None:
    """Journal a finished job, append its result line, count it."""
    ending = Ending.of(outcome)
    state = JobState(ending.value)  # done, failed, uncertain: the same words
    line = result_line(
        job,
        ending,
        task_id=outcome.task_id,
        record=outcome.record,
        error=outcome.error,
        paths=outcome.paths,
        request=request,
    )
    journal.finished(job.key, state, outcome.task_id, line)
    results.write(job.key, line)
    summary.count(ending)
    if ending is Ending.DONE:
        progress.ended(ending)
        return
    error = outcome.error
    message = f"{type(error).__name__}: {error}"
    summary.problems.append((job, ending.value, message))
    progress.ended(ending, f"line {job.line} ({job.key}) {ending.value}: {message}")


def _task_failed(result: str | None) -> bool:
    """Whether a journaled result line says the job's task failed at the provider."""
    try:
        error = json.loads(result or "{}").get("error") or {}
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("type") == "TaskFailedError"


def _journaled_error(result: str | None) -> str:
    try:
        error = json.loads(result or "{}").get("error") or {}
        return f"{error.get('type')}: {error.get('message')} (in an earlier run)"
    except (ValueError, AttributeError):
        return "failed in an earlier run"
