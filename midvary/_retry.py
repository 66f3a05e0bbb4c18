"""The one retry module: what is retried, and how long to wait. Tenacity lives only here.

=================================  ==========  ==========
failure                            poll (GET)  submission
=================================  ==========  ==========
429 rate limited                   retried     retried
455 maintenance                    retried     waited out
500 server error                   retried     uncertain
connection could not be opened     retried     waited out
answer lost after sending          retried     uncertain
HTML / empty / malformed answer    retried     uncertain
400 401 402 404 422 501 505        final       final
=================================  ==========  ==========

Result downloads (reads) retry like polls; an HTTP error of the result host
(:class:`~midvary.DownloadError`) is retried only for 408, 425, 429 and 5xx.

"Waited out": an outage, which the session's :class:`~midvary._outage.OutageWatch` waits out
(one probe at a time, up to ``RetryPolicy.outage_budget``) instead of counting attempts.

"Uncertain" submissions raise :class:`~midvary.SubmitUncertainError` and are never re-sent:
the provider has no idempotency key, so a second POST could start a second billed task.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._config import RetryPolicy
from ._errors import (
    DownloadError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SessionClosedError,
    StoreError,
    SubmitUncertainError,
    TaskTimeoutError,
    TransportError,
)
from ._outage import OutageWatch, is_outage

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: ``on_retry(error, wait_seconds)``, told before each wait; a coroutine function is awaited.
OnRetry = Callable[[BaseException, float], object]


def is_transient(exc: BaseException) -> bool:
    """Whether what failed with ``exc`` may succeed when tried again later.

    The one answer to "transient?" for polls, downloads and the arq job: the provider's 429,
    455 and 500, the network, a broken answer, a result host's 408/425/429/5xx, the store
    unreachable, a wait's deadline, a session closing under a wait (the worker stopping).
    Never a submission whose fate is unknown (:class:`SubmitUncertainError`): it is not
    re-sent. Submissions themselves are retried only on :func:`is_unaccepted`.
    """
    if isinstance(exc, SubmitUncertainError):
        return False
    if isinstance(exc, DownloadError):
        return exc.transient
    return isinstance(
        exc,
        RateLimitError
        | ServiceUnavailableError
        | ServerError
        | TransportError
        | ProtocolError
        | StoreError
        | TaskTimeoutError
        | SessionClosedError,
    ) or _store_busy(exc)


def _store_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds the database (try again).

    SQLite is imported by the stores that use it, never here: an error of it exists only
    if something imported it.
    """
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or not isinstance(exc, sqlite3.OperationalError):
        return False
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def is_unaccepted(exc: BaseException) -> bool:
    """Whether a submission that failed with ``exc`` was certainly not accepted (safe to resend)."""
    if isinstance(exc, RateLimitError | ServiceUnavailableError):
        return True
    return isinstance(exc, TransportError) and not exc.sent


def retry_after(exc: BaseException | None) -> float | None:
    """The seconds a failed answer asked us to wait (``Retry-After``), or ``None``."""
    value = getattr(exc, "retry_after", None)
    return value if isinstance(value, int | float) else None


def _honour_retry_after(exc: BaseException | None, wait: float, cap: float) -> float:
    """``wait`` seconds, or what the failed answer asked for (capped at ``cap``) if longer."""
    asked = retry_after(exc)
    return wait if asked is None else max(wait, min(max(asked, 0.0), cap))


class _HonourRetryAfter(wait_base):
    """Wait at least what the provider asked for, capped; otherwise the fallback backoff."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self._fallback = fallback
        self._cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        return _honour_retry_after(exc, self._fallback(retry_state), self._cap)


def _log_failure(what: str, exc: BaseException, attempt: int, wait: float) -> None:
    if is_outage(exc):
        logger.info(
            "%s failed (%s: %s); attempt %d, waiting out the outage",
            what,
            type(exc).__name__,
            exc,
            attempt,
        )
        return
    logger.info(
        "%s failed (%s: %s); attempt %d, retrying in %.2f s",
        what,
        type(exc).__name__,
        exc,
        attempt,
        wait,
    )


def _before_sleep(
    what: str, hook: OnRetry | None
) -> Callable[[tenacity.RetryCallState], Awaitable[None]]:
    """Log the failure tenacity is about to retry, then tell ``hook`` (awaited if async)."""

    async def before_sleep(state: tenacity.RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if exc is None:
            return
        _log_failure(what, exc, state.attempt_number, state.upcoming_sleep)
        if hook is not None:
            told = hook(exc, state.upcoming_sleep)
            if inspect.isawaitable(told):
                await told

    return before_sleep


class _SubmitStop(stop_base):
    """Stop after ``attempts`` 429s; an outage (455, no connection) once it outlasts its budget."""

    def __init__(self, attempts: int, outage: OutageWatch) -> None:
        self._attempts = attempts
        self._outage = outage
        self._counted = 0

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if exc is not None and is_outage(exc):
            return not self._outage.active or self._outage.exhausted()
        self._counted += 1
        return self._counted >= self._attempts


class _SubmitWait(_HonourRetryAfter):
    """The backoff after a 429; none after an outage error (the outage's admit waits)."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            if exc is not None and is_outage(exc):
                return 0.0
        return super().__call__(retry_state)


def submit_retrying(
    policy: RetryPolicy, outage: OutageWatch, *, on_retry: OnRetry | None = None
) -> tenacity.AsyncRetrying:
    """Retrying for one submission: only failures that certainly were not accepted.

    A 429 is tried ``policy.attempts`` times in all, with backoff. An outage (455, or a
    connection never opened) is waited out by ``outage`` (the session's
    :class:`~midvary._outage.OutageWatch`: the next attempt waits for its turn there) until
    it has lasted ``policy.outage_budget`` seconds.

    ``await on_retry(exc, wait_seconds)`` runs before each wait (the submitter puts its key
    claim back to claimed there, slows its limiter down after a 429 and tells its hooks);
    an exception it raises ends the submission with that exception.
    """
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(is_unaccepted),
        wait=_SubmitWait(backoff(policy), policy.max_retry_after),
        stop=_SubmitStop(policy.attempts, outage),
        before_sleep=_before_sleep("submission", on_retry),
        reraise=True,
    )


def read_retrying(policy: RetryPolicy, *, what: str) -> tenacity.AsyncRetrying:
    """Retrying for an idempotent read outside polling (a result download)."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=_HonourRetryAfter(backoff(policy), policy.max_retry_after),
        stop=tenacity.stop_after_attempt(policy.attempts),
        before_sleep=_before_sleep(what, None),
        reraise=True,
    )


def backoff(policy: RetryPolicy) -> wait_base:
    """Capped exponential backoff with jitter for ``policy``."""
    exponential = tenacity.wait_exponential(multiplier=policy.wait_initial, max=policy.wait_max)
    return exponential + tenacity.wait_random(0, policy.wait_jitter)


def next_poll_after_failure(
    exc: BaseException,
    scheduled: float,
    retry: RetryPolicy,
    *,
    what: str,
    poll: int,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> float:
    """Seconds until the next poll of task ``what``, after a poll that failed transiently.

    Polling is a schedule, not a retry: a poll that failed with ``exc`` (429, maintenance,
    500, the network, a broken answer: :func:`is_transient`) counts as one poll, and the
    next one comes at the schedule's time (``scheduled`` seconds), or later if the answer
    asked for it (``Retry-After``, at most ``retry.max_retry_after``). The caller's deadline
    bounds the polling. ``poll`` is the failed poll's number (from 1), for the log line;
    ``on_retry(exc, wait_seconds)`` is told.
    """
    wait = _honour_retry_after(exc, scheduled, retry.max_retry_after)
    _log_failure(f"poll of task {what}", exc, poll, wait)
    if on_retry is not None:
        on_retry(exc, wait)
    return wait


def resubscribing(
    *, first: float, longest: float, retry: Callable[[BaseException], bool]
) -> tenacity.AsyncRetrying:
    """Retrying for opening a long-lived subscription again after ``retry(exc)`` says so.

    Waits ``first`` seconds before the second attempt, doubling up to ``longest``; never
    stops (the caller cancels it). Each call starts its backoff afresh.
    """
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(retry),
        wait=tenacity.wait_exponential(multiplier=first, max=longest),
        stop=tenacity.stop_never,
        before_sleep=_before_sleep("subscription", None),
        reraise=True,
    )


async def ask_until_answered(
    ask: Callable[[], Awaitable[T | None]], *, first: float, within: float
) -> T | None:
    """Call ``ask`` until it answers something other than ``None``, for ``within`` seconds.

    Waits ``first`` seconds after the first ``None``, doubling, never past the deadline;
    ``None`` if the last call, at or after ``within`` seconds, still answered ``None``.
    """

    def wait(state: tenacity.RetryCallState) -> float:
        left = within - (state.seconds_since_start or 0.0)
        return max(0.0, min(first * 2.0 ** (state.attempt_number - 1), left))

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_result(lambda answer: answer is None),
        wait=wait,
        stop=tenacity.stop_after_delay(within),
        retry_error_callback=lambda _state: None,
    )
    answer: T | None = await retrying(ask)
    return answer


def retry_blocking(fn: Callable[[], T], *, within_s: float, wait_s: float = 0.05) -> T:
    """Call ``fn`` again while it fails with a transient error, for at most ``within_s`` s.

    For blocking calls in a worker thread (never on the event loop): tries every ``wait_s``
    seconds; the last failure is raised.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_fixed(wait_s),
        stop=tenacity.stop_after_delay(within_s),
        reraise=True,
    )
    return retrying(fn)


#: A Redis store's calls on a broken connection (a restart): tries after the first.
STORE_RETRIES: Final = 2
#: Their backoff: ``STORE_BACKOFF[0] * 2**n`` seconds, at most ``STORE_BACKOFF[1]``.
STORE_BACKOFF: Final = (0.05, 0.5)


def redis_retry() -> dict[str, Any]:
    """The connection pool options that make redis-py retry a Redis store's calls.

    The pool's ``Retry`` is the one retry policy of a :class:`~midvary.RedisStore` made from
    a URL: a call whose connection broke or timed out is sent again on a new connection
    (:data:`STORE_RETRIES` times, exponential backoff), which every store operation allows
    (each is idempotent for its holder and slot id). redis-py is imported here, when asked.
    """
    import redis.exceptions  # noqa: PLC0415 - an optional dependency
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import ExponentialBackoff  # noqa: PLC0415

    base, cap = STORE_BACKOFF
    return {
        "retry": Retry(ExponentialBackoff(cap=cap, base=base), retries=STORE_RETRIES),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }
