"""What a fan-out's jobs report (their events and outcomes), and the options of a fan-out."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias

import attrs
from typing_extensions import TypeVar

from ._config import USE_DEFAULT, PollPolicy, UseDefault
from ._errors import SubmitUncertainError
from ._models import SubmitRequest, TaskRecord
from ._validate import (
    attrs_validator,
    callable_or_none,
    count,
    directory,
    instance,
    optional_seconds,
)


class JobEventKind(enum.Enum):
    """What happened to one job of a fan-out; see :class:`JobEvent`."""

    #: A POST of the job's submission is about to be sent (once per attempt). The hook runs
    #: before the request leaves: a record written here is on disk before the provider
    #: could have billed anything. If the hook raises, nothing is sent.
    SUBMITTING = "submitting"
    #: The provider accepted the submission; ``task_id`` is set. With ``reattached=True``
    #: nothing was sent: the request's key already named this task (submitted earlier, by
    #: this or another process sharing the store), and the job waits for it.
    SUBMITTED = "submitted"
    #: The job is about to wait ``wait`` seconds: for the client's rate limiter (``error``
    #: is ``None``), or after the provider answered 429 (``error`` is the
    #: :class:`RateLimitError`; the limiter has slowed down).
    RATE_LIMITED = "rate_limited"
    #: A failed step is retried after ``wait`` seconds; ``error`` says why. For the
    #: submission: a POST certainly not accepted (429, 455, never sent; a 429 also sends
    #: ``RATE_LIMITED``); ``task_id`` is ``None``. For the wait: a poll that failed
    #: transiently (429, 455, 500, network, broken answer); ``task_id`` is set.
    RETRYING = "retrying"
    #: The job succeeded; ``outcome`` holds the record (and the downloaded paths).
    DONE = "done"
    #: The job failed; ``outcome.error`` says why (``task_id`` is set if it was submitted).
    FAILED = "failed"


#: The request type of a job's outcome (``Any`` when not said): the outcomes of
#: ``session.submit_all(list_of_vary_requests)`` have ``request: VaryRequest | None``.
R_co = TypeVar("R_co", covariant=True, default=Any)


@attrs.frozen(kw_only=True)
class JobOutcome(Generic[R_co]):
    """The result of one job of a fan-out: exactly one of ``record`` and ``error`` is set.

    A fan-out hands out its two kinds, :class:`JobSucceeded` (``record`` set, ``ok`` is
    ``True``) and :class:`JobFailed` (``error`` set, ``ok`` is ``False``), typed as
    :data:`Outcome`: ``if outcome.ok:`` narrows it, so a type checker knows ``record`` is
    a :class:`TaskRecord` there. Generic in its request type ``R_co``.

    Attributes:
        index: The job's position in the input, 0-based.
        request: The job's request; ``None`` when the input item was not a
            request (:class:`VaryRequest`, :class:`GenerateRequest`,
            :class:`UpscaleRequest` or :class:`ExtendRequest`; then ``error`` is a
            ``TypeError``) or was a handle re-attached with :meth:`Session.task`.
        task_id: The provider's id of the job's task, or ``None`` when it was never
            accepted (or its acceptance was lost: see ``uncertain``).
        record: The final record of a task that succeeded, else ``None``.
        error: Why the job failed, else ``None``: a ``TypeError`` or ``ValueError`` for a bad
            item, :class:`SubmitUncertainError`, an :class:`APIError`,
            :class:`TaskFailedError`, :class:`TaskTimeoutError`, a download error, or an
            exception raised by your ``on_event`` hook.
        paths: The downloaded files, in the order of ``record.image_urls`` (empty unless the
            fan-out downloads).
        recovered: ``True`` when the submission's answer was lost and its task was found by
            the provider's callback (the session has a :class:`CallbackReceiver`; confirmed
            with one GET): ``task_id`` is then that task's, and nothing was sent twice.

    """

    index: int
    request: R_co | None
    task_id: str | None = None
    record: TaskRecord | None = None
    error: Exception | None = None
    paths: tuple[Path, ...] = ()
    recovered: bool = False

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
class JobSucceeded(JobOutcome[R_co]):
    """The outcome of a job that succeeded: ``record`` is its final :class:`TaskRecord`."""

    record: TaskRecord
    error: None = None

    @property
    def ok(self) -> Literal[True]:
        """``True``: the job succeeded (a type checker narrows :data:`Outcome` by it)."""
        return True


@attrs.frozen(kw_only=True)
class JobFailed(JobOutcome[R_co]):
    """The outcome of a job that failed: ``error`` says why; ``record`` is ``None``."""

    error: Exception
    record: None = None

    @property
    def ok(self) -> Literal[False]:
        """``False``: the job failed (a type checker narrows :data:`Outcome` by it)."""
        return False


#: What a fan-out hands out per job: ``if outcome.ok:`` narrows it to :class:`JobSucceeded`.
Outcome: TypeAlias = JobSucceeded[R_co] | JobFailed[R_co]


@attrs.frozen(kw_only=True)
class JobEvent:
    """One step of one job, as delivered to a fan-out's ``on_event`` hook.

    Attributes:
        kind: What happened (:class:`JobEventKind`).
        index: The job's position in the input, 0-based.
        request: The job's request (``None`` as in :attr:`JobOutcome.request`).
        task_id: The task's id, once the submission was accepted.
        wait: For ``RATE_LIMITED`` and ``RETRYING``: the seconds the job is about to wait
            (``0.0`` when it waits for a submission in flight to end); else ``None``.
        error: For ``RATE_LIMITED`` after a 429: the :class:`RateLimitError`; for
            ``RETRYING``: the failure retried; for ``FAILED``: the job's error; else ``None``.
        outcome: For ``DONE`` and ``FAILED``: the job's :class:`JobOutcome`.
        reattached: For ``SUBMITTED``: ``True`` when nothing was sent because the
            request's key already named the task; else ``False``.

    """

    kind: JobEventKind
    index: int
    request: SubmitRequest | None
    task_id: str | None = None
    wait: float | None = None
    error: Exception | None = None
    outcome: JobOutcome[Any] | None = None
    reattached: bool = False


@attrs.frozen(kw_only=True)
class UnfinishedJob:
    """A job whose outcome a :class:`FanOut` did not hand out.

    Either the fan-out was cancelled or closed early, or the job was never sent: its
    ``max_tasks`` was reached, or the account stopped it (401, 402, 505; see
    :meth:`Session.submit_many`). A job never sent is pending: nothing was billed for it.

    Attributes:
        index: The job's position in the input, 0-based.
        request: The job's request (``None`` as in :attr:`JobOutcome.request`).
        task_id: The task's id if the submission was accepted: re-attach it with
            :meth:`Session.task`. ``None`` if it was not (or see ``uncertain``).
        uncertain: ``True`` when a submission was sent and its answer never seen (it was
            cut by the cancellation, or lost): the task may exist and be billed.
        not_sent: ``True`` when the job was certainly not accepted (never sent, or refused
            by an account-wide error) and is left pending: run it again later.

    """

    index: int
    request: SubmitRequest | None
    task_id: str | None
    uncertain: bool
    not_sent: bool = False


OnEvent = Callable[[JobEvent], None]

#: The default of ``concurrency`` (jobs in flight) and ``download_concurrency`` (images).
DEFAULT_CONCURRENCY = 16
DEFAULT_DOWNLOAD_CONCURRENCY = 4


# Each checker names its option in its error.
def _timeout(value: object) -> float | UseDefault | None:
    return USE_DEFAULT if value is USE_DEFAULT else optional_seconds(value, "timeout")


def _download(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else directory(value, "download")


_count = attrs_validator(count)


@attrs.frozen(kw_only=True)
class FanOutOptions:
    """How a fan-out runs its jobs: :meth:`Session.submit_many`'s keyword arguments, checked."""

    concurrency: int = attrs.field(default=DEFAULT_CONCURRENCY, validator=_count)
    timeout: float | UseDefault | None = attrs.field(default=USE_DEFAULT, converter=_timeout)
    poll: PollPolicy | None = attrs.field(
        default=None, validator=attrs_validator(instance, PollPolicy, what="a midvary.PollPolicy")
    )
    on_event: OnEvent | None = attrs.field(
        default=None, validator=attrs_validator(callable_or_none)
    )
    download: Path | None = attrs.field(default=None, converter=_download)
    download_concurrency: int = attrs.field(default=DEFAULT_DOWNLOAD_CONCURRENCY, validator=_count)
    max_tasks: int | None = attrs.field(default=None, validator=attrs.validators.optional(_count))
