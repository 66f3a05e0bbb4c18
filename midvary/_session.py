"""Session: the public façade of one connection to the provider.

The session validates its settings and hands the work to its parts: the
:class:`~midvary._core.SessionCore` (state, transport, record fetches, the registries closing
ends), the :class:`~midvary._submit.Submitter` (every submission) and
:class:`~midvary.FanOut` (many jobs). See ``docs/architecture.md``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp
import attrs

from . import _validate as check
from ._callbacks import CallbackReceiver, tickets_for
from ._config import USE_DEFAULT, PollPolicy, RetryPolicy, UseDefault
from ._core import SessionCore
from ._download import DEFAULT_MAX_DOWNLOAD_BYTES
from ._errors import SubmitUncertainError
from ._fanout import FanOut, Requests, collect_all, takes_options_of
from ._handle import TaskHandle
from ._jobs import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DOWNLOAD_CONCURRENCY,
    FanOutOptions,
    OnEvent,
    Outcome,
)
from ._models import (
    ExtendRequest,
    GenerateRequest,
    SubmitRequest,
    TaskRecord,
    UpscaleRequest,
    VaryRequest,
)
from ._outage import Outage
from ._ratelimit import DEFAULT_SUBMIT_RATE, SubmitLimiter
from ._store import MemoryStore, Store, StoreClaims, StoreLimiter
from ._submit import REQUEST_CLASSES, Limiter, Submitter, is_request
from ._testmode import default_poll, default_retry

_P = ParamSpec("_P")
_R = TypeVar("_R")
#: The request type of a fan-out's input (and of its outcomes' ``request``).
R = TypeVar("R")


def warn_renamed(old: str, new: str) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is a deprecated alias of ``new``.

    The message names the new name so a caller can fix the call from the warning alone.
    ``stacklevel=3`` points at the caller of the alias, not at the alias itself.
    """
    warnings.warn(
        f"{old} is deprecated, use {new} instead (same arguments and result)",
        DeprecationWarning,
        stacklevel=3,
    )


def _renamed(new: Callable[_P, _R], old: str) -> Callable[_P, _R]:
    """A deprecated method ``old`` that warns, then does exactly what ``new`` does."""

    @functools.wraps(new)
    def alias(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        warn_renamed(f"Session.{old}", f"Session.{new.__name__}")
        return new(*args, **kwargs)

    alias.__name__ = old
    alias.__qualname__ = f"Session.{old}"
    alias.__doc__ = f"Deprecated alias of :meth:`{new.__name__}` (it warns when called)."
    return alias


class Session:
    """An async session with the Midjourney API: generate, vary, upscale and extend.

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
        poll: Default :class:`PollPolicy` of every wait; ``None`` means ``PollPolicy()``
            (``midvary.testing.FAST_POLL`` in the test mode: ``MIDVARY_TESTING=1``).
        retry: :class:`RetryPolicy` for submissions that certainly were not accepted (and
            for downloads); ``None`` means ``RetryPolicy()`` (``FAST_RETRY`` in the test
            mode).
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
            With a ``store``, the limit holds for every session sharing the store and the
            account, in every process and on every machine (the store's clock, the slow-down
            shared).
        store: A :class:`Store`: a :class:`SQLiteStore` or :class:`RedisStore` (opened by
            you: ``async with store``; the session never closes it). Requests with a
            ``key`` are then submitted at most once per key across every session and
            process sharing it,
            and ``submit_rate`` is one limit for them all. ``None`` means keys deduplicate
            within this session only (an in-memory store) and the limit is this session's.
        max_download_bytes: The largest result file a download accepts, in bytes (>= 1;
            default 256 MiB); a larger one is a :class:`DownloadError` (a ``Content-Length``
            over it is refused before a byte is read, a body that grows past it is cut
            there). ``None`` means no limit.

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
        store: Store | None = None,
        max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        api_key = check.resolve_api_key(api_key)
        rate = check.submit_rate(submit_rate)
        url = check.resolve_base_url(base_url)
        check.instance(poll, "poll", PollPolicy, what="a midvary.PollPolicy")
        check.instance(retry, "retry", RetryPolicy, what="a midvary.RetryPolicy")
        timeout = aiohttp.ClientTimeout(
            total=check.positive_seconds(request_timeout, "request_timeout"),
            connect=check.positive_seconds(connect_timeout, "connect_timeout"),
        )
        if index_base not in (0, 1) or isinstance(index_base, bool):
            raise ValueError(f"index_base must be 0 (documented schema) or 1, got {index_base!r}")
        check.instance(
            http_session, "http_session", aiohttp.ClientSession, what="an aiohttp.ClientSession"
        )
        if store is not None and (not isinstance(store, Store) or not store.cross_process):
            raise TypeError(
                "store must be a midvary.SQLiteStore or midvary.RedisStore (or None), not "
                f"{type(store).__name__}"
            )
        self._core = SessionCore(
            base_url=url,
            api_key=api_key,
            timeout=timeout,
            http=http_session,
            poll=poll if poll is not None else default_poll(),
            retry=retry if retry is not None else default_retry(),
            index_base=index_base,
            seed=seed,
            max_download_bytes=(
                None
                if max_download_bytes is None
                else check.count(max_download_bytes, "max_download_bytes")
            ),
        )
        limiter: Limiter | None
        if store is None:
            limiter = SubmitLimiter(rate) if rate is not None else None
            claims = StoreClaims(MemoryStore(), "session", rate=None)
        else:
            namespace = store.namespace_for(api_key)
            limiter = StoreLimiter(store, namespace, rate) if rate is not None else None
            claims = StoreClaims(store, namespace, rate=rate)
        self._submitter = Submitter(
            self._core, limiter=limiter, tickets=tickets_for(callbacks), store=claims
        )

    @property
    def poll(self) -> PollPolicy:
        """The default :class:`PollPolicy` of every wait (assign one to change it)."""
        return self._core.poll

    @poll.setter
    def poll(self, policy: PollPolicy) -> None:
        if not isinstance(policy, PollPolicy):
            raise TypeError(f"poll must be a midvary.PollPolicy, not {type(policy).__name__}")
        self._core.poll = policy

    @property
    def retry(self) -> RetryPolicy:
        """The :class:`RetryPolicy` of submissions and downloads (assign one to change it)."""
        return self._core.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"retry must be a midvary.RetryPolicy, not {type(policy).__name__}")
        self._core.retry = policy

    def __repr__(self) -> str:
        return f"<midvary.Session base_url={self.base_url!r} state={self._core.state}>"

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return str(self._core.base_url)

    @property
    def outage(self) -> Outage | None:
        """The outage this session is waiting out, or ``None`` when there is none.

        A 455 (maintenance) or a connection that cannot be opened, on a submission or a
        poll, starts one: submissions pause (one at a time is let through to try, at a
        growing interval) and give up with their error once it has lasted the retry
        policy's ``outage_budget`` (30 minutes by default). Any other answer ends it. One
        WARNING line is logged when it starts and one when it ends.
        """
        return self._core.outage.state()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run; a closed session cannot be reopened."""
        return self._core.closed

    async def __aenter__(self) -> Session:
        self._core.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session: end pending waits and close the HTTP session it created.

        Fan-outs still running are cancelled first (see :meth:`FanOut.aclose`). Waits still
        in progress raise :class:`SessionClosedError`. An ``http_session`` that was passed
        in is left open. Closing twice is harmless.
        """
        await self._core.aclose(self._submitter.close)

    async def vary(
        self,
        task_id: str,
        image_index: int,
        *,
        water_mark: str | None = None,
        callback_url: str | None = None,
        key: str | None = None,
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
            key: The submission key (e.g. ``"order-42/0"``): the request is sent at most
                once per key across everything sharing the session's store. A key that
                already names a task returns a handle on it with no POST; a key being
                submitted elsewhere is waited for. ``None`` means no key.

        Returns:
            A :class:`TaskHandle`; ``await`` it for the final record.

        Raises:
            TypeError, ValueError: An argument is invalid; nothing was sent.
            KeyConflictError: ``key`` is bound to a different request; nothing was sent.
            StoreError: The store failed before the POST; nothing was sent.
            ReceiverClosedError: The session's callback receiver is stopped; nothing was sent.
            SubmitUncertainError: The answer was lost after sending; the task may exist and
                be billed. It is never re-sent automatically; for a key, also when an
                earlier submission of it was: ``store.forget(key)`` allows a re-send. With
                a :class:`CallbackReceiver`, :meth:`recover` awaits the task by its callback.
            APIError: The provider refused the submission (after retrying 429 and 455).

        """
        request = VaryRequest(
            task_id=task_id,
            image_index=image_index,
            water_mark=water_mark,
            callback_url=callback_url,
            key=key,
        )
        return await self.submit(request)

    async def generate(
        self,
        prompt: str,
        *,
        task_type: str = "mj_txt2img",
        speed: str | None = None,
        aspect_ratio: str | None = None,
        version: str | None = None,
        file_urls: Sequence[str] | None = None,
        stylization: int | None = None,
        weirdness: int | None = None,
        variety: int | None = None,
        ow: int | None = None,
        water_mark: str | None = None,
        enable_translation: bool | None = None,
        video_batch_size: int | None = None,
        motion: str | None = None,
        callback_url: str | None = None,
        key: str | None = None,
    ) -> TaskHandle:
        """Submit one generate task (a grid of 4 images, or videos) and return its handle.

        Each argument is the :class:`GenerateRequest` attribute of the same name, which
        lists the allowed values; ``None`` means "not sent" (the provider's default).
        ``callback_url`` works as in :meth:`vary`. The finished record's ``task_id`` is the
        parent to pass to :meth:`vary` and :meth:`upscale`.

        Raises:
            TypeError, ValueError: An argument is invalid; nothing was sent.
            SubmitUncertainError, APIError: As for :meth:`vary`.

        """
        request = GenerateRequest(
            prompt=prompt,
            task_type=task_type,
            speed=speed,
            aspect_ratio=aspect_ratio,
            version=version,
            file_urls=file_urls,
            stylization=stylization,
            weirdness=weirdness,
            variety=variety,
            ow=ow,
            water_mark=water_mark,
            enable_translation=enable_translation,
            video_batch_size=video_batch_size,
            motion=motion,
            callback_url=callback_url,
            key=key,
        )
        return await self.submit(request)

    async def upscale(
        self,
        task_id: str,
        image_index: int,
        *,
        water_mark: str | None = None,
        callback_url: str | None = None,
        key: str | None = None,
    ) -> TaskHandle:
        """Submit one upscale of image ``image_index`` (0..3) of task ``task_id``.

        The index is 0-based and sent as is (``index_base`` applies to vary only). The
        other arguments are as in :meth:`vary`; ``key`` as in :class:`UpscaleRequest`.

        Raises:
            TypeError, ValueError: An argument is invalid; nothing was sent.
            SubmitUncertainError, APIError: As for :meth:`vary` (a parent that is unknown or
                not finished is refused by the provider, typically as a ValidationError).

        """
        request = UpscaleRequest(
            task_id=task_id,
            image_index=image_index,
            water_mark=water_mark,
            callback_url=callback_url,
            key=key,
        )
        return await self.submit(request)

    async def extend(
        self,
        task_id: str,
        index: int,
        *,
        prompt: str | None = None,
        task_type: str | None = None,
        water_mark: str | None = None,
        callback_url: str | None = None,
        key: str | None = None,
    ) -> TaskHandle:
        """Submit one extend of video ``index`` (0..3) of the video task ``task_id``.

        Args:
            task_id: A finished ``mj_video`` or ``mj_video_hd`` generate task.
            index: Which of its videos, 0-based.
            prompt: The prompt of a manual extend (1 to 2000 characters); ``None`` for an
                auto extend.
            task_type: ``"mj_video_extend_manual"`` or ``"mj_video_extend_auto"``; ``None``
                means manual when a prompt is given, auto otherwise.
            water_mark: Watermark text; ``None`` for none.
            callback_url: As in :meth:`vary`.
            key: The submission key, as in :meth:`vary`; ``None`` means no key.

        Returns:
            A :class:`TaskHandle`; ``await`` it for the final record (its ``image_urls``
            are the extended video).

        Raises:
            TypeError, ValueError: An argument is invalid (a manual extend without a
                prompt, an auto extend with one...); nothing was sent.
            SubmitUncertainError, APIError: As for :meth:`vary` (a parent that is not a
                finished video task is refused by the provider).

        """
        request = ExtendRequest(
            task_id,
            index,
            prompt=prompt,
            task_type=task_type,
            water_mark=water_mark,
            callback_url=callback_url,
            key=key,
        )
        return await self.submit(request)

    async def submit(self, request: SubmitRequest, *, key: str | None = None) -> TaskHandle:
        """Submit one request and return its handle; see :meth:`vary`.

        Args:
            request: A :class:`VaryRequest`, :class:`GenerateRequest`,
                :class:`UpscaleRequest` or :class:`ExtendRequest`.
            key: Its submission key, if the request carries none (``request.key``);
                ``None`` means the request's own.

        Raises:
            TypeError: ``request`` is none of those; nothing was sent.
            ValueError: ``key`` differs from the request's own key.

        """
        if key is not None:
            if not is_request(request):
                raise TypeError(f"request must be {REQUEST_CLASSES}, not {type(request).__name__}")
            if request.key not in (None, key):
                raise ValueError(f"key={key!r} differs from the request's own key {request.key!r}")
            request = attrs.evolve(request, key=key)
        return await self._submitter.submit(request)

    async def run(
        self,
        request: SubmitRequest,
        *,
        timeout: float | UseDefault | None = USE_DEFAULT,
    ) -> TaskRecord:
        """Submit one request and wait for its task: the one-call form of :meth:`submit`.

        ``await session.run(request)`` is ``await (await session.submit(request))``, for
        code that wants the result and not the handle (``replicate.run``, fal's
        ``subscribe``)::

            grid = await session.run(midvary.GenerateRequest(prompt="a red fox"))

        Args:
            request: A :class:`VaryRequest`, :class:`GenerateRequest`,
                :class:`UpscaleRequest` or :class:`ExtendRequest` (its ``key``, if any, is
                honoured as by :meth:`submit`).
            timeout: Seconds to wait for the task once it is submitted; ``None`` means no
                deadline; by default the poll policy's ``timeout``.

        Returns:
            The final record of the task, which succeeded.

        Raises:
            TaskFailedError: The task failed (the error carries its record).
            TaskTimeoutError: ``timeout`` passed first; the error carries the task id, so
                :meth:`task` re-attaches to it.
            SubmitUncertainError: The submission's answer was lost; it is never re-sent.
            TypeError: ``request`` is not a request; nothing was sent.

        """
        handle = await self.submit(request)
        return await handle.wait(timeout)

    def submit_many(
        self,
        requests: Requests[R],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | UseDefault | None = USE_DEFAULT,
        poll: PollPolicy | None = None,
        on_event: OnEvent | None = None,
        download: str | os.PathLike[str] | None = None,
        download_concurrency: int = DEFAULT_DOWNLOAD_CONCURRENCY,
        max_tasks: int | None = None,
    ) -> FanOut[R]:
        """Run many jobs of any kind; iterate the result for one :class:`JobOutcome` each.

        Outcomes come in completion order; ``outcome.index`` is the job's input position::

            async with session.submit_many(requests, concurrency=16) as outcomes:
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

        What stops the account stops the fan-out: after the first submission refused with
        401 (:class:`AuthenticationError`), 402 (:class:`InsufficientCreditsError`) or 505
        (:class:`FeatureDisabledError`), no further POST is sent; the jobs already sent
        carry on, their outcomes are handed out, and then the iteration raises that error.
        The jobs refused or held back have no outcome: :attr:`FanOut.unfinished` lists them
        with ``not_sent=True`` (pending: nothing was billed for them).

        Args:
            requests: An iterable or async iterable of :class:`VaryRequest`,
                :class:`GenerateRequest`, :class:`UpscaleRequest` and :class:`ExtendRequest`
                in any mix (or :class:`TaskHandle`). Any other item becomes that job's
                ``TypeError``.
            concurrency: The most jobs in flight at once (>= 1): submitted or being
                submitted and not final, or final with their outcome not yet taken.
            timeout: Seconds each job may wait for its task after submission; ``None``
                means no deadline; by default the poll policy's ``timeout``.
            poll: The :class:`PollPolicy` of the waits; ``None`` means the session's.
            on_event: Called synchronously with a :class:`JobEvent` at each step of each
                job: ``SUBMITTING`` just before each POST is sent, ``SUBMITTED`` with the
                task id (``reattached=True`` when the request's key already named a task:
                nothing was sent), ``RATE_LIMITED`` before a wait, ``RETRYING`` before
                each retry of a submission or a poll, ``DONE``, ``FAILED``. An exception
                it raises becomes that job's error (raised at ``SUBMITTING``, nothing is
                sent); raised at ``DONE`` or ``FAILED``, it is logged.
            download: A directory to download every succeeded job's images into (see
                :meth:`download`); ``None`` means no download.
            download_concurrency: The most images of one job downloaded at once (>= 1).
            max_tasks: The most submissions that may be billed in this fan-out (>= 1):
                accepted or uncertain ones count, certainly refused ones do not, and a job
                re-attached by its key sends nothing. Jobs beyond it are not sent (listed
                in :attr:`FanOut.unfinished` with ``not_sent=True``; :attr:`FanOut.capped`
                is then true) and the input is not read further. ``None`` means no cap.

        Raises:
            TypeError, ValueError: An argument is invalid (before anything is sent).
            AuthenticationError, InsufficientCreditsError, FeatureDisabledError: From the
                iteration, after the outcomes of the jobs sent (see above).

        """
        self._core.check_open()
        options = FanOutOptions(
            concurrency=concurrency,
            timeout=timeout,
            poll=poll,
            on_event=on_event,
            download=download,
            download_concurrency=download_concurrency,
            max_tasks=max_tasks,
        )
        return FanOut(self._core, self._submitter, requests, options)

    @takes_options_of(submit_many)
    async def submit_all(self, requests: Requests[R], **options: Any) -> list[Outcome[R]]:
        """Run every job like :meth:`submit_many` and return the outcomes in input order.

        Takes the same arguments. The list holds one outcome per input item; cancelling
        the call cancels the jobs in flight. When the call ends without its list (it is
        cancelled, the input raises, or the session closes), the task ids of every job
        submitted, finished or not, are logged as a warning: billed tasks are never lost.

        With ``max_tasks``, the jobs not sent have no outcome: the list holds those that
        ran, in input order (their ``index`` says which).

        Raises:
            SessionClosedError: The session was closed before every job finished.
            AuthenticationError, InsufficientCreditsError, FeatureDisabledError: The
                account refused a submission: nothing more was sent, the jobs already sent
                were awaited, and the task ids of those finished are logged.
        """
        return await collect_all(self.submit_many(requests, **options))

    # The names before generate and upscale jobs joined vary's (issue 18); kept as warning
    # aliases, as stamina keeps its renamed names, so existing callers keep working.
    vary_many = _renamed(submit_many, "vary_many")
    vary_all = _renamed(submit_all, "vary_all")

    async def download(
        self,
        record: TaskRecord,
        directory: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        max_bytes: int | UseDefault | None = USE_DEFAULT,
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
            max_bytes: The largest file accepted, in bytes (>= 1); by default the session's
                ``max_download_bytes``; ``None`` means no limit.

        Returns:
            The paths of all the record's images, in ``image_urls`` order, whether written
            now or already there.

        Raises:
            TypeError, ValueError: An argument is invalid.
            DownloadError: The result host answered an HTTP error (after retries), a file
                was over ``max_bytes``, or a URL is not http(s) (``.reason`` says which).
            TransportError: The network failed (after retries).

        """
        if not isinstance(record, TaskRecord):
            raise TypeError(f"record must be a midvary.TaskRecord, not {type(record).__name__}")
        path = check.directory(directory)
        if max_bytes is not None and max_bytes is not USE_DEFAULT:
            max_bytes = check.count(max_bytes, "max_bytes")
        return await self._core.download(
            record, path, concurrency=check.count(concurrency, "concurrency"), max_bytes=max_bytes
        )

    async def recover(
        self, error: SubmitUncertainError, *, timeout: float | None = None
    ) -> TaskHandle:
        """Wait for the task of a submission whose answer was lost, found by its callback.

        The provider calls back every task it created. When this session has a
        :class:`CallbackReceiver`, a submission that raised :class:`SubmitUncertainError`
        keeps its callback token; a delivery to it names a task, which is confirmed with
        one GET (its echoed request must be the submission's: parent task, image index and
        the callback URL carrying the token) before its handle is returned. A keyed
        submission's key then records the task id. Nothing is ever sent again. With a
        receiver on a shared store, this works for an error raised because a key was found
        uncertain, too (the provider's callback may reach any replica, or come before).

        Args:
            error: What a submission of this session raised.
            timeout: Seconds to wait at most; ``None`` means while the token lives (the
                receiver's ``token_ttl`` from the submission). Calling again after a
                timeout goes on waiting.

        Returns:
            The handle of the recovered task; ``await`` it for the final record.

        Raises:
            TypeError: ``error`` is not a :class:`SubmitUncertainError`.
            SubmitUncertainError: ``error`` itself, when no task was confirmed: the session
                has no receiver (or the submission named its own ``callback_url``), the
                token expired, or ``timeout`` passed. The task may still exist.
            SessionClosedError: The session closed while waiting.

        """
        if not isinstance(error, SubmitUncertainError):
            raise TypeError(
                f"error must be a midvary.SubmitUncertainError, not {type(error).__name__}"
            )
        limit = check.optional_seconds(timeout, "timeout")
        self._core.check_open()
        recovery = self._submitter.recovery(error)
        handle = None if recovery is None else await recovery.wait(limit)
        if handle is None:
            raise error
        return handle

    async def credits(self) -> int:
        """The account's remaining credits: one ``GET /api/v1/chat/credit``, not retried.

        Cheap enough to call before and after a run (what it spent is the difference: the
        provider reports no per-task cost) or to check that the account is usable again.

        Raises:
            AuthenticationError: The API key is wrong.
            APIError: Another refusal (a :class:`ServiceUnavailableError` in maintenance).
            TransportError, ProtocolError: The request failed, or its answer held no whole
                number of credits.

        """
        self._core.check_open()
        return await self._core.fetch_credits()

    def task(self, task_id: str) -> TaskHandle:
        """Re-attach a :class:`TaskHandle` to an existing task id. No I/O.

        Raises:
            TypeError, ValueError: ``task_id`` is not a usable id.

        """
        self._core.check_open()
        return TaskHandle(self._core, check.task_id(task_id))

    async def get_task(self, task_id: str) -> TaskRecord:
        """Fetch a task's record once (one GET), in whatever state it is.

        Raises:
            NotFoundError: No such task is visible (yet).
            APIError, TransportError, ProtocolError: The request failed.

        """
        return await self._core.fetch_record(check.task_id(task_id))
