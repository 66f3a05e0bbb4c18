"""Every error midvary raises, in one tree.

::

    MidvaryError
    ├── APIError                      the provider answered with an error code (.code, .message)
    │   ├── BadRequestError           400  bad parameters                       final
    │   ├── AuthenticationError       401  missing or invalid API key           final
    │   ├── InsufficientCreditsError  402  out of credits                       final
    │   ├── NotFoundError             404  (and 422 "recordInfo is null")       final*
    │   ├── ValidationError           422  validation failed                    final
    │   ├── RateLimitError            429  rate limited                         transient
    │   ├── ServiceUnavailableError   455  maintenance                          transient
    │   ├── ServerError               500  server error                         transient
    │   ├── GenerationFailedError     501  generation failed                    final
    │   ├── FeatureDisabledError      505  feature disabled                     final
    │   └── EndpointNotServedError    HTTP 404/405 without an envelope on a POST: the host
    │                                 does not serve that path (nothing created)  final
    ├── TransportError                the network failed (the aiohttp error is chained)
    │   └── SubmitUncertainError      a submission may have been accepted (and billed)
    ├── ProtocolError                 an answer that is not a valid envelope (HTML, empty, ...)
    ├── DownloadError                 the result host answered a download with an HTTP error
    ├── TaskFailedError               the task ended in CREATE_FAILED or GENERATE_FAILED
    ├── TaskTimeoutError              a wait's deadline passed (also a TimeoutError)
    ├── StoreError                    the shared store is unreachable, lost its data, or is corrupt
    ├── KeyConflictError              a key reused for a different request (also a ValueError)
    ├── SessionClosedError            the session was used after it closed (also a RuntimeError)
    ├── EventLoopError                a session used from a second event loop (also a
    │                                 RuntimeError)
    ├── ReceiverClosedError           a CallbackReceiver was used after it stopped (also a
    │                                 RuntimeError)
    └── CallbackSignatureError        verify_callback(): a delivery's signature is missing,
                                      stale or wrong

    * a record that is not visible yet right after submission is tolerated for a grace period.

An envelope code that is not in the table becomes a plain :class:`APIError`; :func:`error_for`
is the one place a code (and, for the one documented exception to the table, a message)
becomes an error. Local validation
of arguments raises :class:`ValueError` or :class:`TypeError` before any request is sent.
"""

from __future__ import annotations

import copyreg
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import SubmitRequest, TaskRecord


class MidvaryError(Exception):
    """Root of every error midvary raises on purpose.

    Every midvary error pickles with its class and attributes (a Celery task that failed,
    an error sent to another process), although most take keyword-only arguments.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without calling ``__init__`` (most take keyword-only arguments): the class
        # made bare, then its message and attributes set; the pickle names only the class.
        return (copyreg.__newobj__, (type(self),), {**self.__dict__, "args": self.args})  # type: ignore[attr-defined]

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        attributes = dict(state or {})
        self.args = attributes.pop("args", ())
        self.__dict__.update(attributes)


class APIError(MidvaryError):
    """The provider answered with an error envelope or an error HTTP status.

    Attributes:
        code: The envelope's ``code`` (or the HTTP status when the body had none).
        message: The envelope's ``msg``, or a description of the answer.
        http_status: The HTTP status of the answer, or ``None`` when not known.
        retry_after: Seconds the provider asked us to wait (``Retry-After``), or ``None``
            when it did not say.

    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = "" if self.http_status in (None, self.code) else f", HTTP {self.http_status}"
        return f"{self.message} (code {self.code}{status})"


class BadRequestError(APIError):
    """400: the provider rejected the request's parameters."""


class AuthenticationError(APIError):
    """401: the API key is missing or invalid."""


class InsufficientCreditsError(APIError):
    """402: the account is out of credits."""


class NotFoundError(APIError):
    """404 (or 422 "recordInfo is null"): no such task is visible to this account."""


class ValidationError(APIError):
    """422: the provider's validation failed."""


class RateLimitError(APIError):
    """429: rate limited. Transient: retried with backoff where that is safe."""


class ServiceUnavailableError(APIError):
    """455: the service is under maintenance. Transient."""


class ServerError(APIError):
    """500: the provider failed. Transient for reads; uncertain for submissions."""


class GenerationFailedError(APIError):
    """501: generation failed."""


class FeatureDisabledError(APIError):
    """505: the feature is disabled for this account."""


#: Where the same API is documented and served when a host stops serving it.
MIDAPI_BASE_URL = "https://api.midapi.ai"


class EndpointNotServedError(APIError):
    """HTTP 404 or 405 without an envelope on a POST: the host does not serve that path.

    A certain refusal (nothing was created, nothing is billed): the request reached a
    server that has no such endpoint. The provider's own docs index stopped listing its
    Midjourney pages while midapi.ai still documents and serves the same API, so the fix is
    usually another base URL (``Session(base_url=...)``, ``MIDVARY_BASE_URL``, or
    ``--base-url`` on the command line).

    Attributes:
        path: The API path that is not served, e.g. ``/api/v1/mj/generateVary``.
        base_url: The base URL it was sent to.

    """

    def __init__(self, path: str, base_url: str, *, http_status: int) -> None:
        super().__init__(
            f"POST {path}: HTTP {http_status} without an envelope: {base_url} does not serve "
            f"{path} (nothing was created). {MIDAPI_BASE_URL} serves the same API: pass "
            f"Session(base_url={MIDAPI_BASE_URL!r}), or set MIDVARY_BASE_URL (--base-url on "
            "the command line)",
            code=http_status,
            http_status=http_status,
        )
        self.path = path
        self.base_url = base_url


#: The refusals that stop the account, not one request: a wrong key, no credits left, the
#: feature disabled. A fan-out sends no further POST after one (see ``Session.submit_many``).
ACCOUNT_STOPPING: tuple[type[APIError], ...] = (
    AuthenticationError,
    InsufficientCreditsError,
    FeatureDisabledError,
)


#: The one table from envelope code to exception class. Unknown codes map to APIError.
ERROR_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    404: NotFoundError,
    422: ValidationError,
    429: RateLimitError,
    455: ServiceUnavailableError,
    500: ServerError,
    501: GenerationFailedError,
    505: FeatureDisabledError,
}


def error_for(
    code: int, message: str, *, http_status: int | None, retry_after: float | None = None
) -> APIError:
    """The :class:`APIError` for envelope ``code`` and ``message`` (``APIError`` if unknown)."""
    cls = ERROR_CLASSES.get(code, APIError)
    if code == 422 and "recordinfo is null" in message.lower():
        # The provider answers a record-info for a task it does not know (yet) with 422
        # "recordInfo is null" as well as with 404.
        cls = NotFoundError
    return cls(message, code=code, http_status=http_status, retry_after=retry_after)


class TransportError(MidvaryError):
    """The request failed on the network; the aiohttp error is chained as ``__cause__``.

    Attributes:
        sent: ``False`` only when the request certainly never reached the provider (the
            connection could not be opened); ``True`` when it may have.

    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class SubmitUncertainError(TransportError):
    """A submission was sent but its answer was lost: the task may exist and may be billed.

    midvary never re-sends such a submission. Look the task up in the provider's dashboard
    (or submit again yourself if you accept a possible second charge).

    Attributes:
        request: The request (vary, generate, upscale or extend) whose fate is unknown.

    """

    def __init__(self, request: SubmitRequest, reason: str) -> None:
        super().__init__(
            f"submission of {request.describe()} may have been accepted and billed, "
            f"but its answer was lost ({reason}); it was not re-sent",
            sent=True,
        )
        self.request = request
        self.reason = reason


class ProtocolError(MidvaryError):
    """The answer was not a valid envelope: HTML, empty, not JSON, or missing fields.

    Attributes:
        http_status: The HTTP status of the answer, or ``None`` when not known.

    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class DownloadError(MidvaryError):
    """A result download failed: an HTTP error status, or a download refused by midvary.

    Refused (``reason`` set, never retried): a result URL that is not http(s), or a file
    over the session's ``max_download_bytes``. Network failures of a download raise
    :class:`TransportError` instead. Result URLs live on another host than the API;
    midvary never sends the API key there.

    Attributes:
        url: The URL that failed, without its query string (which may hold a signature).
        http_status: The HTTP status of the answer, or ``None`` when nothing was requested
            (a URL that is not http(s)).
        retry_after: Seconds the host asked us to wait (``Retry-After``), or ``None``.
        transient: Whether retrying may help (408, 425, 429 and 5xx statuses).
        reason: Why midvary refused the download, or ``None`` for an HTTP error status.

    """

    def __init__(
        self,
        url: str,
        http_status: int | None,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        if reason is None:
            super().__init__(f"download of {url} failed: HTTP {http_status}")
        else:
            super().__init__(f"download of {url} refused: {reason}")
        self.url = url
        self.http_status = http_status
        self.retry_after = retry_after
        self.reason = reason
        self.transient = (
            reason is None
            and http_status is not None
            and (http_status in (408, 425, 429) or http_status >= 500)
        )


class TaskFailedError(MidvaryError):
    """The task ended without images (CREATE_FAILED or GENERATE_FAILED).

    Attributes:
        record: The final :class:`~midvary.TaskRecord`.
        task_id: The failed task's id.

    """

    def __init__(self, record: TaskRecord) -> None:
        detail = record.error_message or "no reason given"
        code = f", error code {record.error_code}" if record.error_code is not None else ""
        super().__init__(
            f"task {record.task_id} ended {record.status.name}: {detail}{code}",
        )
        self.record = record
        self.task_id = record.task_id


class TaskTimeoutError(MidvaryError, TimeoutError):
    """A wait's deadline passed before the task was final. The handle stays usable.

    When every poll of the last ``failing_for`` seconds failed (the provider unreachable,
    or answering 5xx, 455 or 429), the message says so and the last poll error is
    ``last_error``, also chained as the cause.

    Attributes:
        task_id: The task that was not final yet.
        timeout: The deadline that passed, in seconds.
        record: The last record seen, or ``None`` when no poll succeeded.
        last_error: The error of the last poll when it failed, else ``None``.
        failing_for: Seconds since the polls began failing without a success since, or
            ``None`` when the last poll succeeded.

    """

    def __init__(
        self,
        task_id: str,
        timeout: float,
        record: TaskRecord | None,
        *,
        last_error: BaseException | None = None,
        failing_for: float | None = None,
    ) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.record = record
        self.last_error = last_error
        self.failing_for = failing_for
        super().__init__(
            f"{self.reason}; it may still finish: await its handle again or re-attach it "
            "with session.task()",
        )

    @property
    def reason(self) -> str:
        """What happened, without the advice: the deadline, the last state, failing polls."""
        state = self.record.status.name if self.record is not None else "not seen yet"
        text = f"task {self.task_id} was not final after {self.timeout:g} s (last state: {state})"
        error = self.last_error
        if error is None or self.failing_for is None:
            return text
        if isinstance(error, TransportError):
            what = "the provider was unreachable"
        elif isinstance(error, APIError):
            what = f"the provider answered {error.code}"
        else:
            what = "the provider's answers were unreadable"
        return (
            f"{text}: {what} for the last {self.failing_for:.0f} s "
            f"(last poll: {type(error).__name__}: {error})"
        )


class SessionClosedError(MidvaryError, RuntimeError):
    """The session was used after it was closed; a closed session cannot be reopened."""


class EventLoopError(MidvaryError, RuntimeError):
    """A session was used from another event loop than the one it first ran in.

    A :class:`~midvary.Session` (its connections, its waits) belongs to one event loop:
    create it, use it and close it inside one ``asyncio.run()``, typically with
    ``async with``. Create a new session for another loop.
    """


class ReceiverClosedError(MidvaryError, RuntimeError):
    """A stopped :class:`~midvary.CallbackReceiver` was used; it cannot be restarted.

    Raised when a session is created with, or submits through, a receiver whose
    ``stop()`` has run. Create a new receiver instead.
    """


class CallbackSignatureError(MidvaryError):
    """A callback delivery's signature is missing, malformed, stale or wrong.

    Raised by :func:`~midvary.verify_callback`. The message says what was wrong; it never
    holds the HMAC key or the signature.

    Attributes:
        task_id: The task the delivery's body names.

    """

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class StoreError(MidvaryError):
    """The shared store (SQLite, Redis) is unreachable, lost its data, or is corrupt.

    A submission that meets it fails closed: nothing is sent whose claim is not recorded.
    The underlying error (``sqlite3`` or ``redis``) is chained as ``__cause__``; no
    password of a Redis URL appears in the message.
    """


class KeyConflictError(MidvaryError, ValueError):
    """A submission key was reused for a different request; nothing was sent.

    Attributes:
        key: The key that is already bound to another request.

    """

    def __init__(self, key: str, stored: str) -> None:
        super().__init__(
            f"key {key!r} is already used for a different request ({stored}); use another "
            "key, or store.forget(key) to allow the key to be reused"
        )
        self.key = key
