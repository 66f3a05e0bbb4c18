"""TaskHandle: an awaitable reference to one provider task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import tenacity

from ._config import USE_DEFAULT, PollPolicy, UseDefault
from ._errors import NotFoundError, SessionClosedError, TaskFailedError, TaskTimeoutError
from ._models import TaskRecord, TaskStatus
from ._retry import attempt_then_retry, is_transient, poll_retrying

if TYPE_CHECKING:
    from ._models import VaryRequest
    from ._session import Session

logger = logging.getLogger(__name__)


class TaskHandle:
    """An awaitable reference to one task; ``await handle`` returns its final record.

    Create one with :meth:`Session.vary` (a new task) or :meth:`Session.task` (an existing
    task id, no I/O). A handle holds no background task: polling happens inside whichever
    coroutine awaits it, so cancelling that coroutine stops the polling at once.

    Attributes:
        task_id: The task's id.
        request: The :class:`VaryRequest` that created the task, or ``None`` for a handle
            re-attached with :meth:`Session.task`.

    """

    __slots__ = (
        "_created",
        "_deadlines",
        "_default_poll",
        "_final",
        "_last",
        "_on_final",
        "_reattached",
        "_session",
        "_sleepers",
        "_woken",
        "request",
        "task_id",
    )

    def __init__(
        self,
        session: Session,
        task_id: str,
        *,
        request: VaryRequest | None = None,
        submitted: bool = False,
        poll: PollPolicy | None = None,
    ) -> None:
        self._session = session
        self.task_id = task_id
        self.request = request
        self._created = time.monotonic()
        # A task we just submitted cannot be done yet; a re-attached one may long be.
        self._reattached = not submitted
        self._last: TaskRecord | None = None
        self._final: TaskRecord | None = None
        self._sleepers: set[asyncio.Future[None]] = set()
        # The deadlines of the waits in progress: closing the session expires them, which
        # also cuts a poll request in flight.
        self._deadlines: set[asyncio.Timeout] = set()
        # The default policy of this handle's waits; None means the session's. A handle
        # waiting on a callback polls slowly, as a safety net (CallbackReceiver.safety_poll).
        self._default_poll = poll
        # A callback came while no wait was sleeping: the next sleep ends at once.
        self._woken = False
        # Called once when a final record is first seen (the callback token's expiry).
        self._on_final: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = self._last.status.name if self._last is not None else "unseen"
        return f"<TaskHandle task_id={self.task_id!r} state={state}>"

    @property
    def record(self) -> TaskRecord | None:
        """The last record seen by this handle, or ``None`` if none was fetched yet."""
        return self._last

    def done(self) -> bool:
        """Whether a final record has been seen (awaiting then needs no request)."""
        return self._final is not None

    def __await__(self) -> Generator[Any, None, TaskRecord]:
        return self.wait().__await__()

    async def refresh(self) -> TaskRecord:
        """Fetch the task's record once (one GET), in whatever state it is.

        A failed task is returned, not raised. Errors of the request itself (not found,
        transport, ...) are raised.
        """
        return self._seen(await self._session.get_task(self.task_id))

    async def wait(
        self,
        timeout: float | UseDefault | None = USE_DEFAULT,
        *,
        poll: PollPolicy | None = None,
    ) -> TaskRecord:
        """Poll until the task is final and return its record.

        Args:
            timeout: Deadline for this wait in seconds; ``None`` means no deadline; by
                default the poll policy's ``timeout``.
            poll: The :class:`PollPolicy` for this wait; ``None`` means the session's, or
                the receiver's ``safety_poll`` for a task submitted with a callback token.

        Returns:
            The final record of a task that succeeded.

        Raises:
            TaskFailedError: The task ended CREATE_FAILED or GENERATE_FAILED.
            TaskTimeoutError: ``timeout`` passed first. The handle stays usable.
            NotFoundError: The task stayed invisible beyond the policy's grace period.
            APIError: A final error (401, 402, ...) answered a poll.
            SessionClosedError: The session closed while waiting.

        """
        if self._final is not None:
            return _outcome(self._final)
        if poll is None:
            poll = self._default_poll if self._default_poll is not None else self._session.poll
        policy = poll
        limit = policy.timeout if timeout is USE_DEFAULT else timeout
        if limit is not None and limit <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {limit!r}")
        self._session._check_open()
        try:
            async with asyncio.timeout(limit) as deadline:
                self._deadlines.add(deadline)
                try:
                    record = await self._poll(policy)
                finally:
                    self._deadlines.discard(deadline)
        except TimeoutError:
            if deadline.expired():
                if self._session.closed:
                    # aclose() expired the deadline to cut a request in flight (see _wake).
                    raise SessionClosedError(
                        "the Session was closed while waiting for this task"
                    ) from None
                raise TaskTimeoutError(self.task_id, limit or 0.0, self._last) from None
            raise
        return _outcome(record)

    async def _poll(self, policy: PollPolicy) -> TaskRecord:
        # Polling is a schedule, not a retry: this loop asks the policy when to poll next, and
        # each poll is one tenacity call that retries the poll's transient failures. Between
        # polls nothing but a timer is held, which keeps 10,000 waiting handles cheap.
        session = self._session
        session._waiters.add(self)
        try:
            attempt = 1
            await self._sleep(self._delay(policy, attempt))
            while True:
                record, attempts = await self._poll_retrying(policy, attempt)
                if record is not None and record.is_final:
                    return record
                attempt += attempts
                await self._sleep(self._delay(policy, attempt))
        finally:
            session._waiters.discard(self)

    async def _poll_retrying(
        self, policy: PollPolicy, attempt: int
    ) -> tuple[TaskRecord | None, int]:
        """One poll, retried through transient failures; the record and the attempts made."""
        retrying: tenacity.AsyncRetrying | None = None

        def make_retrying() -> tenacity.AsyncRetrying:
            nonlocal retrying
            retrying = poll_retrying(
                self._session.retry,
                sleep=self._sleep,
                delay=lambda retry: self._delay(policy, attempt + retry),
                what=self.task_id,
            )
            return retrying

        record = await attempt_then_retry(
            lambda: self._poll_once(policy), make_retrying, is_transient
        )
        return record, 1 if retrying is None else retrying.statistics["attempt_number"]

    def _delay(self, policy: PollPolicy, attempt: int) -> float:
        if self._reattached:
            # Submitted elsewhere, at a time we do not know: nothing to learn the schedule from.
            return policy.delay(attempt, rng=self._session._rng)
        return policy.delay(
            attempt,
            elapsed=time.monotonic() - self._created,
            known=self._session._durations.bounds(),
            rng=self._session._rng,
        )

    async def _poll_once(self, policy: PollPolicy) -> TaskRecord | None:
        try:
            record = await self._session._fetch_record(self.task_id)
        except NotFoundError:
            if time.monotonic() - self._created < policy.not_found_grace:
                logger.debug("task %s not visible yet", self.task_id)
                return None
            raise
        if record.status is TaskStatus.UNKNOWN:
            logger.warning("task %s reports an undocumented state; polling on", self.task_id)
        return self._seen(record)

    def _seen(self, record: TaskRecord) -> TaskRecord:
        self._last = record
        if record.is_final and self._final is None:
            self._final = record
            if record.status is TaskStatus.SUCCESS:
                submitted = None if self._reattached else self._created
                self._session._durations.learn(record, submitted_at=submitted)
            if self._on_final is not None:
                self._on_final()
        return record

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`_wake` or the session's close interrupts."""
        if self._woken:
            self._woken = False
            return
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)

    def _wake(self, error: BaseException | None = None) -> None:
        """End every current sleep of this handle: poll now, or raise ``error`` if given.

        With an ``error`` (the session closing), a poll request in flight is cut as well:
        every wait's deadline expires now.
        """
        for sleeper in tuple(self._sleepers):
            if not sleeper.done():
                if error is None:
                    sleeper.set_result(None)
                else:
                    sleeper.set_exception(error)
        if error is not None:
            for deadline in tuple(self._deadlines):
                if not deadline.expired():
                    deadline.reschedule(0)  # any time in the past: expires at once

    def _notify(self) -> None:
        """A callback says the task may be final: poll once now (or as soon as awaited)."""
        if self._final is not None:
            return
        if self._sleepers:
            self._wake()
        else:
            # Nobody sleeps: a poll is in flight or nobody awaits yet. Remember the news, so
            # the next sleep (or the first wait's initial delay) is skipped.
            self._woken = True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _outcome(record: TaskRecord) -> TaskRecord:
    if record.status.is_failure:
        raise TaskFailedError(record)
    return record
