"""Fan-out: many jobs (vary, generate, upscale, extend) with bounded concurrency, one outcome each.

A :class:`FanOut` pulls requests from its input only as slots free up, runs each job in its
own task (submit, await the handle, download) and hands out one :class:`JobOutcome` per job
in completion order; a job's failure is its outcome. It owns its job tasks: closing it (or
its session) cancels and awaits them. What stops it sending (an account-wide refusal,
``max_tasks``) is told in ``Session.submit_many``; the jobs held back are *not sent*.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    Self,
    TypeAlias,
    cast,
)

from typing_extensions import TypeVar

from . import _telemetry as telemetry
from ._config import USE_DEFAULT
from ._errors import (
    ACCOUNT_STOPPING,
    APIError,
    RateLimitError,
    SessionClosedError,
    SubmitUncertainError,
)
from ._handle import TaskHandle
from ._jobs import (
    FanOutOptions,
    JobEvent,
    JobEventKind,
    JobFailed,
    JobOutcome,
    JobSucceeded,
    Outcome,
    UnfinishedJob,
)
from ._models import SubmitRequest, TaskRecord
from ._submit import REQUEST_CLASSES, is_request

if TYPE_CHECKING:
    from ._core import SessionCore
    from ._submit import Submitter

logger = logging.getLogger(__name__)

Owner = TypeVar("Owner")
Keywords = ParamSpec("Keywords")
#: A fan-out's request type (its outcomes' ``request``): what its input holds (``Any`` when
#: not said: a bare ``FanOut`` annotation).
R = TypeVar("R", default=Any)
T = TypeVar("T")

#: The requests a fan-out accepts: any iterable or async iterable of requests (or handles).
Requests: TypeAlias = Iterable[R | TaskHandle] | AsyncIterable[R | TaskHandle]


class _Job:
    """The mutable state of one job while its task runs, and its submission's hooks.

    What the submitter reports about the job's submission attempts (a ``SubmitHooks``)
    updates it and becomes the fan-out's events.
    """

    __slots__ = (
        "billable",
        "by_key",
        "fanout",
        "index",
        "item",
        "outcome",
        "posting",
        "recovering",
        "request",
        "task_id",
    )

    def __init__(self, fanout: FanOut[Any], index: int, item: object) -> None:
        self.fanout = fanout
        self.index = index
        self.item = item
        self.request: SubmitRequest | None = item if is_request(item) else None
        self.task_id: str | None = None
        self.posting = False
        # Its key already named a task: nothing was sent.
        self.by_key = False
        # Its answer was lost and it waits for the provider's callback (None: it does not;
        # False: it was not recovered; True: it was).
        self.recovering: bool | None = None
        self.outcome: Outcome[Any] | None = None
        # A POST of this job was sent: it counts against max_tasks unless certainly refused.
        self.billable = False

    def unfinished(self) -> UnfinishedJob:
        if self.outcome is not None:
            uncertain = self.outcome.uncertain
            task_id = self.outcome.task_id
        else:
            sent = self.posting or self.recovering is not None
            uncertain, task_id = sent and self.task_id is None, self.task_id
        return UnfinishedJob(
            index=self.index, request=self.request, task_id=task_id, uncertain=uncertain
        )

    def before_post(self) -> None:
        # If the hook raises, nothing is sent: the job is not "posting" then.
        self.fanout._may_post(self)
        self.fanout._emit(JobEventKind.SUBMITTING, self)
        self.posting = True

    def after_post(self) -> None:
        self.posting = False

    def waiting(self, seconds: float, error: RateLimitError | None = None) -> None:
        self.fanout._emit(JobEventKind.RATE_LIMITED, self, wait=seconds, error=error)

    def retrying(self, error: BaseException, seconds: float) -> None:
        self.fanout._retrying(self, error, seconds)

    def reattached(self) -> None:
        self.by_key = True

    def recovered(self) -> None:
        self.recovering = True


def check_requests(requests: T) -> T:
    """``requests`` if it is an iterable or async iterable of jobs, else raise ``TypeError``."""
    if (
        isinstance(requests, str | bytes | TaskHandle)
        or is_request(requests)
        or not (isinstance(requests, Iterable | AsyncIterable))
    ):
        raise TypeError(
            f"requests must be an iterable or async iterable of requests ({REQUEST_CLASSES}), "
            f"not {type(requests).__name__}"
        )
    return requests


class _NotSent(Exception):  # noqa: N818 - not an error: a job held back, never raised out
    """A job's POST is held back: the account stopped the fan-out, or ``max_tasks`` is used."""


class FanOut(Generic[R]):
    """An async iterator of :class:`JobOutcome`, one per job, in completion order.

    Generic in the request type ``R`` of its input: each outcome is an
    :data:`~midvary.Outcome` (``JobSucceeded[R] | JobFailed[R]``).

    Made by :meth:`Session.submit_many` (its keyword arguments become one
    :class:`FanOutOptions`); see there for what they mean. Iterate it with
    ``async for``; preferably inside ``async with`` (or :func:`contextlib.aclosing`), so that
    leaving the loop early cancels the jobs still in flight at once instead of when the
    session closes.

    Attributes:
        concurrency: The most jobs in flight (submitted or being submitted, and not final,
            or final with their outcome not yet taken).

    """

    def __init__(
        self,
        core: SessionCore,
        submitter: Submitter,
        requests: Requests[R],
        options: FanOutOptions,
    ) -> None:
        self._core = core
        self._submitter = submitter
        self._source = check_requests(requests)
        self._options = options
        self.concurrency = options.concurrency
        self._slots = asyncio.Semaphore(self.concurrency)
        self._driver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Outcome[R] | None]] = set()
        self._pending: dict[int, _Job] = {}
        self._ready: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._exhausted = False
        self._source_error: Exception | None = None
        self._closed = False
        # Every job's outcome was handed out (a fan-out closed early ends without this).
        self._complete = False
        self._unfinished: tuple[UnfinishedJob, ...] = ()
        # The account-wide refusal that stopped the fan-out sending, or None.
        self._stop: APIError | None = None
        # Submissions that may be billed (sent, not certainly refused), for max_tasks.
        self._billable = 0
        self._not_sent: list[UnfinishedJob] = []
        # The driver is inside the caller's iterable (never cancelled there).
        self._pulling = False
        # The span its jobs' spans hang under (started with the fan-out), and their count.
        self._span = telemetry.FanOutSpan(None, None)
        self._jobs = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._driver else "not started"
        return f"<FanOut {state} in_flight={len(self._tasks)} concurrency={self.concurrency}>"

    @property
    def unfinished(self) -> tuple[UnfinishedJob, ...]:
        """Jobs started and not handed out as outcomes, by input position.

        While the fan-out runs: the jobs in flight now, and those not sent. After it was
        cancelled or closed early: the jobs it abandoned, with the task ids of those that
        were submitted (and ``uncertain`` set for a submission cut in flight). After a full
        iteration: only the jobs not sent (``not_sent=True``: held back by ``max_tasks``
        or by an account-wide refusal; pending, nothing billed), else empty.
        """
        if self._closed:
            return self._unfinished
        jobs = [job.unfinished() for job in self._pending.values()]
        return tuple(sorted((*jobs, *self._not_sent), key=lambda job: job.index))

    @property
    def stopped_by(self) -> APIError | None:
        """The account-wide refusal (401, 402, 505) that stopped this fan-out, or ``None``."""
        return self._stop

    @property
    def billable(self) -> int:
        """Submissions of this fan-out that may be billed: accepted or uncertain."""
        return self._billable

    @property
    def capped(self) -> bool:
        """Whether ``max_tasks`` was reached (later jobs were not sent)."""
        cap = self._options.max_tasks
        return cap is not None and self._billable >= cap

    # -- iteration --------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome[R]:
        """The next outcome, in completion order.

        Raises:
            StopAsyncIteration: Every job's outcome was handed out.
            AuthenticationError, InsufficientCreditsError, FeatureDisabledError: The
                account refused a submission: nothing more was sent, and this is raised
                after the outcomes of the jobs already sent (see :attr:`unfinished`).
            Exception: Whatever the input iterable raised, after the outcomes of the jobs it
                had already yielded.

        """
        if self._closed:
            raise StopAsyncIteration
        self._start()
        try:
            while not self._ready and not (self._exhausted and not self._tasks):
                self._wakeup.clear()
                await self._wakeup.wait()
                if self._closed:  # closed by another task meanwhile
                    raise StopAsyncIteration
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if self._ready:
            job = self._ready.popleft()
            del self._pending[job.index]
            self._slots.release()
            assert job.outcome is not None  # noqa: S101 - set before the job is ready
            return job.outcome
        self._complete = True
        await self.aclose()
        error, self._source_error = self._source_error, None
        if error is not None:
            raise error
        if self._stop is not None:
            raise self._stop
        raise StopAsyncIteration

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel the jobs still in flight and wait until they have ended. Idempotent.

        Afterwards :attr:`unfinished` names the jobs whose outcome was not handed out.
        """
        if self._closed:
            return
        self._unfinished = self.unfinished
        self._closed = True
        self._core.fanouts.discard(self)
        tasks = [*self._tasks, *([self._driver] if self._driver is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._pending.clear()
        self._ready.clear()
        self._wakeup.set()
        self._span.end(jobs=self._jobs, billable=self._billable, stopped_by=self._stop)
        abandoned = [job for job in self._unfinished if job.task_id or job.uncertain]
        if self._not_sent:
            why = "the account refused" if self._stop is not None else "max_tasks was reached"
            logger.info("fan-out did not send %d jobs: %s", len(self._not_sent), why)
        if abandoned:
            logger.warning(
                "fan-out closed with %d submitted jobs unfinished (task ids: %s)",
                len(abandoned),
                ", ".join(job.task_id or "unknown (uncertain)" for job in abandoned),
            )

    # -- the driver: pulls requests as slots free up -------------------------------------

    def _start(self) -> None:
        if self._driver is None:
            self._core.check_open()
            self._core.fanouts.add(self)
            self._span = telemetry.fan_out()
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    async def _drive(self) -> None:
        try:
            async with contextlib.aclosing(self._pull()) as items:
                index = 0
                async for item in items:
                    job = _Job(self, index, item)
                    index += 1
                    self._pending[job.index] = job
                    if self._stop is not None or self.capped:  # no further job may be sent
                        self._held_back(job)
                        break
                    self._jobs += 1
                    task = asyncio.get_running_loop().create_task(
                        self._run(job), context=self._span.task_context()
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._job_ended)
        except Exception as exc:  # the caller's iterable failed: report it after the jobs
            logger.debug("fan-out input raised %r; finishing the jobs in flight", exc)
            self._source_error = exc
        finally:
            self._exhausted = True
            self._wakeup.set()

    async def _pull(self) -> AsyncGenerator[object, None]:
        """Yield the items of the input, taking a slot before pulling each one."""
        source, slots = self._source, self._slots
        items: AsyncIterator[object] | Iterator[object] = (
            aiter(source) if isinstance(source, AsyncIterable) else iter(source)
        )
        while True:
            await slots.acquire()
            self._pulling = True  # the caller's code runs: never cancelled there
            try:
                item = await anext(items) if isinstance(items, AsyncIterator) else next(items)
            except (StopIteration, StopAsyncIteration):
                slots.release()
                return
            finally:
                self._pulling = False
            yield item

    def _job_ended(self, task: asyncio.Task[JobOutcome | None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is None:
            outcome = task.result()
            if outcome is not None:
                job = self._pending.get(outcome.index)
                if job is not None:
                    self._ready.append(job)
        self._wakeup.set()

    # -- what stops sending -----------------------------------------------------------------

    def _may_post(self, job: _Job) -> None:
        """Raise :class:`_NotSent` if ``job`` may not POST now; else count it as billable."""
        if self._stop is not None:
            raise _NotSent("the account refused an earlier submission")
        if not job.billable:
            if self.capped:
                raise _NotSent("max_tasks submissions were sent")
            job.billable = True
            self._billable += 1

    def _stop_sending(self, error: APIError) -> None:
        """The account refused a submission: send nothing more (jobs in flight carry on)."""
        if self._stop is not None:
            return
        self._stop = error
        logger.warning(
            "the account refused a submission (%s: %s); this fan-out sends no further job",
            type(error).__name__,
            error,
        )
        driver = self._driver
        if driver is not None and not self._pulling:
            driver.cancel()  # it waits for a slot: nothing of the caller's is cut

    def _held_back(self, job: _Job) -> None:
        """``job`` was not sent (or refused for the account): pending, no outcome."""
        del self._pending[job.index]
        self._slots.release()
        self._not_sent.append(
            UnfinishedJob(
                index=job.index, request=job.request, task_id=None, uncertain=False, not_sent=True
            )
        )

    # -- one job ----------------------------------------------------------------------------

    async def _run(self, job: _Job) -> Outcome[R] | None:
        options = self._options
        record: TaskRecord | None = None
        paths: tuple[Path, ...] = ()
        error: Exception | None = None
        try:
            try:
                handle = await self._handle(job)
            except Exception as exc:
                job.posting = False
                if job.billable and not isinstance(exc, SubmitUncertainError):
                    job.billable = False  # certainly refused: nothing billed
                    self._billable -= 1
                if isinstance(exc, ACCOUNT_STOPPING):
                    self._stop_sending(exc)
                if isinstance(exc, (_NotSent, *ACCOUNT_STOPPING)):
                    self._held_back(job)
                    return None
                raise
            on_retry = job.retrying if options.on_event is not None else None
            record = await handle.wait(options.timeout, poll=options.poll, on_retry=on_retry)
            if options.download is not None:
                paths = await self._core.download(
                    record, options.download, concurrency=options.download_concurrency
                )
        except Exception as exc:  # one job's failure is that job's outcome
            job.posting = False
            record, error = None, exc
        common: dict[str, Any] = {  # the request: an item of the input, an R (or None)
            "index": job.index,
            "request": job.request,
            "task_id": job.task_id,
            "paths": paths,
            "recovered": job.recovering is True,
        }
        outcome: Outcome[R]
        if error is None:
            assert record is not None  # noqa: S101 - no error: the wait returned a record
            outcome = JobSucceeded(record=record, **common)
        else:
            outcome = JobFailed(error=error, **common)
        job.outcome = outcome
        kind = JobEventKind.DONE if error is None else JobEventKind.FAILED
        try:
            self._emit(kind, job, error=error, outcome=job.outcome)
        except Exception:
            # The job is over: a hook that fails now cannot change its outcome.
            logger.exception("on_event hook failed for %s of job %d", kind.name, job.index)
        return outcome

    async def _handle(self, job: _Job) -> TaskHandle:
        item = job.item
        if isinstance(item, TaskHandle):
            job.request, job.task_id = item.request, item.task_id
            return item
        if not is_request(item):
            raise TypeError(
                f"item {job.index} of the requests must be {REQUEST_CLASSES} "
                f"(or a TaskHandle), not {type(item).__name__}"
            )
        try:
            handle = await self._submitter.submit(item, job)
        except SubmitUncertainError as exc:
            # Its answer was lost: with a receiver, wait for the provider's callback while
            # its token lives, within the job's own deadline (the outcome is the error if
            # none confirms a task).
            recovery = self._submitter.recovery(exc)
            if recovery is None:
                raise
            job.recovering = False
            recovered = await recovery.wait(self._job_deadline())
            if recovered is None:
                raise
            job.recovering, handle = True, recovered
        job.task_id = handle.task_id
        self._emit(JobEventKind.SUBMITTED, job, reattached=job.by_key)
        return handle

    def _job_deadline(self) -> float | None:
        """Seconds each job may wait for its task (``timeout``, else the poll policy's)."""
        timeout = self._options.timeout
        return (
            (self._options.poll or self._core.poll).timeout if timeout is USE_DEFAULT else timeout
        )

    def _retrying(self, job: _Job, error: BaseException, seconds: float) -> None:
        # JobEvent.error is an Exception; a retried failure always is one.
        self._emit(
            JobEventKind.RETRYING,
            job,
            wait=seconds,
            error=error if isinstance(error, Exception) else None,
        )

    def _emit(self, kind: JobEventKind, job: _Job, **fields: Any) -> None:
        on_event = self._options.on_event
        if on_event is not None:
            on_event(
                JobEvent(
                    kind=kind, index=job.index, request=job.request, task_id=job.task_id, **fields
                )
            )


async def collect_all(fanout: FanOut[R]) -> list[Outcome[R]]:
    """Every outcome of ``fanout`` in input order (what ``Session.submit_all`` returns).

    When the call ends without its list (it is cancelled, the input raises, or the session
    closes), the task ids of the finished jobs it drops are logged as a warning.

    Raises:
        SessionClosedError: The session closed before every job finished.

    """
    outcomes: list[Outcome[R]] = []
    async with fanout:
        try:
            async for outcome in fanout:
                outcomes.append(outcome)  # noqa: PERF401 - kept if the loop raises
        except BaseException:
            _log_dropped(outcomes)
            raise
        if not fanout._complete:  # the session's close ended the loop, not the jobs
            _log_dropped(outcomes)
            raise SessionClosedError(
                "the Session was closed while submit_all was running; the task ids of its "
                "jobs are logged"
            )
    outcomes.sort(key=lambda outcome: outcome.index)
    return outcomes


def _log_dropped(outcomes: Sequence[JobOutcome[Any]]) -> None:
    """Log the task ids of finished jobs whose outcomes a failing ``submit_all`` drops."""
    dropped = [o for o in outcomes if o.task_id is not None or o.uncertain]
    if dropped:
        logger.warning(
            "submit_all ended early: %d finished jobs are not returned (task ids: %s)",
            len(dropped),
            ", ".join(o.task_id or "unknown (uncertain)" for o in dropped),
        )


class CollectAll(Protocol[Keywords]):
    """``Session.submit_all`` as type checkers see it: generic in the request type.

    It takes ``submit_many``'s keyword arguments (``Keywords``) and returns the outcomes
    of the requests' type (a list of :class:`VaryRequest` gives outcomes whose ``request``
    is a :class:`VaryRequest`).
    """

    def __call__(
        self, requests: Requests[T], /, *args: Keywords.args, **kwargs: Keywords.kwargs
    ) -> Coroutine[Any, Any, list[Outcome[T]]]:
        """Run every job; the outcomes in input order."""
        ...


class BlockingCollectAll(Protocol[Keywords]):
    """``SyncSession.submit_all`` as type checkers see it: :class:`CollectAll`, blocking."""

    def __call__(
        self, requests: Requests[T], /, *args: Keywords.args, **kwargs: Keywords.kwargs
    ) -> list[Outcome[T]]:
        """Run every job; the outcomes in input order."""
        ...


def blocking_options_of(
    fan_out: Callable[Concatenate[Owner, Any, Keywords], FanOut[Any]],
) -> Callable[[Callable[..., list[Any]]], BlockingCollectAll[Keywords]]:
    """Type a blocking ``submit_all`` (``SyncSession``'s) as ``fan_out``'s options take it."""

    def decorate(method: Callable[..., list[Any]]) -> BlockingCollectAll[Keywords]:
        return cast("BlockingCollectAll[Keywords]", method)

    return decorate


def takes_options_of(
    fan_out: Callable[Concatenate[Owner, Any, Keywords], FanOut[Any]],
) -> Callable[[Callable[..., Awaitable[list[Any]]]], CollectAll[Keywords]]:
    """Give the decorated method ``fan_out``'s keyword arguments: one list, for both.

    Type checkers see ``fan_out``'s parameters (and the generic request type, through
    :class:`CollectAll`); ``inspect.signature`` (and ``help()``) shows them too, with the
    decorated method's return type.
    """

    def decorate(method: Callable[..., Awaitable[list[Any]]]) -> CollectAll[Keywords]:
        signature = inspect.signature(fan_out)
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=inspect.signature(method).return_annotation
        )
        return cast("CollectAll[Keywords]", method)

    return decorate
