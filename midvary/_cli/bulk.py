"""``midvary bulk JOBS``: run every vary job of a CSV or JSONL file, crash-safely.

Flow: read and check the JOBS file (bad rows are reported with their line number and
skipped), open the ledger (:mod:`.ledger`: a store, ``JOBS.store.sqlite`` beside the JOBS
file or the one ``--store`` names, shared with the other runs of the file), then run the
jobs through ``Session.submit_many`` (keyed: the store records each submission's steps
before its POST leaves) with a live progress display, placing each job as the fan-out has
room for it (:mod:`.placing`: skip it if finished earlier, re-attach it if submitted
earlier, report it uncertain if its POST was in flight when an earlier run stopped, leave it
to another run that holds it, or run it), append one JSON line per finished job to the
results file (after the ledger: see :mod:`.results`), and print a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import midvary

from ._kit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    api_key,
    open_session,
    positive_float,
    positive_int,
    require_rich,
    say,
)
from .feed import Feed
from .jobs import JobsFile, read_jobs
from .ledger import Ledger, open_ledger
from .placing import Placer
from .progress import Progress
from .results import ResultsFile
from .summary import BulkSummary, print_summary
from .tally import Ending

logger = logging.getLogger(__name__)

_HELP: Final = """\
JOBS is a CSV file with a header row, or a JSONL file (one JSON object a line), with the
columns task_id (the parent task) and image_index (0..3), and optionally water_mark and id.
An action column chooses what a row does: vary (the default), upscale (same columns),
extend (task_id a video task, image_index which of its videos, optionally prompt for a
manual extend) or generate (a prompt column, optionally aspect_ratio, speed, version,
task_type, file_urls separated by spaces, and then: vary:all, upscale:0,2, ... joined by
';'; extend:0 for a video generate). A generate row's children are submitted when it
succeeds, each kept in the store like a row, so a resume never submits one twice.

Columns other than these are refused (exit 2). image_index is a whole number: digits in a
CSV file, a JSON integer in JSONL (not "2", not 2.0). A row that repeats an earlier one runs
too (each is billed) and is warned about.

Every run keeps its jobs in a store: the SQLite file JOBS.store.sqlite beside the JOBS
file (one run at a time), or the one --store names. Re-running the same command resumes:
finished jobs are skipped, submitted jobs are awaited by task id and never submitted
again, and jobs whose submission was in flight when the run stopped are reported as
uncertain (re-submitted only with --resubmit-uncertain). Jobs whose task failed at the
provider, or that were refused as invalid (400, 422), are failed: submitted again with
--retry-failed. Jobs refused for the account (401 key, 402 credits, 505 feature), or past
a rate-limit wait or an outage, or held back by --max-tasks, were not billed: they stay
pending and a plain re-run sends them. After the first 401, 402 or 505 the run sends
nothing more and stops with one line saying what to do. The account's credits are printed
before and after the run when the provider tells them. A journal of an earlier midvary
(JOBS.journal.sqlite) is moved into the store on the first run.

With --store (or MIDVARY_STORE_URL set to it: a password in an argument shows in ps and in
the shell's history), runs of the same JOBS file share its jobs (redis://HOST:PORT/DB: on
several machines): each takes a job before running it (a claim in the store, renewed while it
runs), leaves the jobs another live run holds to it, and takes over those of a stopped run
once its claim lapses (--claim-lease). Its results file has the jobs it ran and those it
found finished; a run after all others have ended submits nothing and writes every line.

exit codes: 0 every job succeeded; 1 some job failed, is uncertain, or a row was bad;
2 usage error; 130 interrupted (run again to resume).
"""


#: The environment variable ``--store`` defaults to (the arq worker's too).
STORE_URL_VARIABLE: Final = "MIDVARY_STORE_URL"


def options(parser: argparse.ArgumentParser) -> None:
    """``midvary bulk JOBS``: run many jobs with progress, a store and a results file."""
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
        metavar="N WINDOW",
        default=("20", "10"),
        help="at most N submissions per WINDOW seconds (20 10: the provider's limit); "
        "none: no client-side limit",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        metavar="PATH",
        help="the journal an earlier midvary kept (default JOBS.journal.sqlite, if there is "
        "one): its jobs are moved into the store once, and it is renamed PATH.migrated",
    )
    parser.add_argument(
        "--store",
        metavar="URL|PATH",
        help="where the runs of this JOBS file keep their jobs: redis://[:PASSWORD@]HOST:PORT/DB "
        "(several machines), or an SQLite file (several processes on one machine); the "
        "password is never printed. Default: $MIDVARY_STORE_URL (as the arq worker reads "
        "it; prefer the variable for a URL with a password: ps and shell history show "
        "arguments), else the SQLite file JOBS.store.sqlite",
    )
    parser.add_argument(
        "--claim-lease",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="with --store: seconds a stopped run's jobs stay blocked before another run "
        "takes them over (30; the default store is one run's at a time: nothing waits)",
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
        "--callback-url",
        metavar="URL",
        help="serve a callback receiver that the provider reaches at URL (a public http(s) "
        "URL to this machine, or a proxy in front of it): a job whose submission answer "
        "was lost then waits for its task's callback and is recovered, not uncertain",
    )
    parser.add_argument(
        "--callback-listen",
        type=_listen_address,
        default=("0.0.0.0", 8080),  # noqa: S104 - behind the public URL's proxy
        metavar="HOST:PORT",
        help="with --callback-url: the address the receiver listens on (0.0.0.0:8080)",
    )
    parser.add_argument(
        "--max-tasks",
        type=positive_int,
        metavar="N",
        help="send at most N submissions that may be billed in this run (accepted or "
        "uncertain); the jobs beyond stay pending for the next run",
    )
    parser.add_argument(
        "--resubmit-uncertain",
        action="store_true",
        help="submit again the jobs whose earlier submission may or may not have been accepted "
        "(each may then be billed twice)",
    )


def _listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` for ``--callback-listen`` (port 0: any free port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 0.0.0.0:8080), got {text!r}")
    return host, int(port)


@contextlib.asynccontextmanager
async def _receiving(
    args: argparse.Namespace, store: object
) -> AsyncIterator[midvary.CallbackReceiver | None]:
    """The run's callback receiver (``--callback-url``), serving; ``None`` without one.

    On a Redis ``--store`` its tokens are kept there too, so a later run (or another
    machine's) recovers a job whose answer this one lost.

    Raises:
        UsageError: The URL is not one, or the address cannot be listened on.

    """
    if args.callback_url is None:
        yield None
        return
    shared = store if isinstance(store, midvary.RedisStore) else None
    try:
        receiver = midvary.CallbackReceiver(public_url=args.callback_url, store=shared)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--callback-url: {exc}") from None
    async with receiver:
        host, port = args.callback_listen
        try:
            await receiver.start(host, port)
        except OSError as exc:
            raise UsageError(
                f"--callback-listen {host}:{port}: cannot listen there ({exc.strerror or exc})"
            ) from None
        yield receiver


def _submit_rate(words: Sequence[str]) -> tuple[int, float] | None:
    """``--submit-rate N WINDOW``, or ``none`` (``None``: no client-side limit)."""
    if len(words) == 1 and words[0].lower() == "none":
        return None
    try:
        count, window = words  # ValueError: not two values
        return positive_int(count), positive_float(window)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise UsageError(f"--submit-rate takes N WINDOW (e.g. 20 10) or none ({exc})") from None


def _said_by_bulk(record: logging.LogRecord) -> bool:
    """A filter of the fan-out's log: drops its warning about the jobs it left unfinished.

    bulk's ledger keeps those jobs and their task ids, and its own message on an interrupt
    says what to do: the CLI says it once, in its own words.
    """
    return not (
        isinstance(record.msg, str)
        and record.msg.startswith(("fan-out closed with", "the account refused"))
    )


def _bulk(args: argparse.Namespace) -> int:
    fanout_log = logging.getLogger("midvary._fanout")
    fanout_log.addFilter(_said_by_bulk)
    try:
        return _bulk_run(args)
    finally:
        fanout_log.removeFilter(_said_by_bulk)


def _bulk_run(args: argparse.Namespace) -> int:
    require_rich()
    jobs_path: Path = args.jobs
    out_path: Path = args.out or jobs_path.with_name(jobs_path.name + ".results.jsonl")
    rate = _submit_rate(args.submit_rate)
    if args.store is None:
        # A Redis URL with a password is safer in the environment than in argv (ps, history).
        args.store = os.environ.get(STORE_URL_VARIABLE) or None
    api_key(args)  # before the store: a run that cannot start leaves nothing
    jobs_file = read_jobs(jobs_path)
    # Before the ledger and the first POST, after what else could stop the run (nothing
    # created for a run that cannot start): a folder that cannot hold the images would let
    # every billed job end in an error.
    check_writable(out_path, args.download)
    for message in jobs_file.bad_rows:
        say(f"bad row skipped: {message}", stream=sys.stderr)
    for message in jobs_file.warnings:
        say(f"warning: {message}", stream=sys.stderr)
    summary = BulkSummary(total=len(jobs_file.jobs), bad_rows=len(jobs_file.bad_rows))
    try:
        asyncio.run(_run(args, rate, jobs_file, out_path, summary))
    except OSError as exc:
        # A local write failed (a full disk, a read-only folder): what was submitted is in
        # the ledger, so the one line says where, and that a re-run picks the jobs up.
        say(
            f"midvary bulk: error: cannot write {exc.filename or out_path}: "
            f"{exc.strerror or exc}; free the space or fix the folder and run the same "
            "command again to resume (submitted jobs are awaited, never submitted twice)",
            stream=sys.stderr,
        )
        return EXIT_FAILED
    except (sqlite3.Error, midvary.StoreError) as exc:
        # The store itself could not be written (SQLite says "database or disk is full"):
        # every POST was recorded sending before it left, so a re-run finds the jobs as
        # they were.
        say(
            f"midvary bulk: error: cannot write the store {summary.store}: "
            f"{exc}; free the space and run the same command again to resume (submitted jobs "
            "are awaited, never submitted twice)",
            stream=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        say(
            "interrupted: the store is up to date; run the same command again to "
            "resume (submitted jobs are awaited, never submitted twice)",
            stream=sys.stderr,
        )
        return EXIT_INTERRUPTED
    summary.pending = summary.total - summary.ended
    print_summary(summary, out_path)
    if args.gallery:
        from .gallery import make_gallery  # noqa: PLC0415 - only when asked

        make_gallery(out_path)
    for line in account_lines(summary):
        say(line, stream=sys.stderr if line.startswith("stopped") else None)
    # Every job done: none ended otherwise (done == ended), none is pending (ended == total).
    succeeded = summary.done == summary.ended == summary.total
    if succeeded and not summary.bad_rows and summary.stopped_by is None:
        return EXIT_OK
    return EXIT_FAILED


def account_lines(summary: BulkSummary) -> list[str]:
    """What the run spent, and why it stopped sending (an account refusal, --max-tasks)."""
    lines: list[str] = []
    before, after = summary.credits_before, summary.credits_after
    if before is not None and after is not None:
        lines.append(
            f"credits {before:,} -> {after:,}: {before - after:,} spent on "
            f"{summary.billable:,} tasks"
        )
    stopped = summary.stopped_by
    tasks = f"{summary.billable:,} {'task' if summary.billable == 1 else 'tasks'} billed"
    pending = f"{summary.pending:,} {'job' if summary.pending == 1 else 'jobs'} pending"
    if stopped is not None:
        problem, fix = _account_problem(stopped)
        lines.append(
            f"stopped: {problem}; {tasks}, {pending}: {fix}, then run the same command again"
        )
    elif summary.capped:
        lines.append(
            f"--max-tasks reached: {tasks}, {pending}: run the same command again to send them"
        )
    return lines


def _account_problem(error: Exception) -> tuple[str, str]:
    """What the account refusal ``error`` means, and what to do before running again."""
    if isinstance(error, midvary.InsufficientCreditsError):
        return "the account is out of credits (402)", "top up"
    if isinstance(error, midvary.AuthenticationError):
        return "the API key was refused (401)", "check the key (--api-key, MIDVARY_API_KEY)"
    return (
        f"the provider refused the account ({type(error).__name__}: {error})",
        "enable the feature for the account",
    )


def check_writable(out_path: Path, download: Path | None) -> None:
    """Refuse, before anything is sent, a results file or download folder that cannot be used.

    A download folder that cannot hold the images would let every billed job end in an
    error, so it is made (if missing) and a file is created in it and removed.

    Raises:
        UsageError: ``--out`` is a folder or in a missing folder, or ``--download`` is not
            a folder or cannot be written; the message names the path.

    """
    if out_path.is_dir():
        raise UsageError(f"--out {out_path} is a folder: give the results file's path")
    if not out_path.parent.is_dir():
        raise UsageError(f"--out {out_path}: no folder {out_path.parent}")
    if download is None:
        return
    if download.exists() and not download.is_dir():
        raise UsageError(f"--download {download} is not a folder")
    try:
        download.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=download) as probe:
            probe.write(b"midvary")
            probe.flush()
    except OSError as exc:
        raise UsageError(
            f"--download {download}: cannot write there ({exc.strerror or exc})"
        ) from None


async def _run(
    args: argparse.Namespace,
    rate: tuple[int, float] | None,
    jobs_file: JobsFile,
    out_path: Path,
    summary: BulkSummary,
) -> None:
    """Open the ledger, the results file and the session; run every job through the feed."""
    async with open_ledger(args, jobs_file) as (ledger, store):
        summary.store = ledger.where
        async with (
            ResultsFile(out_path) as results,
            _receiving(args, store) as receiver,
            open_session(args, submit_rate=rate, store=store, callbacks=receiver) as session,
        ):
            await _run_jobs(args, session, ledger, jobs_file, results, summary)


async def _credits(session: midvary.Session) -> int | None:
    """The account's credits, or ``None`` when the provider does not tell them."""
    try:
        return await session.credits()
    except midvary.MidvaryError as exc:  # the run goes on without: it only reports spend
        logger.debug("the credits could not be read: %s: %s", type(exc).__name__, exc)
        return None


async def _run_jobs(  # noqa: PLR0917 - one step of _run, given its parts
    args: argparse.Namespace,
    session: midvary.Session,
    ledger: Ledger,
    jobs_file: JobsFile,
    results: ResultsFile,
    summary: BulkSummary,
) -> None:
    summary.credits_before = await _credits(session)
    # The progress counts into the summary: one count of how the jobs ended.
    progress = Progress(len(jobs_file.jobs), tally=summary, outage=lambda: session.outage)
    feed = Feed(
        jobs_file.jobs,
        place=lambda job: placer.place(job),  # noqa: PLW0108 - made below: each needs the other
        retry_after=lambda: ledger.retry_after,
        key_of=ledger.submission_key,
    )
    placer = Placer(
        args=args, ledger=ledger, results=results, summary=summary, progress=progress, feed=feed
    )

    def on_event(event: midvary.JobEvent) -> None:
        if event.kind is midvary.JobEventKind.SUBMITTED and event.reattached:
            summary.reattached += 1  # a keyed job an earlier or another run had submitted
        progress.event(event)

    with progress:
        async with session.submit_many(
            feed.items(),
            concurrency=args.concurrency,
            timeout=args.timeout if args.timeout is not None else midvary.USE_DEFAULT,
            on_event=on_event,
            download=args.download,
            max_tasks=args.max_tasks,
        ) as outcomes:
            try:
                async for outcome in outcomes:
                    job = feed.to_run[outcome.index]
                    await placer.record(job, outcome)
                    feed.ended(job, outcome)
            except (
                midvary.AuthenticationError,
                midvary.InsufficientCreditsError,
                midvary.FeatureDisabledError,
            ) as exc:
                summary.stopped_by = exc  # the fan-out sent nothing after it
            for held in outcomes.unfinished:
                if held.not_sent:  # refused for the account, or beyond --max-tasks
                    await placer.pend(feed.to_run[held.index])
            summary.billable = outcomes.billable
            summary.capped = outcomes.capped
    summary.credits_after = await _credits(session) if summary.credits_before is not None else None
    for child in feed.orphans():
        summary.count(Ending.NOT_RUN)
        message = f"not run: its parent {child.parent} has not succeeded"
        summary.problems.append((child, "not run", message))
    summary.rate_limited_waits = progress.rate_limited
