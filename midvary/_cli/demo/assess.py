"""Checking the demo: what a run produced against what the fake provider injected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

import midvary
from midvary.testing import PNG_SIGNATURE, SuccessFlag

from ..tally import Ending, Tally
from .run import Observed, describe


@attrs.frozen(kw_only=True)
class DemoReport:
    """The figures of one run and the problems found; ``ok`` when there are none."""

    figures: dict[str, Any]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the library behaved."""
        return not self.problems


@attrs.define(kw_only=True)
class DemoTally(Tally):
    """The jobs' outcomes, counted and checked one by one.

    The :class:`Tally` counts how each job ended; a failed one is counted again by why:
    ``failed_create`` / ``failed_generate`` (the fake made its task fail with successFlag 2 /
    3) or ``unexpected`` (any other error: a problem).
    """

    failed_create: int = 0
    failed_generate: int = 0
    unexpected: int = 0
    files: int = 0
    claimed: set[str] = attrs.field(factory=set)
    problems: list[str] = attrs.field(factory=list)

    def check(self, outcome: midvary.VaryOutcome, observed: Observed) -> None:
        """Count one outcome; note what is wrong with it, if anything."""
        if outcome.task_id is not None:
            self.claimed.add(outcome.task_id)
        drawn = observed.fake_outcomes.get(outcome.task_id or "")
        ending = self.add(outcome)
        if ending is Ending.DONE:
            self.files += len(outcome.paths)
            if drawn is not SuccessFlag.SUCCESS:
                self.problems.append(f"{describe(outcome)} done, but the fake's task drew {drawn}")
            self.problems.extend(_check_files(outcome, observed))
        elif ending is Ending.UNCERTAIN:  # a SubmitUncertainError: checked in total below
            pass
        elif isinstance(outcome.error, midvary.TaskFailedError):
            status = outcome.error.record.status
            if status is midvary.TaskStatus.CREATE_FAILED:
                self.failed_create += 1
            else:
                self.failed_generate += 1
            if drawn is None or drawn.value != status.value:
                self.problems.append(
                    f"{describe(outcome)} failed as {status.name}, but the fake's task drew {drawn}"
                )
        else:
            self.unexpected += 1
            error = outcome.error
            self.problems.append(f"{describe(outcome)} ended with {type(error).__name__}: {error}")


def _check_totals(observed: Observed, tally: DemoTally) -> Iterator[str]:
    """Problems with the run as a whole, seen from the fake's side."""
    stats, jobs = observed.stats, observed.plan.jobs
    if stats.duplicate_submissions:
        yield f"{stats.duplicate_submissions} duplicate submissions reached the fake"
    if observed.timed_out:
        # The totals below need every job to have ended.
        pending = ", ".join(str(job.index) for job in observed.unfinished) or "none"
        yield (
            f"the run did not finish within {observed.deadline:g} s "
            f"(jobs still in flight: {pending})"
        )
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
    tally = DemoTally()
    for outcome in observed.outcomes:
        tally.check(outcome, observed)
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
            f"{describe(outcome)}: {len(outcome.paths)} files for {len(record.image_urls)} "
            f"image URLs, {expected} expected"
        )
    for n, path in enumerate(outcome.paths):
        if path.name != f"{record.task_id}_{n}.png" or path.parent != observed.out:
            yield f"{describe(outcome)}: unexpected file name {path}"
        try:
            with path.open("rb") as file:
                head = file.read(len(PNG_SIGNATURE))
        except OSError as exc:
            yield f"{describe(outcome)}: cannot read {path}: {exc}"
            continue
        if head != PNG_SIGNATURE:
            yield f"{describe(outcome)}: {path} is not a PNG image"
