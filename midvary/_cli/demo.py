"""``midvary demo``: the main job, offline, against a fake provider started in-process.

It starts :class:`midvary.testing.FakeProvider` with realistic but fast habits (tasks of
1-3 s, some failing at creation (``successFlag`` 2) or generation (3), a submit limit of 8
per 2 s, a 2 s maintenance window, a few spoiled answers, a few lost submit answers), then
does what a user would do, through the public API only: a :class:`midvary.Session` told the
provider's limit (``submit_rate``) runs 24 vary jobs (6 parents x 4 images) with
``Session.vary_many(..., download=DIR)``, with the live progress of ``midvary bulk``.

At the end it checks that the library behaved and prints a summary:

- every job ended done (its images downloaded as ``<task_id>_<n>.png``), failed because the
  fake made its task fail (:class:`TaskFailedError`), or uncertain because the fake spoiled
  or dropped its submission's answer (:class:`SubmitUncertainError`, never re-sent);
- the fake received no duplicate submission, exactly the POSTs the fan-out announced
  (``JobEventKind.SUBMITTING``), and created no task that no job accounts for except those
  whose answer it dropped.

Exit code 0 when every check holds, 1 (with the reasons) otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

import midvary
from midvary.testing import PNG_SIGNATURE, FakeProvider, FakeSettings, FakeStats, SuccessFlag

from ._kit import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_command,
    positive_int,
    require_rich,
    say,
)
from .bulk import Progress, summary_table

logger = logging.getLogger(__name__)

#: The seed of every random draw of the fake provider and of the client's jitter.
DEFAULT_SEED: Final = 7
#: Where the images go unless ``--out`` says otherwise (relative to the working directory).
DEFAULT_OUT: Final = Path("midvary-demo")
#: ``--fast`` multiplies every time (task durations, windows, policies) by this.
FAST_SCALE: Final = 0.1
#: The whole run, fake provider included, is cut after this many seconds (exit 1).
DEADLINE: Final = 55.0
#: Seconds each job may wait for its task once submitted.
JOB_TIMEOUT: Final = 40.0

_HELP: Final = """\
Start a fake provider in this process (tasks of 1-3 s, some failing, a submit limit of 8 per
2 s, a maintenance window, a few spoiled and lost answers), vary 24 images through
Session.vary_many with live progress, download the results, check that the library behaved,
and print a summary. Nothing leaves 127.0.0.1. Takes about 15 s.

exit codes: 0 the library behaved (every job done, failed by the provider, or uncertain
because the provider lost its answer; nothing submitted twice; every result downloaded);
1 it did not (the reasons are printed); 2 usage error.
"""


def add_demo_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``midvary demo``: the main job against an in-process fake provider."""
    parser = add_command(
        subparsers,
        "demo",
        _demo,
        help="run 24 vary jobs against a built-in fake provider (offline) and check them",
        description="Run the main job offline, against a built-in fake provider.\n\n" + _HELP,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"download the images into DIR ({DEFAULT_OUT})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed of the fake provider's draws and the client's jitter ({DEFAULT_SEED})",
    )
    parser.add_argument(
        "--parents",
        type=positive_int,
        default=6,
        metavar="N",
        help="parent tasks to vary, 4 images each (6)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"every time x{FAST_SCALE:g}: tasks of 0.1-0.3 s, and so on (for tests)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )


# -- the plan ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DemoPlan:
    """What the demo runs: the fake provider's habits and the client's matching settings.

    Attributes:
        scale: Multiplies every time, in the fake and in the client's policies (1.0, or
            :data:`FAST_SCALE` with ``--fast``).
        parents: Parent tasks; each gets its 4 images varied.
        concurrency: Jobs in flight at once (the ``vary_many`` default).
        submit_limit: Submissions per window the fake accepts, and the client is told.
        submit_window: The window of ``submit_limit``, in seconds before scaling.
    """

    scale: float = 1.0
    parents: int = 6
    concurrency: int = 16
    submit_limit: int = 8
    submit_window: float = 2.0

    @property
    def jobs(self) -> int:
        """How many vary jobs: 4 per parent."""
        return self.parents * 4

    @property
    def submit_rate(self) -> tuple[int, float]:
        """The fake's submit limit, ``(count, window seconds)``, scaled."""
        return self.submit_limit, self.submit_window * self.scale

    def fake_settings(self) -> FakeSettings:
        """The fake provider's knobs."""
        s = self.scale
        return FakeSettings(
            task_duration=(1.0 * s, 3.0 * s),
            invisible_for=0.5 * s,
            failure_rate=0.15,
            create_failure_share=0.5,  # as many successFlag 2 as 3
            submit_limit=self.submit_rate,
            maintenance=((3.0 * s, 5.0 * s),),
            fault_rate=0.04,
            fault_endpoints=("submit", "record-info"),
            drop_submit_answer_rate=0.05,
            time_format="mixed",
        )

    def poll(self) -> midvary.PollPolicy:
        """The library's default :class:`PollPolicy`, its times scaled."""
        default = midvary.PollPolicy()
        return attrs.evolve(
            default,
            initial_delay=default.initial_delay * self.scale,
            max_delay=default.max_delay * self.scale,
            jitter=default.jitter * self.scale,
            target_delay=(default.target_delay or 3.0) * self.scale,
        )

    def retry(self) -> midvary.RetryPolicy:
        """The library's default :class:`RetryPolicy`, its times scaled."""
        default = midvary.RetryPolicy()
        return attrs.evolve(
            default,
            wait_initial=default.wait_initial * self.scale,
            wait_max=default.wait_max * self.scale,
            wait_jitter=default.wait_jitter * self.scale,
        )

    def requests(self) -> list[midvary.VaryRequest]:
        """The jobs: each image 0..3 of each parent task."""
        return [
            midvary.VaryRequest(task_id=f"parent-demo-{parent}", image_index=index)
            for parent in range(1, self.parents + 1)
            for index in range(4)
        ]

    def describe(self) -> Iterator[str]:
        """What the demo is about to do, for people."""
        fake = self.fake_settings()
        low, high = fake.task_duration
        start, end = fake.maintenance[0]
        count, window = self.submit_rate
        yield (
            f"fake provider: tasks of {low:g}-{high:g} s, {fake.failure_rate:.0%} failing "
            f"(successFlag 2 or 3), at most {count} submissions per {window:g} s, maintenance "
            f"(455) from {start:g} s to {end:g} s, {fake.fault_rate:.0%} of answers spoiled, "
            f"{fake.drop_submit_answer_rate:.0%} of submit answers lost"
        )
        yield (
            f"client: Session(submit_rate=({count}, {window:g})) -> vary_many({self.jobs} "
            f"requests, concurrency={self.concurrency}, download=DIR)"
        )


# -- running it --------------------------------------------------------------------------


@attrs.define
class EventCounts:
    """What the fan-out's ``on_event`` hook reported."""

    posts: int = 0
    submitted: int = 0
    limiter_waits: int = 0
    held_back: set[int] = attrs.field(factory=set)
    retried_429: int = 0


@attrs.frozen(kw_only=True)
class Observed:
    """Everything one run produced, read after the run ended."""

    plan: DemoPlan
    settings: FakeSettings
    outcomes: tuple[midvary.VaryOutcome, ...]
    events: EventCounts
    stats: FakeStats
    fake_outcomes: dict[str, SuccessFlag]
    out: Path
    wall: float
    unfinished: tuple[midvary.UnfinishedJob, ...] = ()
    timed_out: bool = False


async def run_demo(plan: DemoPlan, *, out: Path, seed: int, progress: Progress) -> Observed:
    """Start the fake provider, run every job through ``Session.vary_many``, and observe.

    Args:
        plan: The fake's habits and the client's settings.
        out: The directory to download the images into.
        seed: Seeds the fake's draws and the session's jitter.
        progress: Counts the job events and shows them.

    Returns:
        What happened, for :func:`assess`.

    """
    started = time.monotonic()
    events = EventCounts()

    def on_event(event: midvary.JobEvent) -> None:
        kind = event.kind
        if kind is midvary.JobEventKind.SUBMITTING:
            events.posts += 1
        elif kind is midvary.JobEventKind.SUBMITTED:
            events.submitted += 1
        elif kind is midvary.JobEventKind.RATE_LIMITED:
            if event.error is None:
                events.limiter_waits += 1
                events.held_back.add(event.index)
            else:
                events.retried_429 += 1
        progress.event(event)

    outcomes: list[midvary.VaryOutcome] = []
    timed_out = False
    settings = plan.fake_settings()
    async with FakeProvider(settings=settings, seed=seed) as fake:
        async with midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=plan.poll(),
            retry=plan.retry(),
            submit_rate=plan.submit_rate,  # the provider's limit: wait rather than get 429s
            seed=seed,
        ) as session:
            fanout = session.vary_many(
                plan.requests(),
                concurrency=plan.concurrency,
                timeout=JOB_TIMEOUT,
                on_event=on_event,
                download=out,
            )
            with progress:
                try:
                    async with asyncio.timeout(DEADLINE), fanout:
                        async for outcome in fanout:
                            outcomes.append(outcome)
                            _show(progress, outcome)
                except TimeoutError:
                    timed_out = True
        wall = time.monotonic() - started
        fake_outcomes = {task_id: task.outcome for task_id, task in fake.tasks.items()}
    return Observed(
        plan=plan,
        settings=settings,
        outcomes=tuple(sorted(outcomes, key=lambda outcome: outcome.index)),
        events=events,
        stats=fake.stats,
        fake_outcomes=fake_outcomes,
        out=out,
        wall=wall,
        unfinished=fanout.unfinished,
        timed_out=timed_out,
    )


def _what(outcome: midvary.VaryOutcome) -> str:
    request = outcome.request
    return f"job {outcome.index} {request.describe() if request is not None else ''}".rstrip()


def _show(progress: Progress, outcome: midvary.VaryOutcome) -> None:
    """Count one outcome; describe a failed or uncertain one as it comes."""
    if outcome.ok:
        progress.ended(ok=True)
        return
    status = "uncertain" if outcome.uncertain else "failed"
    progress.ended(
        ok=False,
        message=f"{_what(outcome)} {status}: {type(outcome.error).__name__}: {outcome.error}",
        uncertain=outcome.uncertain,
    )


# -- checking it -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DemoReport:
    """The figures of one run and the problems found; ``ok`` when there are none."""

    figures: dict[str, Any]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the library behaved."""
        return not self.problems


@attrs.define
class _Tally:
    """The jobs' outcomes, counted and checked one by one."""

    done: int = 0
    failed_create: int = 0
    failed_generate: int = 0
    uncertain: int = 0
    unexpected: int = 0
    files: int = 0
    claimed: set[str] = attrs.field(factory=set)
    problems: list[str] = attrs.field(factory=list)

    def add(self, outcome: midvary.VaryOutcome, observed: Observed) -> None:
        """Count one outcome; note what is wrong with it, if anything."""
        if outcome.task_id is not None:
            self.claimed.add(outcome.task_id)
        drawn = observed.fake_outcomes.get(outcome.task_id or "")
        if outcome.ok:
            self.done += 1
            self.files += len(outcome.paths)
            if drawn is not SuccessFlag.SUCCESS:
                self.problems.append(f"{_what(outcome)} done, but the fake's task drew {drawn}")
            self.problems.extend(_check_files(outcome, observed))
        elif outcome.uncertain:  # a SubmitUncertainError: checked in total against the fake
            self.uncertain += 1
        elif isinstance(outcome.error, midvary.TaskFailedError):
            status = outcome.error.record.status
            if status is midvary.TaskStatus.CREATE_FAILED:
                self.failed_create += 1
            else:
                self.failed_generate += 1
            if drawn is None or drawn.value != status.value:
                self.problems.append(
                    f"{_what(outcome)} failed as {status.name}, but the fake's task drew {drawn}"
                )
        else:
            self.unexpected += 1
            error = outcome.error
            self.problems.append(f"{_what(outcome)} ended with {type(error).__name__}: {error}")


def _check_totals(observed: Observed, tally: _Tally) -> Iterator[str]:
    """Problems with the run as a whole, seen from the fake's side."""
    stats, jobs = observed.stats, observed.plan.jobs
    if stats.duplicate_submissions:
        yield f"{stats.duplicate_submissions} duplicate submissions reached the fake"
    if observed.timed_out:
        # The totals below need every job to have ended.
        pending = ", ".join(str(job.index) for job in observed.unfinished) or "none"
        yield f"the run did not finish within {DEADLINE:g} s (jobs still in flight: {pending})"
        return
    if len(observed.outcomes) != jobs:
        yield f"{len(observed.outcomes)} outcomes for {jobs} jobs"
    lost_answers = stats.faults_by_endpoint["submit"] + stats.dropped_submit_answers
    if tally.uncertain != lost_answers:
        yield (
            f"{tally.uncertain} jobs uncertain, but the fake spoiled or dropped "
            f"{lost_answers} submit answers"
        )
    unclaimed = len(observed.fake_outcomes) - len(tally.claimed)
    if unclaimed != stats.dropped_submit_answers:
        yield (
            f"the fake created {unclaimed} tasks no job knows of, but it dropped "
            f"{stats.dropped_submit_answers} submit answers"
        )
    answered = stats.tasks_created - stats.dropped_submit_answers
    if observed.events.submitted != answered:
        yield (
            f"the fan-out reported {observed.events.submitted} submissions accepted "
            f"(SUBMITTED), but the fake accepted and answered {answered}"
        )
    if observed.events.posts != stats.requests["submit"]:
        yield (
            f"the fan-out announced {observed.events.posts} POSTs (SUBMITTING), but the fake "
            f"received {stats.requests['submit']}"
        )


def assess(observed: Observed) -> DemoReport:
    """Check what a run produced against what the fake injected; compute the figures."""
    tally = _Tally()
    for outcome in observed.outcomes:
        tally.add(outcome, observed)
    problems = [*tally.problems, *_check_totals(observed, tally)]
    stats = observed.stats
    submit_faults = stats.faults_by_endpoint["submit"]
    summary = stats.summary()
    record_info = stats.requests["record-info"]
    poll_faults = stats.faults_by_endpoint["record-info"]
    poll_retries = record_info - sum(stats.polls.values())
    submit_455 = stats.requests["submit"] - stats.tasks_created - stats.rate_limited - submit_faults
    figures: dict[str, Any] = {
        "seed": None,  # filled in by the command
        "jobs": observed.plan.jobs,
        "done": tally.done,
        "failed": tally.failed_create + tally.failed_generate,
        "failed_create": tally.failed_create,
        "failed_generate": tally.failed_generate,
        "uncertain": tally.uncertain,
        "unexpected": tally.unexpected,
        "uncertain_billed": stats.dropped_submit_answers,
        "uncertain_not_created": submit_faults,
        "rate_limited_waits": observed.events.limiter_waits,
        "jobs_held_back": len(observed.events.held_back),
        "submit_retries_429": observed.events.retried_429,
        "submit_retries_455": submit_455,
        "poll_retries": poll_retries,
        "poll_faults": poll_faults,
        "poll_maintenance": poll_retries - poll_faults,
        "posts": stats.requests["submit"],
        "polls": record_info,
        "polls_per_task_mean": summary["mean_polls"],
        "polls_per_task_max": summary["max_polls"],
        "mean_detection_delay": summary["mean_detection_delay"],
        "http_429": stats.rate_limited,
        "duplicates": stats.duplicate_submissions,
        "tasks_billed": stats.tasks_created,
        "files_written": tally.files,
        "files_downloaded_now": stats.requests["results"],
        "out": str(observed.out),
        "wall_seconds": round(observed.wall, 2),
    }
    return DemoReport(figures=figures, problems=tuple(problems))


def _check_files(outcome: midvary.VaryOutcome, observed: Observed) -> Iterator[str]:
    """Problems with the images of one succeeded job (none when all are there)."""
    record = outcome.record
    assert record is not None  # noqa: S101 - a succeeded outcome has its record
    expected = observed.settings.images_per_task
    if len(record.image_urls) != expected or len(outcome.paths) != expected:
        yield (
            f"{_what(outcome)}: {len(outcome.paths)} files for {len(record.image_urls)} "
            f"image URLs, {expected} expected"
        )
    for n, path in enumerate(outcome.paths):
        if path.name != f"{record.task_id}_{n}.png" or path.parent != observed.out:
            yield f"{_what(outcome)}: unexpected file name {path}"
        try:
            with path.open("rb") as file:
                head = file.read(len(PNG_SIGNATURE))
        except OSError as exc:
            yield f"{_what(outcome)}: cannot read {path}: {exc}"
            continue
        if head != PNG_SIGNATURE:
            yield f"{_what(outcome)}: {path} is not a PNG image"


# -- the command -------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    require_rich()
    if args.api_key is not None or args.base_url is not None:
        raise UsageError("the demo talks to its own fake provider: drop --api-key/--base-url")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    plan = DemoPlan(scale=FAST_SCALE if args.fast else 1.0, parents=args.parents)
    progress = Progress(plan.jobs, label="demo")
    header = [
        f"midvary demo: {plan.jobs} vary jobs ({plan.parents} parent"
        f"{'s' if plan.parents > 1 else ''} x 4 images) against a "
        f"fake provider in this process, seed {args.seed}",
        *(line.replace("DIR", str(out)) for line in plan.describe()),
    ]
    for line in header:
        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
    observed = asyncio.run(run_demo(plan, out=out, seed=args.seed, progress=progress))
    report = assess(observed)
    report.figures["seed"] = args.seed
    if args.json:
        say(json.dumps({**report.figures, "ok": report.ok, "problems": list(report.problems)}))
    else:
        _print_report(report)
    if not report.ok:
        say(
            f"midvary demo: the library misbehaved ({len(report.problems)} "
            f"problem{'s' if len(report.problems) > 1 else ''}):",
            stream=sys.stderr,
        )
        for problem in report.problems:
            say(f"  - {problem}", stream=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _files(written: int, downloaded: int) -> str:
    earlier = max(written - downloaded, 0)
    if not earlier:
        return str(written)
    return f"{written} ({earlier} complete from an earlier run: not downloaded again)"


def _print_report(report: DemoReport) -> None:
    from rich.console import Console  # noqa: PLC0415 - rich is optional

    f = report.figures
    polls = (
        f"{f['polls_per_task_mean']:.1f} (max {f['polls_per_task_max']})"
        if f["polls_per_task_mean"] is not None
        else "-"
    )
    rows: Sequence[tuple[str, object]] = (
        ("jobs", f"{f['jobs']}"),
        ("done (images downloaded)", f["done"]),
        (
            "failed by the provider (flag 2 / 3)",
            f"{f['failed']} ({f['failed_create']} / {f['failed_generate']})",
        ),
        (
            "uncertain: answer lost, not re-sent",
            f"{f['uncertain']} ({f['uncertain_billed']} billed, "
            f"{f['uncertain_not_created']} never created)",
        ),
        *((("other errors (see below)", f["unexpected"]),) if f["unexpected"] else ()),
        (
            "rate-limited waits (client limiter)",
            f"{f['rate_limited_waits']} ({f['jobs_held_back']} jobs held back)",
        ),
        (
            "submissions retried (455 / 429)",
            f"{f['submit_retries_455']} / {f['submit_retries_429']}",
        ),
        (
            "polls retried (faulted / 455)",
            f"{f['poll_retries']} ({f['poll_faults']} / {f['poll_maintenance']})",
        ),
        ("polls per task", polls),
        ("HTTP 429 from the provider", f["http_429"]),
        ("duplicate submissions", f["duplicates"]),
        ("tasks billed by the provider", f["tasks_billed"]),
        (f"files in {f['out']}", _files(f["files_written"], f["files_downloaded_now"])),
        ("wall time", f"{f['wall_seconds']:.1f} s"),
    )
    console = Console()
    console.print(summary_table(f"midvary demo (seed {f['seed']})", rows, columns=None))
    if report.ok:
        console.print(
            "ok: every job ended done, failed by the provider, or uncertain because the "
            "provider lost its answer (never re-sent); nothing was submitted twice; every "
            "result was downloaded.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
