"""Checking the demo: what a run produced against what the fake provider injected."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Final

import attrs

import midvary
from midvary.testing import PNG_SIGNATURE, FakeStats, SuccessFlag, TaskSnapshot

from ..chain import action_of
from ..jobs import BulkJob
from ..tally import Ending, Tally
from .run import Observed, describe

#: The kinds of job, in the order the summary shows them.
KINDS: Final = ("generate", "vary", "upscale")
#: The fake's name (in ``FakeStats.requests`` and ``tasks_by_endpoint``) of each kind's endpoint.
ENDPOINTS: Final = {"generate": "generate", "vary": "submit", "upscale": "upscale"}


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

    The :class:`Tally` counts how each job ended, whatever its kind; ``kinds`` counts them
    again per kind (``generate``, ``vary``, ``upscale``). A failed one is counted again by
    why: ``failed_create`` / ``failed_generate`` (the fake made its task fail with
    successFlag 2 / 3) or ``unexpected`` (any other error: a problem).
    """

    failed_create: int = 0
    failed_generate: int = 0
    unexpected: int = 0
    files: int = 0
    kinds: dict[str, Tally] = attrs.field(factory=lambda: {kind: Tally() for kind in KINDS})
    #: Per kind, the task ids the jobs got.
    claimed: dict[str, set[str]] = attrs.field(factory=lambda: {kind: set() for kind in KINDS})
    #: The task id of each grid that succeeded, by its job key.
    grids: dict[str, str] = attrs.field(factory=dict)
    problems: list[str] = attrs.field(factory=list)

    def check(self, job: BulkJob, outcome: midvary.JobOutcome, observed: Observed) -> None:
        """Count one outcome; note what is wrong with it, if anything."""
        kind = kind_of(job)
        what = describe(job, outcome)
        if outcome.task_id is not None:
            self.claimed[kind].add(outcome.task_id)
        task = observed.fake_tasks.get(outcome.task_id or "")
        drawn = task.outcome if task is not None else None
        if task is not None and task.kind != kind:
            self.problems.append(f"{what} got task {task.task_id}, a {task.kind} at the fake")
        if job.parent is not None:
            self.problems.extend(self._check_child(job, outcome, task, what))
        ending = self.add(outcome)
        self.kinds[kind].count(ending)
        if ending is Ending.DONE:
            self.files += len(outcome.paths)
            if job.then and outcome.task_id is not None:
                self.grids[job.key] = outcome.task_id
            if drawn is not SuccessFlag.SUCCESS:
                self.problems.append(f"{what} done, but the fake's task drew {drawn}")
            self.problems.extend(_check_files(kind, outcome, observed, what))
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
                    f"{what} failed as {status.name}, but the fake's task drew {drawn}"
                )
        else:
            self.unexpected += 1
            error = outcome.error
            self.problems.append(f"{what} ended with {type(error).__name__}: {error}")

    def _check_child(
        self, job: BulkJob, outcome: midvary.JobOutcome, task: TaskSnapshot | None, what: str
    ) -> Iterator[str]:
        """A vary or upscale must name its own grid's task, and run only once it succeeded."""
        assert job.parent is not None  # noqa: S101 - only children are checked here
        grid = self.grids.get(job.parent)
        sent = getattr(outcome.request, "task_id", None)
        if grid is None:
            yield f"{what} ran, but its grid {job.parent} had not succeeded before it"
        elif sent != grid:
            yield f"{what} named task {sent}, but its grid {job.parent} is {grid}"
        if task is not None and task.parent_task_id != sent:
            yield f"{what} reached the fake for parent {task.parent_task_id}, not {sent}"


def kind_of(job: BulkJob) -> str:
    """``generate``, ``vary`` or ``upscale``: what ``job`` does."""
    return job.step.action if job.step is not None else action_of(job.request)


def _check_totals(observed: Observed, tally: DemoTally) -> Iterator[str]:
    """Problems with the run as a whole, seen from the fake's side."""
    stats = observed.stats
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
    yield from _check_not_run(observed, tally)
    posts, submit_faults = _submissions(stats)
    lost_answers = submit_faults + stats.dropped_submit_answers
    if tally.uncertain != lost_answers:
        yield (
            f"{tally.uncertain} jobs uncertain, but the fake spoiled or dropped "
            f"{lost_answers} submit answers"
        )
    claimed = sum(len(ids) for ids in tally.claimed.values())
    unclaimed = len(observed.fake_tasks) - claimed
    if unclaimed != stats.dropped_submit_answers:
        yield (
            f"the fake created {unclaimed} tasks no job knows of, but it dropped "
            f"{stats.dropped_submit_answers} submit answers"
        )
    for kind in KINDS:
        # Every task of this kind is a job's of this kind, or explained by one uncertain.
        created = stats.tasks_by_endpoint[ENDPOINTS[kind]]
        extra = created - len(tally.claimed[kind])
        if not 0 <= extra <= tally.kinds[kind].uncertain:
            yield (
                f"the fake created {created} {kind} tasks; {kind} jobs got "
                f"{len(tally.claimed[kind])} and {tally.kinds[kind].uncertain} are uncertain"
            )
    answered = stats.tasks_created - stats.dropped_submit_answers
    if observed.events.submitted != answered:
        yield (
            f"the fan-out reported {observed.events.submitted} submissions accepted "
            f"(SUBMITTED), but the fake accepted and answered {answered}"
        )
    if observed.events.posts != posts:
        yield (
            f"the fan-out announced {observed.events.posts} POSTs (SUBMITTING), but the fake "
            f"received {posts}"
        )


def _check_not_run(observed: Observed, tally: DemoTally) -> Iterator[str]:
    """Every job ran exactly once, but the children of a grid that did not succeed."""
    jobs = observed.plan.jobs_to_run()
    expected = {job.key for job in jobs if job.parent is not None and job.parent not in tally.grids}
    not_run = {job.key for job in observed.not_run}
    ran = [job.key for job in observed.jobs]
    if not_run != expected:
        yield (
            f"not run: {', '.join(sorted(not_run)) or 'none'}; expected the children of the "
            f"grids that did not succeed: {', '.join(sorted(expected)) or 'none'}"
        )
    if len(ran) != len(set(ran)) or set(ran) | not_run != {job.key for job in jobs}:
        yield f"{len(ran)} jobs ran and {len(not_run)} did not, for {len(jobs)} planned"
    if len(observed.outcomes) != len(ran):
        yield f"{len(observed.outcomes)} outcomes for {len(ran)} jobs run"


def _submissions(stats: FakeStats) -> tuple[int, int]:
    """The submit POSTs the fake received (every kind), and the answers it spoiled."""
    posts = sum(stats.requests[endpoint] for endpoint in ENDPOINTS.values())
    return posts, sum(stats.faults_by_endpoint[endpoint] for endpoint in ENDPOINTS.values())


def assess(observed: Observed) -> DemoReport:
    """Check what a run produced against what the fake injected; compute the figures."""
    tally = DemoTally()
    for outcome in observed.outcomes:
        tally.check(observed.job_of(outcome), outcome, observed)
    problems = [*tally.problems, *_check_totals(observed, tally)]
    stats = observed.stats
    posts, submit_faults = _submissions(stats)
    summary = stats.summary()
    record_info = stats.requests["record-info"]
    poll_faults = stats.faults_by_endpoint["record-info"]
    poll_retries = record_info - sum(stats.polls.values())
    submit_455 = posts - stats.tasks_created - stats.rate_limited - submit_faults
    planned = collections.Counter(kind_of(job) for job in observed.plan.jobs_to_run())
    for job in observed.not_run:
        tally.kinds[kind_of(job)].count(Ending.NOT_RUN)
    kinds = {
        kind: {
            "jobs": planned[kind],
            "done": tally.kinds[kind].done,
            "failed": tally.kinds[kind].failed,
            "uncertain": tally.kinds[kind].uncertain,
            "not_run": tally.kinds[kind].not_run,
            "tasks_billed": stats.tasks_by_endpoint[ENDPOINTS[kind]],
        }
        for kind in KINDS
    }
    figures: dict[str, Any] = {
        "seed": None,  # filled in by the command
        "prompts": observed.plan.prompts,
        "jobs": observed.plan.jobs,
        "kinds": kinds,
        "done": tally.done,
        "failed": tally.failed_create + tally.failed_generate,
        "failed_create": tally.failed_create,
        "failed_generate": tally.failed_generate,
        "uncertain": tally.uncertain,
        "not_run": len(observed.not_run),
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
        "posts": posts,
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


def _check_files(
    kind: str, outcome: midvary.JobOutcome, observed: Observed, what: str
) -> Iterator[str]:
    """Problems with the images of one succeeded job (none when all are there)."""
    record = outcome.record
    assert record is not None  # noqa: S101 - a succeeded outcome has its record
    expected = 1 if kind == "upscale" else observed.settings.images_per_task
    if len(record.image_urls) != expected or len(outcome.paths) != expected:
        yield (
            f"{what}: {len(outcome.paths)} files for {len(record.image_urls)} "
            f"image URLs, {expected} expected"
        )
    for n, path in enumerate(outcome.paths):
        if path.name != f"{record.task_id}_{n}.png" or path.parent != observed.out:
            yield f"{what}: unexpected file name {path}"
        try:
            with path.open("rb") as file:
                head = file.read(len(PNG_SIGNATURE))
        except OSError as exc:
            yield f"{what}: cannot read {path}: {exc}"
            continue
        if head != PNG_SIGNATURE:
            yield f"{what}: {path} is not a PNG image"
