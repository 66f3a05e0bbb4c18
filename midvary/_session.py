"""Session: the one object that talks to the provider."""

from __future__ import annotations

import enum
import logging
import os
import random
from pathlib import Path
from typing import Final

import aiohttp
import attrs
import yarl

from ._callbacks import CallbackReceiver
from ._config import USE_DEFAULT, PollPolicy, RetryPolicy, UseDefault
from ._converter import structure_record, structure_task_id, vary_body
from ._download import check_concurrency, check_directory, download_record
from ._errors import (
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SessionClosedError,
    SubmitUncertainError,
    TransportError,
    ValidationError,
)
from ._fanout import FanOut, OnEvent, Requests, VaryOutcome
from ._handle import TaskHandle
from ._models import TaskRecord, VaryRequest, check_http_url, check_task_id
from ._polling import DurationStats
from ._ratelimit import DEFAULT_SUBMIT_RATE, SubmitHooks, SubmitLimiter, check_submit_rate
from ._retry import attempt_then_retry, is_unaccepted, submit_retrying
from ._transport import Transport

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api.kie.ai"
VARY_PATH: Final = "/api/v1/mj/generateVary"
RECORD_PATH: Final = "/api/v1/mj/record-info"
_KEY_VARIABLES: Final = ("MIDVARY_API_KEY", "KIE_API_KEY")


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _resolve_api_key(api_key: str | None) -> str:
    if api_key is None:
        for name in _KEY_VARIABLES:
            value = os.environ.get(name, "").strip()
            if value:
                return value
        raise ValueError(
            "no API key: pass Session(api_key=...) or set MIDVARY_API_KEY (or KIE_API_KEY)",
        )
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
    if not api_key.strip() or any(ch.isspace() for ch in api_key.strip()):
        # Never echo the value: it is a secret even when it is malformed.
        raise ValueError("api_key must be a non-empty string without whitespace")
    return api_key.strip()


def _resolve_base_url(base_url: str | None) -> yarl.URL:
    if base_url is None:
        base_url = os.environ.get("MIDVARY_BASE_URL", "").strip() or DEFAULT_BASE_URL
    check_http_url(base_url, name="base_url")
    url = yarl.URL(base_url)
    if url.query_string or url.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
    return url.with_path(url.path.rstrip("/"))


class Session:
    """An async session with the Midjourney Vary API.

    Use it as an async context manager (or call :meth:`aclose` yourself)::

        async with midvary.Session() as session:
            handle = await session.vary("parent-task-id", 0)
            record = await handle

    Args:
        api_key: The API key; ``None`` reads ``MIDVARY_API_KEY``, then ``KIE_API_KEY``.
            Missing everywhere is a ``ValueError`` here, before any request.
        base_url: The API's base URL; ``None`` reads ``MIDVARY_BASE_URL``, else
            ``https://api.kie.ai`` (``https://api.midapi.ai`` serves the same API). The key
            is sent to this host only.
        poll: Default :class:`PollPolicy` of every wait; ``None`` means ``PollPolicy()``.
        retry: :class:`RetryPolicy` for submissions that certainly were not accepted (and
            for downloads); ``None`` means ``RetryPolicy()``.
        request_timeout: Seconds one HTTP request may take in all (> 0).
        connect_timeout: Seconds opening a connection may take (> 0).
        index_base: Added to the 0-based ``image_index`` on the wire: 0 (the documented
            schema, default) or 1 for an account whose provider proves to be 1-based. The
            public ``image_index`` stays 0..3 either way.
        http_session: An ``aiohttp.ClientSession`` to use; the session never closes one it
            was given. ``None`` means it creates (and closes) its own.
        seed: Seed for the jitter's random numbers, for reproducible tests; ``None`` means
            unseeded.
        callbacks: A :class:`CallbackReceiver`: each submission then gets its own callback
            URL, and its handle is resolved by the callback or by a (slow, safety) poll,
            whichever comes first. ``None`` means polling only. The session's tokens are
            forgotten when it closes; the receiver itself is not stopped.
        submit_rate: ``(count, window_seconds)``: every submission of this session (fan-out
            or not) waits so that at most ``count`` are sent in any ``window_seconds``. The
            default is the provider's documented limit, 20 per 10 s; ``None`` turns the
            limiter off. A 429 that still comes back halves the allowance for a while.

    Raises:
        ReceiverClosedError: ``callbacks`` is a stopped receiver.

    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        index_base: int = 0,
        http_session: aiohttp.ClientSession | None = None,
        seed: int | None = None,
        callbacks: CallbackReceiver | None = None,
        submit_rate: tuple[int, float] | None = DEFAULT_SUBMIT_RATE,
    ) -> None:
        self._api_key = _resolve_api_key(api_key)
        self._limiter = SubmitLimiter(check_submit_rate(submit_rate))
        self._fanouts: set[FanOut] = set()
        self._base_url = _resolve_base_url(base_url)
        if poll is not None and not isinstance(poll, PollPolicy):
            raise TypeError(f"poll must be a midvary.PollPolicy, not {type(poll).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a midvary.RetryPolicy, not {type(retry).__name__}")
        for name, value in (
            ("request_timeout", request_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if index_base not in (0, 1) or isinstance(index_base, bool):
            raise ValueError(f"index_base must be 0 (documented schema) or 1, got {index_base!r}")
        if http_session is not None and not isinstance(http_session, aiohttp.ClientSession):
            raise TypeError("http_session must be an aiohttp.ClientSession or None")
        self.poll = poll if poll is not None else PollPolicy()
        self.retry = retry if retry is not None else RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout)
        self._index_base = index_base
        self._http = http_session
        self._owns_http = http_session is None
        self._transport: Transport | None = None
        self._state = _State.UNOPENED
        self._rng = random.Random(seed)
        self._durations = DurationStats()
        self._waiters: set[TaskHandle] = set()
        self._callbacks = _check_receiver(callbacks)

    def __repr__(self) -> str:
        return f"<midvary.Session base_url={str(self._base_url)!r} state={self._state.value}>"

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return str(self._base_url)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run; a closed session cannot be reopened."""
        return self._state is _State.CLOSED

    async def __aenter__(self) -> Session:
        self._open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _open(self) -> Transport:
        if self._state is _State.CLOSED:
            raise SessionClosedError(
                "this Session is closed and cannot be reopened; create a new one"
            )
        if self._transport is None:
            if self._http is None:
                self._http = aiohttp.ClientSession()
            self._transport = Transport(
                self._http, base_url=self._base_url, api_key=self._api_key, timeout=self._timeout
            )
            self._state = _State.OPEN
        return self._transport

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise SessionClosedError("this Session is closed; create a new one")

    async def aclose(self) -> None:
        """Close the session: end pending waits and close the HTTP session it created.

        Fan-outs still running are cancelled first (see :meth:`FanOut.aclose`). Waits still
        in progress raise :class:`SessionClosedError`. An ``http_session`` that was passed
        in is left open. Closing twice is harmless.
        """
        if self._state is _State.CLOSED:
            return
        for fanout in tuple(self._fanouts):
            await fanout.aclose()
        self._state = _State.CLOSED
        self._limiter.close(SessionClosedError("the Session was closed before this was sent"))
        closed = SessionClosedError("the Session was closed while waiting for this task")
        for handle in tuple(self._waiters):
            handle._wake(closed)
        if self._callbacks is not None:
            self._callbacks._forget(self)
        if self._owns_http and self._http is not None:
            await self._http.close()

    async def vary(
        self,
        task_id: str,
        image_index: int,
        *,
        water_mark: str | None = None,
        callback_url: str | None = None,
    ) -> TaskHandle:
        """Submit one vary task and return its handle (without waiting for the result).

        Args:
            task_id: The id of the earlier generation task whose image to vary.
            image_index: Which of its 4 images, 0-based: 0, 1, 2 or 3.
            water_mark: Watermark text; ``None`` for none.
            callback_url: Absolute http(s) URL the provider POSTs the result to; ``None``
                for none (polling finds the result either way), or for the session's
                :class:`CallbackReceiver` URL when it has one. An explicit URL wins over the
                receiver: it is sent as is, and the handle polls at the session's pace.

        Returns:
            A :class:`TaskHandle`; ``await`` it for the final record.

        Raises:
            TypeError, ValueError: An argument is invalid; nothing was sent.
            ReceiverClosedError: The session's callback receiver is stopped; nothing was sent.
            SubmitUncertainError: The answer was lost after sending; the task may exist and
                be billed. It is never re-sent automatically.
            APIError: The provider refused the submission (after retrying 429 and 455).

        """
        request = VaryRequest(
            task_id=task_id,
            image_index=image_index,
            water_mark=water_mark,
            callback_url=callback_url,
        )
        return await self.submit(request)

    async def submit(self, request: VaryRequest) -> TaskHandle:
        """Submit one :class:`VaryRequest` and return its handle; see :meth:`vary`."""
        return await self._submit(request)

    async def _submit(self, request: VaryRequest, hooks: SubmitHooks | None = None) -> TaskHandle:
        if not isinstance(request, VaryRequest):
            raise TypeError(f"request must be a midvary.VaryRequest, not {type(request).__name__}")
        transport = self._open()
        receiver = self._callbacks
        # A token is registered before the POST goes out: the callback may beat the answer.
        ticket = None
        if receiver is not None and request.callback_url is None:
            ticket = receiver._issue(self)
        wire = request if ticket is None else attrs.evolve(request, callback_url=ticket.url)
        body = vary_body(wire, index_base=self._index_base)

        async def post() -> str:
            self._check_open()  # the limiter may have kept it waiting while the session closed
            try:
                data = await transport.call("POST", VARY_PATH, json_body=body)
                return structure_task_id(data)
            except ServerError as exc:
                raise SubmitUncertainError(request, f"the provider answered {exc}") from exc
            except ProtocolError as exc:
                raise SubmitUncertainError(request, str(exc)) from exc
            except TransportError as exc:
                if exc.sent:
                    raise SubmitUncertainError(request, str(exc)) from exc
                raise

        async def attempt() -> str:
            self._check_open()
            return await self._limiter.send(post, hooks)

        def on_retry(exc: BaseException, wait: float) -> None:
            if isinstance(exc, RateLimitError):
                self._limiter.slow_down(wait)
                if hooks is not None:
                    hooks.waiting(wait, exc)

        try:
            task_id: str = await attempt_then_retry(
                attempt, lambda: submit_retrying(self.retry, on_retry=on_retry), is_unaccepted
            )
        except BaseException:
            if ticket is not None:
                ticket.drop()
            raise
        if logger.isEnabledFor(logging.INFO):  # describe() formats a string: only if it is kept
            logger.info("submitted %s as task %s", request.describe(), task_id)
        # A handle waiting on a callback polls slowly, as a safety net.
        safety = None if ticket is None else ticket.receiver.safety_poll
        handle = TaskHandle(self, task_id, request=request, submitted=True, poll=safety)
        if ticket is not None:
            ticket.bind(handle)
        return handle

    def vary_many(
        self,
        requests: Requests,
        *,
        concurrency: int = 16,
        timeout: float | UseDefault | None = USE_DEFAULT,
        poll: PollPolicy | None = None,
        on_event: OnEvent | None = None,
        download: str | os.PathLike[str] | None = None,
        download_concurrency: int = 4,
    ) -> FanOut:
        """Run many vary jobs; iterate the result for one :class:`VaryOutcome` per job.

        Outcomes come in completion order; ``outcome.index`` is the job's input position::

            async with session.vary_many(requests, concurrency=16) as outcomes:
                async for outcome in outcomes:
                    print(outcome.index, outcome.task_id, outcome.record or outcome.error)

        Each job submits its request (through the session's ``submit_rate`` limiter), awaits
        the task, and downloads its images if ``download`` is given. A job's failure is its
        outcome (``outcome.error``); it never cancels or hides the others. Requests are
        pulled from ``requests`` only as slots free up, so it may be a lazy (or async)
        iterable of any length. An item that is a :class:`TaskHandle` (from
        :meth:`task`) is awaited without submitting anything, to resume earlier jobs.

        Cancelling the iteration (or leaving the ``async with`` block, or closing the
        session) cancels the jobs in flight; :attr:`FanOut.unfinished` then lists those
        whose outcome was not handed out, with their task ids.

        Args:
            requests: An iterable or async iterable of :class:`VaryRequest` (or
                :class:`TaskHandle`). Any other item becomes that job's ``TypeError``.
            concurrency: The most jobs in flight at once (>= 1): submitted or being
                submitted and not final, or final with their outcome not yet taken.
            timeout: Seconds each job may wait for its task after submission; ``None``
                means no deadline; by default the poll policy's ``timeout``.
            poll: The :class:`PollPolicy` of the waits; ``None`` means the session's.
            on_event: Called synchronously with a :class:`JobEvent` at each step of each
                job: ``SUBMITTING`` just before each POST is sent, ``SUBMITTED`` with the
                task id, ``RATE_LIMITED`` before a wait, ``DONE``, ``FAILED``. An exception
                it raises becomes that job's error (raised at ``SUBMITTING``, nothing is
                sent); raised at ``DONE`` or ``FAILED``, it is logged.
            download: A directory to download every succeeded job's images into (see
                :meth:`download`); ``None`` means no download.
            download_concurrency: The most images of one job downloaded at once (>= 1).

        Raises:
            TypeError, ValueError: An argument is invalid (before anything is sent).

        """
        self._check_open()
        return FanOut(
            self,
            requests,
            concurrency=concurrency,
            timeout=timeout,
            poll=poll,
            on_event=on_event,
            download=download,
            download_concurrency=download_concurrency,
        )

    async def vary_all(
        self,
        requests: Requests,
        *,
        concurrency: int = 16,
        timeout: float | UseDefault | None = USE_DEFAULT,
        poll: PollPolicy | None = None,
        on_event: OnEvent | None = None,
        download: str | os.PathLike[str] | None = None,
        download_concurrency: int = 4,
    ) -> list[VaryOutcome]:
        """Run every job like :meth:`vary_many` and return the outcomes in input order.

        Takes the same arguments. The list holds one outcome per input item; cancelling
        the call cancels the jobs in flight. When the call ends without its list (it is
        cancelled, the input raises, or the session closes), the task ids of every job
        submitted, finished or not, are logged as a warning: billed tasks are never lost.

        Raises:
            SessionClosedError: The session was closed before every job finished.
        """
        outcomes: list[VaryOutcome] = []
        async with self.vary_many(
            requests,
            concurrency=concurrency,
            timeout=timeout,
            poll=poll,
            on_event=on_event,
            download=download,
            download_concurrency=download_concurrency,
        ) as fanout:
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

    async def download(
        self, record: TaskRecord, directory: str | os.PathLike[str], *, concurrency: int = 4
    ) -> tuple[Path, ...]:
        """Download a record's images to ``<directory>/<task_id>_<n>.<ext>``.

        ``n`` is the image's 0-based position in ``record.image_urls``; ``ext`` comes from
        the URL's path (``.png`` if it has none). Each file is streamed to a temporary file
        beside it and renamed into place once complete, so a file that exists is complete
        and is skipped. Transient failures (network, HTTP 408/425/429/5xx) are retried with
        the session's :class:`RetryPolicy`. Only a User-Agent is sent to the result host,
        never the API key. The directory is created if needed.

        Args:
            record: The task's record; a record without image URLs downloads nothing.
            directory: Where to put the files.
            concurrency: The most images downloaded at once (>= 1).

        Returns:
            The paths of all the record's images, in ``image_urls`` order, whether written
            now or already there.

        Raises:
            TypeError, ValueError: An argument is invalid.
            DownloadError: The result host answered an HTTP error (after retries).
            TransportError: The network failed (after retries).

        """
        if not isinstance(record, TaskRecord):
            raise TypeError(f"record must be a midvary.TaskRecord, not {type(record).__name__}")
        path = check_directory(directory)
        limit = check_concurrency(concurrency)
        self._open()
        assert self._http is not None  # noqa: S101 - _open() made it
        return await download_record(
            self._http, record, path, timeout=self._timeout, retry=self.retry, concurrency=limit
        )

    def task(self, task_id: str) -> TaskHandle:
        """Re-attach a :class:`TaskHandle` to an existing task id. No I/O.

        Raises:
            TypeError, ValueError: ``task_id`` is not a usable id.

        """
        self._check_open()
        return TaskHandle(self, check_task_id(task_id))

    async def get_task(self, task_id: str) -> TaskRecord:
        """Fetch a task's record once (one GET), in whatever state it is.

        Raises:
            NotFoundError: No such task is visible (yet).
            APIError, TransportError, ProtocolError: The request failed.

        """
        return await self._fetch_record(check_task_id(task_id))

    async def _fetch_record(self, task_id: str) -> TaskRecord:
        transport = self._open()
        try:
            data = await transport.call("GET", RECORD_PATH, params={"taskId": task_id})
        except (ValidationError, NotFoundError) as exc:
            # 404, or the provider's other way of saying "no such record (yet)": 422
            # "recordInfo is null". Either becomes a NotFoundError that names the task.
            if isinstance(exc, ValidationError) and "recordinfo is null" not in exc.message.lower():
                raise
            raise NotFoundError(
                f"task {task_id} not found ({exc.message})",
                code=exc.code,
                http_status=exc.http_status,
            ) from exc
        if data is None:
            raise NotFoundError(f"task {task_id} not found (empty record)", code=404)
        record = structure_record(data)
        if record.task_id != task_id:
            raise ProtocolError(
                f"asked for task {task_id}, the provider answered with {record.task_id}"
            )
        return record


def _log_dropped(outcomes: list[VaryOutcome]) -> None:
    """Log the task ids of finished jobs whose outcomes a failing ``vary_all`` drops."""
    dropped = [o for o in outcomes if o.task_id is not None or o.uncertain]
    if dropped:
        logger.warning(
            "vary_all ended early: %d finished jobs are not returned (task ids: %s)",
            len(dropped),
            ", ".join(o.task_id or "unknown (uncertain)" for o in dropped),
        )


def _check_receiver(callbacks: object) -> CallbackReceiver | None:
    if callbacks is None:
        return None
    if not isinstance(callbacks, CallbackReceiver):
        raise TypeError(
            f"callbacks must be a midvary.CallbackReceiver or None, not {type(callbacks).__name__}"
        )
    callbacks._check_usable()
    return callbacks
