"""Run vary jobs on arq workers (``pip install 'midvary[arq]'``): one session per worker.

Start workers on as many machines as you like, all on one Redis::

    MIDVARY_API_KEY=... MIDVARY_REDIS_URL=redis://host:6379/0 arq midvary.arq.WorkerSettings

and enqueue jobs from anywhere::

    pool = await arq.create_pool(arq.connections.RedisSettings.from_dsn(url))
    job = await pool.enqueue_job("vary", "parent-id", 0, key="order-42/0", _job_id="order-42/0")
    result = await job.result()  # {"state": "succeeded", "task_id": ..., "image_urls": [...], ...}

Each worker process opens one :class:`~midvary.Session` on startup (closed on shutdown)
with a :class:`~midvary.RedisStore` on the same Redis, so the account's ``submit_rate`` is
one limit for every worker and a job's ``key`` is submitted at most once, however often arq
runs the job (arq re-runs the jobs of a worker that died: the re-run re-attaches to the
task and never bills twice).

The environment, read by :meth:`WorkerConfig.from_env` when a worker starts:

========================== ===========================================================
``MIDVARY_API_KEY``        the API key (or ``KIE_API_KEY``), as for :class:`Session`
``MIDVARY_BASE_URL``       the API's base URL (default ``https://api.kie.ai``)
``MIDVARY_REDIS_URL``      arq's Redis, and the store's unless told otherwise
                           (default ``redis://localhost:6379/0``)
``MIDVARY_STORE_URL``      the store's Redis, when it is not arq's
``MIDVARY_SUBMIT_RATE``    the account's limit, ``COUNT/SECONDS`` (default ``20/10``;
                           ``none``: no limit)
``MIDVARY_DOWNLOAD_DIR``   download every succeeded job's images there (default: none)
``MIDVARY_CONCURRENCY``    jobs one worker runs at once (arq's ``max_jobs``, default 10)
``MIDVARY_CLAIM_LEASE``    seconds a dead worker's claim on a key holds it (the store's
                           default, 30, when unset)
``MIDVARY_CALLBACK_URL``   the public URL of the callback load balancer: each worker then
                           serves a :class:`CallbackReceiver` on ``MIDVARY_CALLBACK_LISTEN``
                           (``host:port``, default ``0.0.0.0:8080``), replicas of one
                           another through the store
========================== ===========================================================

Why ``MIDVARY_REDIS_URL`` and ``MIDVARY_CONCURRENCY`` are read when this module is imported:
arq takes ``redis_settings`` and ``max_jobs`` from the settings class as it creates the
worker, right after importing it, and offers no hook before that (its own docs build
``redis_settings`` in the class body the same way). Everything else is read on startup.
A subclass may set its own ``redis_settings`` or ``max_jobs``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import attrs
from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker, func

from ._callbacks import CallbackReceiver
from ._errors import (
    APIError,
    DownloadError,
    KeyConflictError,
    SubmitUncertainError,
    TaskFailedError,
)
from ._ratelimit import DEFAULT_SUBMIT_RATE
from ._retry import is_transient
from ._session import Session
from ._store import RedisStore
from ._store._base import DEFAULT_CLAIM_LEASE
from ._validate import submit_rate as check_submit_rate

if TYPE_CHECKING:
    from ._handle import TaskHandle

__all__ = [
    "DEFAULT_REDIS_URL",
    "WorkerConfig",
    "WorkerSettings",
    "session_of",
    "shutdown",
    "startup",
    "vary",
]

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
_DEFAULT_LISTEN: Final = "0.0.0.0:8080"  # the receiver, behind a load balancer
_CTX_KEY: Final = "midvary"
# Seconds arq defers a job after transient trouble (doubling per try, up to the last).
_RETRY_DEFER: Final = (5.0, 300.0)
# Seconds a job whose answer was lost waits for the provider's callback (with a receiver):
# a task's callback comes when it ends, and a failed delivery is retried after 1 and 5
# minutes; within the job's timeout with the task's wait and downloads after it.
_RECOVER_WAIT: Final = 420.0

# What completes a job as "failed" when it is not transient: a refused or invalid request,
# a failed task, a result the host will not serve. Anything else is a bug, raised to arq.
_FINAL: Final = (APIError, KeyConflictError, TaskFailedError, DownloadError, TypeError, ValueError)

State = Literal["succeeded", "failed", "uncertain"]


def _rate(text: str) -> tuple[int, float] | None:
    if text.lower() == "none":
        return None
    count, sep, window = text.partition("/")
    try:
        parsed = (int(count), float(window))
    except ValueError:
        parsed = None
    if not sep or parsed is None:
        raise ValueError(
            f"MIDVARY_SUBMIT_RATE must be COUNT/SECONDS such as 20/10 (or none), got {text!r}"
        )
    try:
        return check_submit_rate(parsed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"MIDVARY_SUBMIT_RATE={text!r}: {exc}") from None


def _concurrency(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"MIDVARY_CONCURRENCY must be a whole number >= 1, got {text!r}")
    return int(text)


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a number of seconds > 0, got {text!r}")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"MIDVARY_CALLBACK_LISTEN must be HOST:PORT, got {text!r}")
    return host, int(port)


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """What one worker process runs with; :meth:`from_env` reads it from the environment.

    Attributes:
        store_url: The Redis URL of the worker's :class:`RedisStore` (its password never
            appears in a repr or log line).
        submit_rate: ``(count, window_seconds)`` of the account, shared by every worker;
            ``None`` (``MIDVARY_SUBMIT_RATE=none``) means no limit.
        download: The directory each succeeded job's images go to; ``None`` means none.
        callback_url: The public callback URL (a load balancer in front of every worker's
            receiver); ``None`` means the workers poll.
        callback_listen: ``(host, port)`` each worker's receiver serves on.
        claim_lease: Seconds a claim on a key lives without renewal (how long the re-run of
            a dead worker's job waits before it calls the key uncertain); ``None`` means
            the store's default. Keep arq's ``job_timeout`` above it plus a task's wait.

    """

    store_url: str = attrs.field(repr=False)
    submit_rate: tuple[int, float] | None = DEFAULT_SUBMIT_RATE
    download: Path | None = None
    callback_url: str | None = None
    callback_listen: tuple[str, int] = _listen(_DEFAULT_LISTEN)
    claim_lease: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """The configuration the ``MIDVARY_*`` variables give (see the module docstring).

        Args:
            environ: The variables; ``None`` means ``os.environ``.

        Raises:
            ValueError: A variable's value is invalid (the message names it).

        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        rate = get("MIDVARY_SUBMIT_RATE")
        download = get("MIDVARY_DOWNLOAD_DIR")
        lease = get("MIDVARY_CLAIM_LEASE")
        return cls(
            store_url=get("MIDVARY_STORE_URL") or get("MIDVARY_REDIS_URL") or DEFAULT_REDIS_URL,
            submit_rate=_rate(rate) if rate is not None else DEFAULT_SUBMIT_RATE,
            download=Path(download) if download is not None else None,
            callback_url=get("MIDVARY_CALLBACK_URL"),
            callback_listen=_listen(get("MIDVARY_CALLBACK_LISTEN") or _DEFAULT_LISTEN),
            claim_lease=_seconds("MIDVARY_CLAIM_LEASE", lease) if lease is not None else None,
        )


@attrs.define
class _Worker:
    """What :func:`startup` puts in arq's ``ctx``: one worker's store, session and config."""

    config: WorkerConfig
    store: RedisStore
    session: Session
    receiver: CallbackReceiver | None


async def startup(ctx: dict[str, Any]) -> None:
    """Open this worker's store, callback receiver and session (arq's ``on_startup``).

    Raises:
        ValueError: A ``MIDVARY_*`` variable is invalid, or there is no API key.
        StoreError: The store's Redis cannot be reached.

    """
    config = WorkerConfig.from_env()
    lease = DEFAULT_CLAIM_LEASE if config.claim_lease is None else config.claim_lease
    store = RedisStore(config.store_url, claim_lease=lease)
    await store.open()
    receiver: CallbackReceiver | None = None
    try:
        if config.callback_url is not None:
            receiver = CallbackReceiver(public_url=config.callback_url, store=store)
            await receiver.start(*config.callback_listen)
        session = Session(store=store, submit_rate=config.submit_rate, callbacks=receiver)
        await session.__aenter__()
    except BaseException:
        if receiver is not None:
            await receiver.stop()
        await store.close()
        raise
    ctx[_CTX_KEY] = _Worker(config, store, session, receiver)
    logger.info("midvary worker ready on %r", store)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what :func:`startup` opened (arq's ``on_shutdown``; unfinished jobs re-run)."""
    worker = ctx.pop(_CTX_KEY, None)
    if not isinstance(worker, _Worker):
        return
    try:
        await worker.session.aclose()
    finally:
        if worker.receiver is not None:
            await worker.receiver.stop()
        await worker.store.close()


def _worker(ctx: Mapping[str, Any]) -> _Worker:
    worker = ctx.get(_CTX_KEY)
    if not isinstance(worker, _Worker):
        raise RuntimeError(  # noqa: TRY004 - a worker set up wrongly, not a bad argument
            "midvary.arq jobs need midvary.arq.startup as the worker's on_startup"
        )
    return worker


def session_of(ctx: Mapping[str, Any]) -> Session:
    """The worker's :class:`Session` (opened by :func:`startup`), for jobs of your own.

    Raises:
        RuntimeError: :func:`startup` did not run in this worker.

    """
    return _worker(ctx).session


def _result(
    state: State,
    *,
    key: str,
    task_id: str | None = None,
    image_urls: tuple[str, ...] = (),
    paths: tuple[Path, ...] = (),
    error: BaseException | None = None,
) -> dict[str, Any]:
    return {
        "state": state,
        "key": key,
        "task_id": task_id,
        "image_urls": list(image_urls),
        "paths": [str(path) for path in paths],
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }


def _settle(
    ctx: Mapping[str, Any], key: str, error: Exception, *, task_id: str | None = None
) -> dict[str, Any]:
    """The failed job's result; arq runs it again later (raised) if ``error`` is transient."""
    if is_transient(error):
        tries = int(ctx.get("job_try") or 1)
        defer = min(_RETRY_DEFER[1], _RETRY_DEFER[0] * 2 ** (tries - 1))
        logger.warning("job %s: %s; arq runs it again in %gs", key, error, defer)
        raise Retry(defer=defer) from error
    if isinstance(error, _FINAL):
        return _result("failed", key=key, task_id=task_id, error=error)
    raise error


async def vary(
    ctx: dict[str, Any],
    task_id: str,
    image_index: int,
    *,
    key: str,
    water_mark: str | None = None,
    download: str | Literal[False] | None = None,
) -> dict[str, Any]:
    """The ``"vary"`` job: submit with ``key``, await the task, optionally download.

    Args:
        ctx: arq's job context (holding this worker's session).
        task_id: The parent task whose image to vary.
        image_index: Which of its 4 images, 0-based.
        key: The submission key: the request is sent at most once per key, however often
            arq runs the job. Use it as the arq ``_job_id`` too.
        water_mark: Watermark text; ``None`` for none.
        download: A directory for the images; ``False`` for no download; ``None`` means the
            worker's ``MIDVARY_DOWNLOAD_DIR`` (none when unset).

    Returns:
        A JSON-able dict: ``state`` (``"succeeded"``, ``"failed"`` or ``"uncertain"``),
        ``key``, ``task_id`` (the vary task's id, ``None`` if none is known), ``image_urls``,
        ``paths`` (downloaded files) and ``error`` (``None``, or the error's type and text).
        A failed task, a refused or invalid request and an uncertain submission (sent, its
        answer lost: never re-sent; ``store.forget(key)`` allows that) complete the job.
        With a callback receiver, a lost answer is first waited for (up to 7 minutes): the
        provider's callback names the task, which the job then awaits (``"succeeded"``),
        and the key records it, for any worker.

    Raises:
        arq.Retry: Transient trouble (the store unreachable, the provider in maintenance or
            rate limiting past the retry budget, the network, a wait that timed out, the
            worker shutting down): arq runs the job again later, which re-attaches by key.

    """
    worker = _worker(ctx)
    session = worker.session
    target = worker.config.download if download is None else download
    try:
        handle = await _submitted(session, task_id, image_index, water_mark=water_mark, key=key)
    except SubmitUncertainError as exc:
        return _result("uncertain", key=key, error=exc)
    except Exception as exc:
        return _settle(ctx, key, exc)
    try:
        record = await handle
        paths: tuple[Path, ...] = ()
        if target is not None and target is not False:
            paths = await session.download(record, Path(target))
    except Exception as exc:
        return _settle(ctx, key, exc, task_id=handle.task_id)
    return _result(
        "succeeded", key=key, task_id=record.task_id, image_urls=record.image_urls, paths=paths
    )


async def _submitted(
    session: Session, task_id: str, image_index: int, *, water_mark: str | None, key: str
) -> TaskHandle:
    """The handle of the job's task: submitted, re-attached by key, or recovered.

    A submission whose answer was lost waits (with a receiver) for the provider's callback,
    which names its task (the key then records it): see :meth:`Session.recover`.
    """
    try:
        return await session.vary(task_id, image_index, water_mark=water_mark, key=key)
    except SubmitUncertainError as exc:
        return await session.recover(exc, timeout=_RECOVER_WAIT)


_WORKER_ARGS: Final = frozenset(inspect.signature(Worker).parameters)


class WorkerSettings:
    """arq's settings for midvary workers: ``arq midvary.arq.WorkerSettings``.

    Subclass it to change arq settings (``job_timeout``, ``max_tries``, ``functions``,
    ...): every setting a subclass does not define is copied into it, because arq reads
    only the settings class's own ``__dict__``.
    """

    functions: ClassVar[list[Any]] = [func(vary, name="vary")]
    # Plain functions in the class's __dict__, which is what arq reads (never bound).
    on_startup: ClassVar[Any] = startup
    on_shutdown: ClassVar[Any] = shutdown
    redis_settings: ClassVar[RedisSettings] = RedisSettings.from_dsn(
        os.environ.get("MIDVARY_REDIS_URL", "").strip() or DEFAULT_REDIS_URL
    )
    max_jobs: ClassVar[int] = _concurrency(
        os.environ.get("MIDVARY_CONCURRENCY", "").strip() or "10"
    )
    #: Seconds one job may run: longer than a wait's 900 s deadline plus the downloads.
    job_timeout: ClassVar[float] = 1200.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _WORKER_ARGS:
            if name not in cls.__dict__:
                for base in cls.__mro__[1:]:
                    if name in base.__dict__:
                        setattr(cls, name, base.__dict__[name])
                        break
