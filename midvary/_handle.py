"""TaskHandle: an awaitable reference to one provider task.

The wait loop lives here; *when* to poll is the polling module's (the schedule, the
interruptible sleep, one retried poll), and everything of the session comes through its
:class:`~midvary._core.SessionCore`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _telemetry as telemetry
from ._config import USE_DEFAULT, PollPolicy, UseDefault
from ._errors import NotFoundError, SessionClosedError, TaskFailedError, TaskTimeoutError
from ._models import FAILED_STATUSES, FINAL_STATUSES, TaskRecord, TaskStatus
from ._outage import is_outage
from ._polling import Alarm
from ._retry import is_transient, next_poll_after_failure
from ._telemetry import request_kind
from ._validate import optional_seconds

if TYPE_CHECKING:
    from ._core import SessionCore
    from ._models import SubmitRequest

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
        "_alarm",
        "_core",
        "_created",
        "_default_poll",
        "_failing_since",
        "_final",
        "_last",
        "_last_error",
        "_reattached",
        "request",
        "task_id",
    )

    def __init__(
        self,
        core: SessionCore,
        task_id: str,
        *,
        request: SubmitRequest | None = None,
        submitted: bool = False,
        poll: PollPolicy | None = None,
        alarm: Alarm | None = None,
    ) -> None:
        self._core = core
        self.task_id = task_id
        self.request = request
        self._created = time.monotonic()
        # A task we just submitted cannot be done yet; a re-attached one may long be.
        self._reattached = not submitted
        self._last: TaskRecord | None = None
        self._final: TaskRecord | None = None
        # The current spell of failing polls: when it began, and its last error.
        self._failing_since: float | None = None
        self._last_error: BaseException | None = None
        # The default policy of this handle's waits; None means the session's. A handle
        # waiting on a callback polls slowly, as a safety net (CallbackReceiver.safety_poll).
        self._default_poll = poll
        # What ends this handle's sleeps early: a callback (its ticket holds the same alarm).
        # The session's close ends a wait through the wait's timeout instead.
        self._alarm = alarm if alarm is not None else Alarm()

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
        return self._seen(await self._core.fetch_record(self.task_id), telemetry.seen_final)

    async def wait(
        self,
        timeout: float | UseDefault | None = USE_DEFAULT,
        *,
        poll: PollPolicy | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> TaskRecord:
        """Poll until the task is final and return its record.

        Args:
            timeout: Deadline for this wait in seconds; ``None`` means no deadline; by
                default the poll policy's ``timeout``.
            poll: The :class:`PollPolicy` for this wait; ``None`` means the session's, or
                the receiver's ``safety_poll`` for a task submitted with a callback token.
            on_retry: Called with ``(error, seconds)`` before each retry of a poll that
                failed transiently (429, 455, 500, network, broken answer); ``None``: none.

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
        core = self._core
        if poll is None:
            poll = self._default_poll if self._default_poll is not None else core.poll
        policy = poll
        limit = policy.timeout if timeout is USE_DEFAULT else optional_seconds(timeout, "timeout")
        core.check_open()
        # One timeout per wait: its deadline, and the session's close, which expires it
        # early (SessionCore.aclose) so that a poll request in flight is cut as well.
        scope = asyncio.timeout(limit)
        with telemetry.wait(self.task_id, core.base_url) as span:
            notified = self._alarm.notified
            try:
                return _outcome(await self._wait(scope, policy, on_retry, limit, span))
            finally:
                span.callback = self._alarm.notified > notified

    async def _wait(
        self,
        scope: asyncio.Timeout,
        policy: PollPolicy,
        on_retry: Callable[[BaseException, float], None] | None,
        limit: float | None,
        span: telemetry.Wait,
    ) -> TaskRecord:
        core = self._core
        try:
            async with scope:
                core.waiting.add(scope)
                record = await self._poll(policy, on_retry, span)
        except TimeoutError:
            if not scope.expired():
                raise
            if core.closed:
                raise SessionClosedError(
                    "the Session was closed while waiting for this task"
                ) from None
            since = self._failing_since
            error = self._last_error
            raise TaskTimeoutError(
                self.task_id,
                limit or 0.0,
                self._last,
                last_error=error,
                failing_for=None if since is None else time.monotonic() - since,
            ) from error
        finally:
            core.waiting.discard(scope)
        return record

    async def _poll(
        self,
        policy: PollPolicy,
        on_retry: Callable[[BaseException, float], None] | None,
        span: telemetry.Wait,
    ) -> TaskRecord:
        # Polling is a schedule, not a retry: this loop asks the policy when to poll next,
        # and a poll that failed transiently is one poll of the schedule (the retry module
        # says how long to wait after it). Between polls nothing but a timer is held, which
        # keeps 10,000 waiting handles cheap.
        alarm = self._alarm
        attempt = 1
        wait = self._delay(policy, attempt)
        while True:
            await alarm.sleep(wait)
            try:
                record = await self._poll_once(policy, span)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                wait = next_poll_after_failure(
                    exc,
                    self._delay(policy, attempt),
                    self._core.retry,
                    what=self.task_id,
                    poll=attempt - 1,
                    on_retry=on_retry,
                )
                continue
            if record is not None and record.status in FINAL_STATUSES:
                return record
            attempt += 1
            wait = self._delay(policy, attempt)

    def _delay(self, policy: PollPolicy, attempt: int) -> float:
        core = self._core
        if self._reattached:
            # Submitted elsewhere, at a time we do not know: nothing to learn the schedule from.
            return policy.delay(attempt, rng=core.rng)
        return policy.delay(
            attempt,
            elapsed=time.monotonic() - self._created,
            known=core.durations.bounds(),
            rng=core.rng,
        )

    async def _poll_once(self, policy: PollPolicy, span: telemetry.Wait) -> TaskRecord | None:
        try:
            record = await self._core.fetch_record(self.task_id, polled=span.polled)
        except NotFoundError:
            self._answered()
            if time.monotonic() - self._created < policy.not_found_grace:
                logger.debug("task %s not visible yet", self.task_id)
                return None
            raise
        except Exception as exc:
            if is_transient(exc):
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                self._last_error = exc
                if is_outage(exc):  # the outage's own lines say it, once per session
                    self._core.outage.failed(exc, probe=False)
                else:
                    self._core.health.failed(exc, now, policy.warn_failing_after)
            raise
        self._answered()
        if record.status is TaskStatus.UNKNOWN:
            logger.warning("task %s reports an undocumented state; polling on", self.task_id)
        return self._seen(record, span.seen_final)

    def _answered(self) -> None:
        """A poll got an answer: any spell of failing polls (or outage) is over."""
        self._failing_since = None
        self._last_error = None
        self._core.health.succeeded(time.monotonic())
        self._core.outage.answered()

    def _seen(
        self, record: TaskRecord, seen_final: Callable[[TaskRecord, str | None], None]
    ) -> TaskRecord:
        """Keep ``record``; the first final one is learned from and told to ``seen_final``."""
        self._last = record
        if record.status in FINAL_STATUSES and self._final is None:
            self._final = record
            if record.status is TaskStatus.SUCCESS:
                submitted = None if self._reattached else self._created
                self._core.durations.learn(record, submitted_at=submitted)
            self._alarm.finished()
            seen_final(record, None if self._reattached else request_kind(self.request))
        return record


def _outcome(record: TaskRecord) -> TaskRecord:
    if record.status in FAILED_STATUSES:
        raise TaskFailedError(record)
    return record
