"""Running the demo: start the fake provider, run every job through ``vary_many``, observe.

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
from midvary.testing import FakeProvider, FakeSettings, FakeStats, SuccessFlag

from ..gallery import make_gallery
from ..jobs import BulkJob
from ..progress import Progress
from ..results import result_line
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
    outcomes: tuple[midvary.VaryOutcome, ...]
    events: EventCounts
    stats: FakeStats
    fake_outcomes: dict[str, SuccessFlag]
    out: Path
    wall: float
    deadline: float
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

    outcomes: list[midvary.VaryOutcome] = []
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
            fanout = session.vary_many(
                plan.requests(),
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
        deadline=deadline,
        unfinished=fanout.unfinished,
        timed_out=timed_out,
    )


def describe(outcome: midvary.VaryOutcome) -> str:
    """``job N`` and what the job asked for, for people."""
    request = outcome.request
    return f"job {outcome.index} {request.describe() if request is not None else ''}".rstrip()


def _show(progress: Progress, outcome: midvary.VaryOutcome) -> None:
    """Count one outcome; describe a failed or uncertain one as it comes."""
    ending = Ending.of(outcome)
    if ending is Ending.DONE:
        progress.ended(ending)
        return
    error = outcome.error
    progress.ended(ending, f"{describe(outcome)} {ending.value}: {type(error).__name__}: {error}")


def write_demo_gallery(observed: Observed) -> Path:
    """Write ``results.jsonl`` (as ``bulk`` would) and its gallery ``index.html`` into ``out``.

    Returns:
        The gallery page's path.

    """
    lines = []
    for outcome in observed.outcomes:
        if outcome.request is None:
            continue
        job = BulkJob(
            key=f"job-{outcome.index + 1}",
            line=outcome.index + 1,
            content="",
            request=outcome.request,
        )
        lines.append(
            result_line(
                job,
                Ending.of(outcome),
                task_id=outcome.task_id,
                record=outcome.record,
                error=outcome.error,
                paths=outcome.paths,
            )
        )
    observed.out.mkdir(parents=True, exist_ok=True)
    results = observed.out / "results.jsonl"
    results.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return make_gallery(results, observed.out / "index.html", announce=False)
