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

import asyncio
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import tenacity

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


def _backoff(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1).

    ``policy.wait_initial`` doubling with each attempt, at most ``policy.wait_max``, plus up
    to ``policy.wait_jitter`` random seconds.
    """
    exponential = policy.wait_initial * 2.0 ** min(attempt - 1, 64)
    return min(exponential, policy.wait_max) + random.uniform(0, policy.wait_jitter)


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


def _failure(state: tenacity.RetryCallState) -> BaseException | None:
    """The exception the attempt ``state`` describes ended with, if it failed."""
    outcome = state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


def _before_sleep(what: str) -> Callable[[tenacity.RetryCallState], None]:
    """Log the failure tenacity is about to retry."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = _failure(state)
        if exc is not None:
            _log_failure(what, exc, state.attempt_number, state.upcoming_sleep)

    return before_sleep


async def submit_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    outage: OutageWatch,
    *,
    on_retry: Callable[[BaseException, float], Awaitable[object]],
) -> T:
    """Await ``attempt()`` until it succeeds, retrying only failures certainly not accepted.

    A 429 is tried ``policy.attempts`` times in all, with backoff (or the ``Retry-After``
    asked for, up to ``policy.max_retry_after``). An outage (455, or a connection never
    opened) is waited out by ``outage`` (the session's
    :class:`~midvary._outage.OutageWatch`: the next attempt waits for its turn there, so
    none is waited here) until it has lasted ``policy.outage_budget`` seconds. Any other
    failure, an uncertain one above all, is raised at once: it is never sent again.

    ``await on_retry(exc, wait_seconds)`` runs before each wait (the submitter puts its key
    claim back to claimed there, slows its limiter down after a 429 and tells its hooks);
    an exception it raises ends the submission with that exception.
    """
    refused = 0
    number = 0
    while True:
        number += 1
        try:
            return await attempt()
        except Exception as exc:
            if not is_unaccepted(exc):
                raise
            if is_outage(exc):
                if not outage.active or outage.exhausted():
                    raise
                wait = 0.0
            else:
                refused += 1
                if refused >= policy.attempts:
                    raise
                wait = _honour_retry_after(exc, _backoff(policy, number), policy.max_retry_after)
            _log_failure("submission", exc, number, wait)
            await on_retry(exc, wait)
        await asyncio.sleep(wait)


def read_retrying(policy: RetryPolicy, *, what: str) -> tenacity.AsyncRetrying:
    """Retrying for an idempotent read outside polling (a result download)."""

    def wait(state: tenacity.RetryCallState) -> float:
        backoff = _backoff(policy, state.attempt_number)
        return _honour_retry_after(_failure(state), backoff, policy.max_retry_after)

    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=wait,
        stop=tenacity.stop_after_attempt(policy.attempts),
        before_sleep=_before_sleep(what),
        reraise=True,
    )


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
        before_sleep=_before_sleep("subscription"),
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
