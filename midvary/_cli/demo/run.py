"""Running the demo: start the fake provider, run the workflow through ``submit_many``, observe.

The fan-out's input is bulk's :class:`~midvary._cli.feed.Feed`: the generate jobs at once,
then each grid's children (4 varies, 1 upscale) as soon as the grid succeeds, in the same
fan-out, through the same limiter.

What the run saw is returned as an :class:`Observed`, for :func:`midvary._cli.demo.assess.assess`
to check; nothing here judges it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

import attrs

import midvary
from midvary.testing import FakeProvider, FakeSettings, FakeStats, TaskSnapshot

from ..chain import action_of
from ..feed import Feed
from ..gallery import make_gallery
from ..jobs import BulkJob
from ..progress import Progress
from ..results import outcome_line
from ..tally import Ending
from .plan import DemoPlan

#: The whole run, fake provider included, is cut after this many seconds (exit 1).
DEADLINE: Final = 55.0
#: Seconds each job may wait for its task once submitted.
JOB_TIMEOUT: Final = 40.0


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
    outcomes: tuple[midvary.JobOutcome, ...]
    jobs: tuple[BulkJob, ...]
    not_run: tuple[BulkJob, ...]
    events: EventCounts
    stats: FakeStats
    fake_tasks: dict[str, TaskSnapshot]
    out: Path
    wall: float
    deadline: float
    unfinished: tuple[midvary.UnfinishedJob, ...] = ()
    timed_out: bool = False

    def job_of(self, outcome: midvary.JobOutcome) -> BulkJob:
        """The job ``outcome`` is the end of (``jobs`` is in the fan-out's input order)."""
        return self.jobs[outcome.index]


async def run_demo(plan: DemoPlan, *, out: Path, seed: int, progress: Progress) -> Observed:
    """Start the fake provider, run the workflow through ``Session.submit_many``, and observe.

    Args:
        plan: The fake's habits and the client's settings.
        out: The directory to download the images into.
        seed: Seeds the fake's draws and the session's jitter.
        progress: Counts the job events and shows them.

    Returns:
        What happened, for :func:`midvary._cli.demo.assess.assess`.

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

    outcomes: list[midvary.JobOutcome] = []

    async def place(job: BulkJob) -> bool:
        if job.request is not None:
            feed.add(job, job.request)
        else:
            feed.add_child(job)
        return True

    feed = Feed(plan.jobs_to_run(), place=place, retry_after=lambda: 1.0, key_of=lambda _: None)
    timed_out = False
    deadline = DEADLINE
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
            fanout = session.submit_many(
                feed.items(),
                concurrency=plan.concurrency,
                timeout=JOB_TIMEOUT,
                on_event=on_event,
                download=out,
            )
            with progress:
                try:
                    async with asyncio.timeout(deadline), fanout:
                        async for outcome in fanout:
                            outcomes.append(outcome)
                            job = feed.to_run[outcome.index]
                            _show(progress, job, outcome)
                            feed.ended(job, outcome)
                            if job.then and not outcome.ok:
                                why = "is uncertain" if outcome.uncertain else "failed"
                                for child in job.children():
                                    progress.ended(
                                        Ending.NOT_RUN, f"{child.key} not run: its grid {why}"
                                    )
                except TimeoutError:
                    timed_out = True
        wall = time.monotonic() - started
        fake_tasks = dict(fake.tasks)
    return Observed(
        plan=plan,
        settings=settings,
        outcomes=tuple(sorted(outcomes, key=lambda outcome: outcome.index)),
        jobs=tuple(feed.to_run),
        not_run=tuple(feed.orphans()),
        events=events,
        stats=fake.stats,
        fake_tasks=fake_tasks,
        out=out,
        wall=wall,
        deadline=deadline,
        unfinished=fanout.unfinished,
        timed_out=timed_out,
    )


def describe(job: BulkJob, outcome: midvary.JobOutcome) -> str:
    """What the job asked for and its key, e.g. ``vary(fakegen..., image 2) [prompt-1/vary2]``."""
    request = outcome.request
    return request.describe() if request is not None else f"{action_of(job.request)} [{job.key}]"


def _show(progress: Progress, job: BulkJob, outcome: midvary.JobOutcome) -> None:
    """Count one outcome; describe a failed or uncertain one as it comes."""
    ending, error = Ending.of(outcome), outcome.error
    progress.ended(  # the message is for a job that is not done
        ending, f"{describe(job, outcome)} {ending.value}: {type(error).__name__}: {error}"
    )


def write_demo_gallery(observed: Observed) -> Path:
    """Write ``results.jsonl`` (as ``bulk`` would) and its gallery ``index.html`` into ``out``.

    Each line is the one ``bulk`` would write for the same job: a grid's has its prompt, a
    child's its ``parent`` (the grid's job key), so the page shows each grid with its
    children.

    Returns:
        The gallery page's path.

    """
    lines = [outcome_line(observed.job_of(outcome), outcome) for outcome in observed.outcomes]
    observed.out.mkdir(parents=True, exist_ok=True)
    results = observed.out / "results.jsonl"
    results.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return make_gallery(results, observed.out / "index.html", announce=False)
