"""Fan-out: run many vary jobs with bounded concurrency, one outcome per job.

A :class:`FanOut` pulls requests from its input only as slots free up (the input may be a
lazy iterable or an async iterable of any length), runs each job in its own task (submit
through the session's rate limiter, then await the handle, then optionally download), and
hands out one :class:`VaryOutcome` per job in completion order. A job's failure is that
job's outcome; it never cancels the others.

Ownership: the fan-out owns its job tasks. Cancelling the coroutine that iterates, calling
:meth:`FanOut.aclose`, leaving its ``async with`` block, or closing the session cancels the
jobs still in flight and awaits them; :attr:`FanOut.unfinished` then names every job whose
outcome was not handed out, with its task id when it was submitted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
)
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs

from ._config import USE_DEFAULT, PollPolicy, UseDefault
from ._errors import RateLimitError, SessionClosedError, SubmitUncertainError
from ._handle import TaskHandle
from ._models import TaskRecord, VaryRequest
from ._validate import callable_or_none, count, directory, instance, optional_seconds

if TYPE_CHECKING:
    from ._core import SessionCore
    from ._submit import Submitter

logger = logging.getLogger(__name__)

#: The requests a fan-out accepts: any iterable or async iterable of requests (or handles).
Requests = Iterable[VaryRequest | TaskHandle] | AsyncIterable[VaryRequest | TaskHandle]


class JobEventKind(enum.Enum):
    """What happened to one job of a fan-out; see :class:`JobEvent`."""

    #: A POST of the job's submission is about to be sent (once per attempt). The hook runs
    #: before the request leaves: a journal written here is on disk before the provider
    #: could have billed anything. If the hook raises, nothing is sent.
    SUBMITTING = "submitting"
    #: The provider accepted the submission; ``task_id`` is set.
    SUBMITTED = "submitted"
    #: The job is about to wait ``wait`` seconds: for the client's rate limiter (``error``
    #: is ``None``), or after the provider answered 429 (``error`` is the
    #: :class:`RateLimitError`; the limiter has slowed down).
    RATE_LIMITED = "rate_limited"
    #: The job succeeded; ``outcome`` holds the record (and the downloaded paths).
    DONE = "done"
    #: The job failed; ``outcome.error`` says why (``task_id`` is set if it was submitted).
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class VaryOutcome:
    """The result of one job of a fan-out: exactly one of ``record`` and ``error`` is set.

    Attributes:
        index: The job's position in the input, 0-based.
        request: The job's request; ``None`` when the input item was not a
            :class:`VaryRequest` (then ``error`` is a ``TypeError``) or was a handle
            re-attached with :meth:`Session.task`.
        task_id: The provider's id of the job's task, or ``None`` when it was never
            accepted (or its acceptance was lost: see ``uncertain``).
        record: The final record of a task that succeeded, else ``None``.
        error: Why the job failed, else ``None``: a ``TypeError`` or ``ValueError`` for a bad
            item, :class:`SubmitUncertainError`, an :class:`APIError`,
            :class:`TaskFailedError`, :class:`TaskTimeoutError`, a download error, or an
            exception raised by your ``on_event`` hook.
        paths: The downloaded files, in the order of ``record.image_urls`` (empty unless the
            fan-out downloads).

    """

    index: int
    request: VaryRequest | None
    task_id: str | None = None
    record: TaskRecord | None = None
    error: Exception | None = None
    paths: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the job succeeded (``record`` is set)."""
        return self.error is None

    @property
    def uncertain(self) -> bool:
        """Whether the submission's fate is unknown: it may exist and be billed.

        Such a job is never re-submitted automatically.
        """
        return isinstance(self.error, SubmitUncertainError)


@attrs.frozen(kw_only=True)
class JobEvent:
    """One step of one job, as delivered to a fan-out's ``on_event`` hook.

    Attributes:
        kind: What happened (:class:`JobEventKind`).
        index: The job's position in the input, 0-based.
        request: The job's request (``None`` as in :attr:`VaryOutcome.request`).
        task_id: The task's id, once the submission was accepted.
        wait: For ``RATE_LIMITED``: the seconds the job is about to wait (``0.0`` when it
            waits for a submission in flight to end); else ``None``.
        error: For ``RATE_LIMITED`` after a 429: the :class:`RateLimitError`; for
            ``FAILED``: the job's error; else ``None``.
        outcome: For ``DONE`` and ``FAILED``: the job's :class:`VaryOutcome`.

    """

    kind: JobEventKind
    index: int
    request: VaryRequest | None
    task_id: str | None = None
    wait: float | None = None
    error: Exception | None = None
    outcome: VaryOutcome | None = None


@attrs.frozen(kw_only=True)
class UnfinishedJob:
    """A job whose outcome a cancelled or closed :class:`FanOut` did not hand out.

    Attributes:
        index: The job's position in the input, 0-based.
        request: The job's request (``None`` as in :attr:`VaryOutcome.request`).
        task_id: The task's id if the submission was accepted: re-attach it with
            :meth:`Session.task`. ``None`` if it was not (or see ``uncertain``).
        uncertain: ``True`` when a submission was sent and its answer never seen (it was
            cut by the cancellation, or lost): the task may exist and be billed.

    """

    index: int
    request: VaryRequest | None
    task_id: str | None
    uncertain: bool


OnEvent = Callable[[JobEvent], None]

#: The default of ``concurrency`` (jobs in flight) and ``download_concurrency`` (images).
DEFAULT_CONCURRENCY = 16
DEFAULT_DOWNLOAD_CONCURRENCY = 4


# attrs converters: each checks one option and names it in its error.
def _concurrency(value: object) -> int:
    return count(value, "concurrency")


def _timeout(value: object) -> float | UseDefault | None:
    return USE_DEFAULT if value is USE_DEFAULT else optional_seconds(value, "timeout")


def _poll(value: object) -> PollPolicy | None:
    return instance(value, PollPolicy, "poll", what="a midvary.PollPolicy")


def _on_event(value: OnEvent | None) -> OnEvent | None:
    return callable_or_none(value, "on_event")


def _download(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else directory(value, "download")


def _download_concurrency(value: object) -> int:
    return count(value, "download_concurrency")


@attrs.frozen(kw_only=True)
class FanOutOptions:
    """How a fan-out runs its jobs, validated once; see :meth:`Session.vary_many`.

    Attributes:
        concurrency: The most jobs in flight at once (>= 1).
        timeout: Seconds each job may wait for its task; ``None``: no deadline;
            ``USE_DEFAULT``: the poll policy's.
        poll: The :class:`PollPolicy` of the waits; ``None`` means the session's.
        on_event: Called with each :class:`JobEvent`; ``None`` for none.
        download: The directory to download succeeded jobs' images into; ``None``: none.
        download_concurrency: The most images of one job downloaded at once (>= 1).

    """

    concurrency: int = attrs.field(default=DEFAULT_CONCURRENCY, converter=_concurrency)
    timeout: float | UseDefault | None = attrs.field(default=USE_DEFAULT, converter=_timeout)
    poll: PollPolicy | None = attrs.field(default=None, converter=_poll)
    on_event: OnEvent | None = attrs.field(default=None, converter=_on_event)
    download: Path | None = attrs.field(default=None, converter=_download)
    download_concurrency: int = attrs.field(
        default=DEFAULT_DOWNLOAD_CONCURRENCY, converter=_download_concurrency
    )


class _Job:
    """The mutable state of one job while its task runs."""

    __slots__ = ("index", "item", "outcome", "posting", "request", "task_id")

    def __init__(self, index: int, item: object) -> None:
        self.index = index
        self.item = item
        self.request: VaryRequest | None = item if isinstance(item, VaryRequest) else None
        self.task_id: str | None = None
        self.posting = False
        self.outcome: VaryOutcome | None = None

    def unfinished(self) -> UnfinishedJob:
        if self.outcome is not None:
            uncertain = self.outcome.uncertain
            task_id = self.outcome.task_id
        else:
            uncertain, task_id = self.posting and self.task_id is None, self.task_id
        return UnfinishedJob(
            index=self.index, request=self.request, task_id=task_id, uncertain=uncertain
        )


class _SubmitHooks:
    """What the submitter reports about one job's submission attempts (a ``SubmitHooks``)."""

    __slots__ = ("_fanout", "_job")

    def __init__(self, fanout: FanOut, job: _Job) -> None:
        self._fanout = fanout
        self._job = job

    def before_post(self) -> None:
        # If the hook raises, nothing is sent: the job is not "posting" then.
        self._fanout._emit(JobEventKind.SUBMITTING, self._job)
        self._job.posting = True

    def after_post(self) -> None:
        self._job.posting = False

    def waiting(self, seconds: float, error: RateLimitError | None = None) -> None:
        self._fanout._emit(JobEventKind.RATE_LIMITED, self._job, wait=seconds, error=error)


def check_requests(requests: object) -> Requests:
    """``requests`` if it is an iterable or async iterable of jobs, else raise ``TypeError``."""
    if isinstance(requests, str | bytes | VaryRequest | TaskHandle) or not (
        isinstance(requests, Iterable | AsyncIterable)
    ):
        raise TypeError(
            "requests must be an iterable or async iterable of midvary.VaryRequest, "
            f"not {type(requests).__name__}"
        )
    return requests


class FanOut:
    """An async iterator of :class:`VaryOutcome`, one per job, in completion order.

    Made by :meth:`Session.vary_many` (its keyword arguments become one
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
        requests: Requests,
        options: FanOutOptions,
    ) -> None:
        self._core = core
        self._submitter = submitter
        self._source = check_requests(requests)
        self._options = options
        self.concurrency = options.concurrency
        self._slots = asyncio.Semaphore(self.concurrency)
        self._driver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[VaryOutcome]] = set()
        self._pending: dict[int, _Job] = {}
        self._ready: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._exhausted = False
        self._source_error: Exception | None = None
        self._closed = False
        # Every job's outcome was handed out (a fan-out closed early ends without this).
        self._complete = False
        self._unfinished: tuple[UnfinishedJob, ...] = ()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._driver else "not started"
        return f"<FanOut {state} in_flight={len(self._tasks)} concurrency={self.concurrency}>"

    @property
    def unfinished(self) -> tuple[UnfinishedJob, ...]:
        """Jobs started and not handed out as outcomes, by input position.

        While the fan-out runs: the jobs in flight now. After it was cancelled or closed
        early: the jobs it abandoned, with the task ids of those that were submitted (and
        ``uncertain`` set for a submission cut in flight). Empty after a full iteration.
        """
        if self._closed:
            return self._unfinished
        return tuple(job.unfinished() for _i, job in sorted(self._pending.items()))

    # -- iteration --------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> VaryOutcome:
        """The next outcome, in completion order.

        Raises:
            StopAsyncIteration: Every job's outcome was handed out.
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
        raise StopAsyncIteration

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        abandoned = [job for job in self._unfinished if job.task_id or job.uncertain]
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
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    async def _drive(self) -> None:
        try:
            async with contextlib.aclosing(_pull(self._source, self._slots)) as items:
                index = 0
                async for item in items:
                    job = _Job(index, item)
                    index += 1
                    self._pending[job.index] = job
                    task = asyncio.get_running_loop().create_task(self._run(job))
                    self._tasks.add(task)
                    task.add_done_callback(self._job_ended)
        except Exception as exc:  # the caller's iterable failed: report it after the jobs
            logger.debug("fan-out input raised %r; finishing the jobs in flight", exc)
            self._source_error = exc
        finally:
            self._exhausted = True
            self._wakeup.set()

    def _job_ended(self, task: asyncio.Task[VaryOutcome]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is None:
            outcome = task.result()
            job = self._pending.get(outcome.index)
            if job is not None:
                self._ready.append(job)
        self._wakeup.set()

    # -- one job ----------------------------------------------------------------------------

    async def _run(self, job: _Job) -> VaryOutcome:
        options = self._options
        record: TaskRecord | None = None
        paths: tuple[Path, ...] = ()
        error: Exception | None = None
        try:
            handle = await self._handle(job)
            record = await handle.wait(options.timeout, poll=options.poll)
            if options.download is not None:
                paths = await self._core.download(
                    record, options.download, concurrency=options.download_concurrency
                )
        except Exception as exc:  # one job's failure is that job's outcome
            job.posting = False
            record, error = None, exc
        job.outcome = VaryOutcome(
            index=job.index,
            request=job.request,
            task_id=job.task_id,
            record=record,
            error=error,
            paths=paths,
        )
        kind = JobEventKind.DONE if error is None else JobEventKind.FAILED
        try:
            self._emit(kind, job, error=error, outcome=job.outcome)
        except Exception:
            # The job is over: a hook that fails now cannot change its outcome.
            logger.exception("on_event hook failed for %s of job %d", kind.name, job.index)
        return job.outcome

    async def _handle(self, job: _Job) -> TaskHandle:
        item = job.item
        if isinstance(item, TaskHandle):
            job.request, job.task_id = item.request, item.task_id
            return item
        if not isinstance(item, VaryRequest):
            raise TypeError(
                f"item {job.index} of the requests must be a midvary.VaryRequest "
                f"(or a TaskHandle), not {type(item).__name__}"
            )
        handle = await self._submitter.submit(item, _SubmitHooks(self, job))
        job.task_id = handle.task_id
        self._emit(JobEventKind.SUBMITTED, job)
        return handle

    def _emit(self, kind: JobEventKind, job: _Job, **fields: Any) -> None:
        on_event = self._options.on_event
        if on_event is not None:
            on_event(
                JobEvent(
                    kind=kind, index=job.index, request=job.request, task_id=job.task_id, **fields
                )
            )


async def collect_all(fanout: FanOut) -> list[VaryOutcome]:
    """Every outcome of ``fanout`` in input order (what ``Session.vary_all`` returns).

    When the call ends without its list (it is cancelled, the input raises, or the session
    closes), the task ids of the finished jobs it drops are logged as a warning.

    Raises:
        SessionClosedError: The session closed before every job finished.

    """
    outcomes: list[VaryOutcome] = []
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
                "the Session was closed while vary_all was running; the task ids of its "
                "jobs are logged"
            )
    outcomes.sort(key=lambda outcome: outcome.index)
    return outcomes


def _log_dropped(outcomes: list[VaryOutcome]) -> None:
    """Log the task ids of finished jobs whose outcomes a failing ``vary_all`` drops."""
    dropped = [o for o in outcomes if o.task_id is not None or o.uncertain]
    if dropped:
        logger.warning(
            "vary_all ended early: %d finished jobs are not returned (task ids: %s)",
            len(dropped),
            ", ".join(o.task_id or "unknown (uncertain)" for o in dropped),
        )


async def _pull(source: Requests, slots: asyncio.Semaphore) -> AsyncGenerator[object, None]:
    """Yield the items of ``source``, taking a slot before pulling each one."""
    item: object
    if isinstance(source, AsyncIterable):
        iterator: AsyncIterator[object] = aiter(source)
        while True:
            await slots.acquire()
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                slots.release()
                return
            yield item
    else:
        sync_iterator: Iterator[object] = iter(source)
        while True:
            await slots.acquire()
            try:
                item = next(sync_iterator)
            except StopIteration:
                slots.release()
                return
            yield item
