"""The reliability campaigns' scenarios: each runs seeded jobs and returns its figures.

The campaign tests (``tests/campaigns/test_*.py``) run them at two sizes and assert the
invariants on the figures; ``python -m benchmarks.campaign_figures`` runs the large sizes and
prints the figures. Times are never asserted.

Accounting, the same for every scenario: a job is *lost* when it has no outcome (or no final
results line), or when the fake provider created (and billed) a task that no outcome names,
neither by its task id nor as an uncertain submission of the same request. Every request of
a scenario is distinct, so the fake's ``duplicate_submissions`` counts every second task
made for one job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

import midvary
import midvary.testing
from midvary._cli.tally import Ending, Tally
from midvary.testing import FakeProvider, FakeSettings

from ..bulk_support import job_rows, store_path
from ..conditions import until
from ..test_bulk_resume import command, environment, result_lines

Kind = midvary.JobEventKind

#: Polling for campaigns: the fast test mode with a little jitter and a generous deadline.
POLL = attrs.evolve(midvary.testing.FAST_POLL, jitter=0.01, timeout=60.0)
#: Retries for submissions: enough attempts to outlast a maintenance window or a 429 storm.
PATIENT_RETRY = attrs.evolve(
    midvary.testing.FAST_RETRY, attempts=60, wait_max=0.1, wait_jitter=0.02, max_retry_after=1.0
)


@attrs.define(kw_only=True)
class Figures(Tally):
    """What one campaign run did; see the module docstring for ``lost``.

    The :class:`~midvary._cli.tally.Tally` (the CLI's) counts the jobs that ended: ``done``,
    ``failed`` (for a reason that is not uncertain) and ``uncertain`` (their submission may
    have been billed).

    Attributes:
        campaign: The campaign's name and size.
        jobs: Jobs given to the client.
        unfinished: Jobs a stopped fan-out abandoned, listed in ``FanOut.unfinished`` with
            their task ids (the uncertain ones among them are counted in ``uncertain``).
        lost: Jobs without an outcome, plus billed tasks that no outcome accounts for.
        duplicates: Tasks the fake created twice for the same request.
        tasks_created: Tasks the fake created (each one billed).
        faults: Faults the fake injected, by kind, with its 455 and 429 answers.
        poll_retries: Polls the client retried after a transient failure.
        submit_retries: Submissions the client re-sent because they were certainly refused.
        rate_limit_waits: Waits after a 429 (``RATE_LIMITED`` events with an error).
        limiter_waits: Waits the client's own rate limiter imposed.
        kills: Times the client process was SIGKILLed (crash campaign).
        wall: Seconds the run took.
    """

    campaign: str
    jobs: int
    unfinished: int = 0
    lost: int = 0
    duplicates: int = 0
    tasks_created: int = 0
    faults: dict[str, int] = attrs.field(factory=dict)
    poll_retries: int = 0
    submit_retries: int = 0
    rate_limit_waits: int = 0
    limiter_waits: int = 0
    kills: int = 0
    wall: float = 0.0

    def row(self) -> dict[str, Any]:
        """The figures as one row of a table."""
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()) if n)
        return {
            "campaign": self.campaign,
            "jobs": self.jobs,
            "ok": self.done,
            "failed": self.failed,
            "uncertain": self.uncertain,
            "unfinished": self.unfinished,
            "lost": self.lost,
            "dup": self.duplicates,
            "billed": self.tasks_created,
            "faults injected": faults or "-",
            "poll retries": self.poll_retries,
            "429 waits": self.rate_limit_waits,
            "limiter waits": self.limiter_waits,
            "kills": self.kills,
            "wall s": f"{self.wall:.1f}",
        }


# -- helpers ----------------------------------------------------------------------------------


def requests(count: int, *, prefix: str = "parent-") -> list[midvary.VaryRequest]:
    """``count`` distinct requests (4 images per parent), so any duplicate would show."""
    return [
        midvary.VaryRequest(task_id=f"{prefix}{n // 4}", image_index=n % 4, id=f"job-{n}")
        for n in range(count)
    ]


def key_of(params: Any) -> tuple[str, int, str | None]:
    """The identity of a request or of a fake task: parent, image index, watermark."""
    parent = getattr(params, "parent_task_id", None) or params.task_id
    return parent, params.image_index, params.water_mark


class RetryCounter(logging.Handler):
    """Counts the client's retries from the one log line its retry module writes per retry."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.polls = 0
        self.submissions = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count ``record`` if it announces a retry."""
        what = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        if not isinstance(what, str) or "retrying" not in record.msg:
            return
        if what.startswith("poll of task"):
            self.polls += 1
        elif what == "submission":
            self.submissions += 1


@contextlib.contextmanager
def counting_retries() -> Iterator[RetryCounter]:
    """Count the client's retries while the block runs."""
    logger = logging.getLogger("midvary._retry")
    counter = RetryCounter()
    level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


class EventLog:
    """An ``on_event`` hook that keeps per-job counts of each event kind."""

    def __init__(self, then: Callable[[midvary.JobEvent], None] | None = None) -> None:
        self.counts: dict[int, collections.Counter[Kind]] = collections.defaultdict(
            collections.Counter
        )
        self.task_ids: dict[int, str] = {}
        self.refusals: collections.Counter[int] = collections.Counter()
        self.rate_limit_waits = 0
        self.limiter_waits = 0
        self._then = then

    def __call__(self, event: midvary.JobEvent) -> None:
        """Count ``event``."""
        self.counts[event.index][event.kind] += 1
        if event.kind is Kind.SUBMITTED and event.task_id is not None:
            self.task_ids[event.index] = event.task_id
        if event.kind is Kind.RATE_LIMITED:
            if event.error is not None:
                self.rate_limit_waits += 1
                self.refusals[event.index] += 1
            else:
                self.limiter_waits += 1
        if self._then is not None:
            self._then(event)


def fault_figures(fake: FakeProvider) -> dict[str, int]:
    """The faults the fake injected by kind, with its maintenance and rate-limit answers."""
    faults = dict(fake.stats.faults)
    faults["455"] = fake.stats.codes[455]
    faults["429"] = fake.stats.rate_limited
    faults["lost answer"] = fake.stats.dropped_submit_answers
    return faults


def account(
    figures: Figures,
    fake: FakeProvider,
    jobs: Sequence[midvary.VaryRequest],
    outcomes: Iterable[midvary.JobOutcome],
) -> list[midvary.JobOutcome]:
    """Fill ``figures`` from the outcomes and the fake's figures; return the outcomes by index.

    Raises:
        AssertionError: Two outcomes share an index, or an outcome is about another request.
    """
    by_index: dict[int, midvary.JobOutcome] = {}
    for outcome in outcomes:
        assert outcome.index not in by_index, f"two outcomes for job {outcome.index}"
        assert outcome.request == jobs[outcome.index], outcome
        by_index[outcome.index] = outcome
    figures.add_all(by_index.values())
    claimed_ids = {o.task_id for o in by_index.values() if o.task_id is not None}
    uncertain_keys = {key_of(o.request) for o in by_index.values() if o.uncertain and o.request}
    unaccounted = [
        task
        for task in fake.tasks.values()
        if task.task_id not in claimed_ids and key_of(task) not in uncertain_keys
    ]
    figures.lost = (len(jobs) - len(by_index)) + len(unaccounted)
    figures.duplicates = fake.stats.duplicate_submissions
    figures.tasks_created = fake.stats.tasks_created
    figures.faults = fault_figures(fake)
    return [by_index[n] for n in sorted(by_index)]


@contextlib.asynccontextmanager
async def fake_and_session(
    settings: FakeSettings,
    *,
    seed: int,
    retry: midvary.RetryPolicy = PATIENT_RETRY,
    submit_rate: tuple[int, float] | None = None,
    **session_options: Any,
) -> AsyncIterator[tuple[FakeProvider, midvary.Session]]:
    """A seeded fake provider and a campaign session against it."""
    async with FakeProvider(settings=settings, seed=seed) as fake:
        session = midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=POLL,
            retry=retry,
            seed=seed,
            submit_rate=submit_rate,
            **session_options,
        )
        async with session:
            yield fake, session


# -- campaign 1: faulted polls and maintenance windows --------------------------------------


async def faulted_polls(
    jobs: int,
    *,
    seed: int,
    concurrency: int,
    maintenance: Sequence[tuple[float, float]],
    collect: Literal["submit_all", "submit_many"] = "submit_all",
) -> Figures:
    """``jobs`` jobs with 20% of record-info answers faulted (every kind) and maintenance.

    ``maintenance``: windows as ``(share, seconds)``: one opens once ``share`` of the jobs'
    tasks exist and stays open ``seconds`` and until the fake answered a 455 in it (see
    :func:`maintenance_windows`).
    """
    figures = Figures(campaign=f"1 faulted polls ({collect})", jobs=jobs)
    settings = FakeSettings(
        task_duration=(0.05, 0.4),
        invisible_for=0.05,
        submit_limit=None,
        fault_rate=0.2,
        fault_endpoints=["record-info"],
    )
    work = requests(jobs)
    events = EventLog()
    async with fake_and_session(settings, seed=seed) as (fake, session):
        windows = asyncio.create_task(maintenance_windows(fake, jobs, maintenance))
        with counting_retries() as retries:
            started = time.perf_counter()
            if collect == "submit_all":
                outcomes = await session.submit_all(work, concurrency=concurrency, on_event=events)
            else:
                outcomes = []
                async with session.submit_many(
                    _trickle(work), concurrency=concurrency, on_event=events
                ) as fanout:
                    async for outcome in fanout:
                        outcomes.append(outcome)
            figures.wall = time.perf_counter() - started
        await windows  # every window was over before the last task could end
        account(figures, fake, work, outcomes)
    figures.poll_retries = retries.polls
    figures.submit_retries = retries.submissions
    figures.rate_limit_waits = events.rate_limit_waits
    figures.limiter_waits = events.limiter_waits
    return figures


async def maintenance_windows(
    fake: FakeProvider, jobs: int, windows: Sequence[tuple[float, float]]
) -> None:
    """Maintenance (every endpoint answers 455) in ``windows`` of the run's progress.

    Each ``(share, seconds)`` opens once ``share`` of the ``jobs`` tasks exist (so jobs are
    still being submitted and polled) and closes after ``seconds`` once the fake answered a
    455 in it. Tied to progress, not to the fake's clock, so that a loaded machine (a run
    slower than planned) still has its windows in the middle of the run.
    """
    for share, seconds in windows:
        await until(lambda: fake.stats.tasks_created >= share * jobs, timeout=300)  # noqa: B023
        answered = fake.stats.codes[455]
        fake.set_maintenance(True)
        await asyncio.sleep(seconds)  # the window's length
        await until(lambda: fake.stats.codes[455] > answered)  # noqa: B023
        fake.set_maintenance(False)


async def _trickle(items: Iterable[midvary.VaryRequest]) -> AsyncIterator[midvary.VaryRequest]:
    """The items as an async iterable that yields to the loop between items."""
    for item in items:
        await asyncio.sleep(0)
        yield item


# -- campaign 2: submit storms ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StormRun:
    """A submit storm's figures, with what the tests check beyond them."""

    figures: Figures
    outcomes: list[midvary.JobOutcome]
    events: EventLog
    fake_tasks: dict[tuple[str, int, str | None], list[str]]
    submit_posts: int


async def submit_storm(
    jobs: int,
    *,
    seed: int,
    concurrency: int,
    session_rate: tuple[int, float] | None,
    fake_limit: tuple[int, float] = (5, 0.1),
    attempts: int = PATIENT_RETRY.attempts,
) -> StormRun:
    """429 storm (a tight fake limit until half the jobs are in), lost and faulted answers."""
    told = "None" if session_rate is None else f"{session_rate[0]}/{session_rate[1]:g}s"
    figures = Figures(campaign=f"2 submit storm (client limit {told})", jobs=jobs)
    settings = FakeSettings(
        task_duration=(0.05, 0.2),
        invisible_for=0.02,
        submit_limit=fake_limit,
        fault_rate=0.05,
        fault_endpoints=["submit"],
        drop_submit_answer_rate=0.05,
    )
    work = requests(jobs)
    retry = attrs.evolve(PATIENT_RETRY, attempts=attempts)
    async with fake_and_session(settings, seed=seed, retry=retry, submit_rate=session_rate) as (
        fake,
        session,
    ):
        submitted = 0

        def relax(event: midvary.JobEvent) -> None:
            # The storm lasts until half the jobs are in; then the provider relaxes.
            nonlocal submitted
            if event.kind is Kind.SUBMITTED:
                submitted += 1
                if submitted == jobs // 2:
                    fake.update(submit_limit=(fake_limit[0] * 10, fake_limit[1]))

        events = EventLog(then=relax)
        with counting_retries() as retries:
            started = time.perf_counter()
            outcomes = await session.submit_all(work, concurrency=concurrency, on_event=events)
            figures.wall = time.perf_counter() - started
        ordered = account(figures, fake, work, outcomes)
        tasks: dict[tuple[str, int, str | None], list[str]] = collections.defaultdict(list)
        for task in fake.tasks.values():
            tasks[key_of(task)].append(task.task_id)
        posts = fake.stats.requests["submit"]
    figures.poll_retries = retries.polls
    figures.submit_retries = retries.submissions
    figures.rate_limit_waits = events.rate_limit_waits
    figures.limiter_waits = events.limiter_waits
    return StormRun(
        figures=figures, outcomes=ordered, events=events, fake_tasks=tasks, submit_posts=posts
    )


# -- campaign 3: crash and resume ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class CrashRun:
    """A crash campaign's figures, with the files and outputs the tests check."""

    figures: Figures
    results: Path
    store: Path
    exit_code: int
    output: str
    rerun_exit_code: int
    rerun_output: str
    submit_posts_before_rerun: int
    submit_posts_after_rerun: int


def write_jobs(path: Path, count: int) -> list[midvary.VaryRequest]:
    """A CSV JOBS file of ``count`` distinct jobs with ids; return their requests."""
    work = requests(count)
    rows = "".join(f"{r.task_id},{r.image_index},,{r.id}\n" for r in work)
    path.write_text("task_id,image_index,water_mark,id\n" + rows)
    return work


async def run_cli(
    fake: FakeProvider, *argv: str, kill_when: Callable[[], bool] | None = None
) -> tuple[int | None, str]:
    """Run ``midvary ARGV`` in a subprocess against ``fake``; SIGKILL it once ``kill_when()``.

    Returns:
        The exit code (``None`` if it was killed) and everything it printed.
    """
    process = await asyncio.create_subprocess_exec(
        *command(),
        *argv,
        env=environment(fake),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output = asyncio.ensure_future(process.communicate())
    killed = False
    if kill_when is not None:
        async with asyncio.timeout(60):
            while not output.done() and not kill_when():  # noqa: ASYNC110 - nothing signals it
                await asyncio.sleep(0.002)
        if not output.done():
            process.kill()
            killed = True
    async with asyncio.timeout(60):
        out, err = await output
    return (None if killed else process.returncode), out.decode() + err.decode()


async def crash_resume(jobs: int, *, seed: int, kills: int, workdir: Path) -> CrashRun:
    """``midvary bulk`` SIGKILLed at ``kills`` seeded moments, resumed, then run once more.

    A kill moment is the n-th API request the fake receives in that run, n drawn (seeded)
    between 1 and the fewest requests the run has left to make (two per job to submit, one
    per job to await): it lands among submissions, polls and result writes alike. The fake
    loses 5% of submit answers, faults 10% of polls, and answers each request after 0 to
    50 ms, so kills also cut POSTs in flight.
    """
    rng = random.Random(f"campaign-3:{seed}")
    figures = Figures(campaign=f"3 crash and resume ({kills} kills)", jobs=jobs)
    jobs_path = workdir / "jobs.csv"
    work = write_jobs(jobs_path, jobs)
    results = workdir / "jobs.csv.results.jsonl"
    store = store_path(jobs_path)
    argv = ("bulk", str(jobs_path), "--concurrency", "8", "--submit-rate", "1000", "1", "-v")
    settings = FakeSettings(
        task_duration=(0.2, 1.0),
        invisible_for=0.05,
        submit_limit=None,
        latency=(0.0, 0.05),
        fault_rate=0.1,
        fault_endpoints=["record-info"],
        drop_submit_answer_rate=0.05,
    )
    outputs: list[str] = []
    async with FakeProvider(settings=settings, seed=seed) as fake:

        def api_requests() -> int:
            return fake.stats.requests["submit"] + fake.stats.requests["record-info"]

        started = time.perf_counter()
        for _kill in range(kills):
            # At least one request per job to poll, two per job to submit: the kill comes
            # before this run's last request.
            states = collections.Counter(state for _key, state, _task in job_rows(store))
            requests_left = 2 * (jobs - states.total() + states["pending"]) + states["submitted"]
            if not requests_left:
                break
            before, threshold = api_requests(), rng.randint(1, requests_left)
            code, text = await run_cli(
                fake, *argv, kill_when=lambda b=before, t=threshold: api_requests() - b >= t
            )
            outputs.append(text)
            figures.kills += code is None
        code, output = await run_cli(fake, *argv)
        figures.wall = time.perf_counter() - started
        assert code is not None
        posts = fake.stats.requests["submit"]
        rerun_code, rerun_output = await run_cli(fake, *argv)
        assert rerun_code is not None
        outputs += [output, rerun_output]
        last = {line["id"]: line for line in result_lines(results)}
        for line in last.values():
            figures.count(Ending(line["status"]))
        claimed = {line["task_id"] for line in last.values()} - {None}
        uncertain = {
            (line["parent_task_id"], line["image_index"], line["water_mark"])
            for line in last.values()
            if line["status"] == "uncertain"
        }
        unaccounted = [
            task
            for task in fake.tasks.values()
            if task.task_id not in claimed and key_of(task) not in uncertain
        ]
        figures.lost = len({r.id for r in work} - set(last)) + len(unaccounted)
        figures.duplicates = fake.stats.duplicate_submissions
        figures.tasks_created = fake.stats.tasks_created
        figures.faults = fault_figures(fake)
        figures.poll_retries = sum(
            text.count("retrying") - text.count("submission failed") for text in outputs
        )
        return CrashRun(
            figures=figures,
            results=results,
            store=store,
            exit_code=code,
            output=output,
            rerun_exit_code=rerun_code,
            rerun_output=rerun_output,
            submit_posts_before_rerun=posts,
            submit_posts_after_rerun=fake.stats.requests["submit"],
        )


# -- campaign 6: a fan-out cancelled mid-way -----------------------------------------------


@attrs.frozen(kw_only=True)
class CancelRun:
    """A cancelled fan-out's figures, with what the tests check beyond them."""

    figures: Figures
    unfinished: tuple[midvary.UnfinishedJob, ...]
    handed_out: list[midvary.JobOutcome]
    announced: dict[int, str]


async def cancelled_fan_out(jobs: int, *, seed: int, concurrency: int, after: int) -> CancelRun:
    """``submit_many`` over ``jobs`` jobs, its consumer cancelled at the ``after``-th POST.

    Tasks take 0.02 to 2 s and POSTs 0 to 20 ms, so the cancellation finds jobs handed out,
    jobs awaiting their task, and POSTs in flight.
    """
    figures = Figures(campaign="6 fan-out cancelled mid-way", jobs=jobs)
    settings = FakeSettings(
        task_duration=(0.02, 2.0), invisible_for=0.0, submit_limit=None, latency=(0.0, 0.02)
    )
    enough = asyncio.Event()

    posts = 0

    def stop_after(event: midvary.JobEvent) -> None:
        nonlocal posts
        if event.kind is Kind.SUBMITTING:
            posts += 1
            if posts >= after:  # this POST is about to leave: the cancel may cut it
                enough.set()

    events = EventLog(then=stop_after)
    handed_out: list[midvary.JobOutcome] = []
    async with fake_and_session(settings, seed=seed) as (fake, session):
        fanout = session.submit_many(requests(jobs), concurrency=concurrency, on_event=events)

        async def consume() -> None:
            async for outcome in fanout:
                handed_out.append(outcome)  # noqa: PERF401 - kept when cancelled

        started = time.perf_counter()
        consumer = asyncio.create_task(consume())
        await enough.wait()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        figures.wall = time.perf_counter() - started
        unfinished = fanout.unfinished
        await fake.close()  # POSTs cut in flight still create their tasks: let them finish
    named = {o.task_id for o in handed_out} | {j.task_id for j in unfinished}
    cut = sum(1 for job in unfinished if job.uncertain)
    unnamed = [task for task_id, task in fake.tasks.items() if task_id not in named]
    figures.add_all(handed_out)
    figures.count(Ending.UNCERTAIN, cut)
    figures.unfinished = len(unfinished) - cut
    # Lost: a billed task named nowhere, beyond the POSTs reported cut (uncertain).
    figures.lost = max(0, len(unnamed) - cut)
    figures.duplicates = fake.stats.duplicate_submissions
    figures.tasks_created = fake.stats.tasks_created
    figures.faults = fault_figures(fake)
    return CancelRun(
        figures=figures,
        unfinished=unfinished,
        handed_out=handed_out,
        announced=dict(events.task_ids),
    )


# -- campaign 7: one slow POST in a batch ---------------------------------------------------


async def slow_post_in_batch(
    jobs: int, *, slow: int, timeout: float = 0.2
) -> tuple[Figures, list[midvary.JobOutcome]]:
    """``jobs`` jobs; the POST of job ``slow`` is answered after 3 x ``timeout`` seconds.

    The session sends one POST at a time (``submit_rate=(1, 0.001)``), so the latency set
    just before a POST is sent applies to that POST alone (and to the polls meanwhile,
    which time out and are retried).
    """
    figures = Figures(campaign="7 one slow POST in a batch", jobs=jobs)
    settings = FakeSettings(task_duration=(0.05, 0.1), invisible_for=0.0, submit_limit=None)
    work = requests(jobs)
    async with FakeProvider(settings=settings, seed=slow) as fake:

        def on_event(event: midvary.JobEvent) -> None:
            if event.kind is Kind.SUBMITTING:
                fake.update(latency=timeout * 3 if event.index == slow else 0.0)
            elif event.kind is Kind.FAILED and event.index == slow:
                fake.update(latency=0.0)

        session = midvary.Session(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll=POLL,
            retry=PATIENT_RETRY,
            request_timeout=timeout,
            submit_rate=(1, 0.001),
        )
        with counting_retries() as retries:
            async with session:
                started = time.perf_counter()
                outcomes = await session.submit_all(work, concurrency=6, on_event=on_event)
                figures.wall = time.perf_counter() - started
        # The slow POST's handler goes on after the client gave up: it creates its task.
        async with asyncio.timeout(10):
            while fake.stats.tasks_created < jobs:  # noqa: ASYNC110 - nothing signals it
                await asyncio.sleep(0.005)
        ordered = account(figures, fake, work, outcomes)
    figures.poll_retries = retries.polls
    return figures, ordered
