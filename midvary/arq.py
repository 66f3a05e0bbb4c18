"""Run midvary jobs on arq workers (``pip install 'midvary[arq]'``): one session per worker.

Start workers on as many machines as you like, all on one Redis::

    MIDVARY_API_KEY=... MIDVARY_REDIS_URL=redis://host:6379/0 arq midvary.arq.WorkerSettings

and enqueue jobs from anywhere: ``"generate"``, ``"vary"``, ``"upscale"`` and ``"extend"``,
each with its submission ``key`` (also its arq job id, so arq queues it once)::

    pool = await arq.create_pool(arq.connections.RedisSettings.from_dsn(url))
    job = await pool.enqueue_job("vary", "parent-id", 0, key="order-42/0", _job_id="order-42/0")
    if job is None:  # that job id was enqueued before (queued, running or its result kept)
        job = arq.jobs.Job("order-42/0", pool)
    result = await job.result()  # {"state": "succeeded", "task_id": ..., "image_urls": [...], ...}

Every job kind returns the same result dict (see :func:`vary`).

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

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar, Final

import attrs
from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker, func

# Public names, as any application would import them; the job itself is in _workers (shared
# with the Celery module), and why is in docs/architecture.md.
from . import (
    CallbackReceiver,
    ExtendRequest,
    GenerateRequest,
    RedisStore,
    Session,
    UpscaleRequest,
    VaryRequest,
)
from ._models import SubmitRequest
from ._workers import (
    DEFAULT_REDIS_URL,
    AccountGate,
    Download,
    RetryLater,
    WorkerConfig,
    download_dir,
    retry_delay,
    run_job,
)

__all__ = [
    "DEFAULT_REDIS_URL",
    "WorkerConfig",
    "WorkerSettings",
    "extend",
    "generate",
    "session_of",
    "shutdown",
    "startup",
    "upscale",
    "vary",
]

logger = logging.getLogger(__name__)

_CTX_KEY: Final = "midvary"


def _concurrency(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"MIDVARY_CONCURRENCY must be a whole number >= 1, got {text!r}")
    return int(text)


@attrs.frozen
class _Worker:
    """What :func:`startup` puts in arq's ``ctx``: one worker's session and what it opened."""

    config: WorkerConfig
    store: RedisStore
    session: Session
    gate: AccountGate
    opened: contextlib.AsyncExitStack  # closes the gate, session, receiver and store


async def startup(ctx: dict[str, Any]) -> None:
    """Open this worker's store, callback receiver and session (arq's ``on_startup``).

    Raises:
        ValueError: A ``MIDVARY_*`` variable is invalid, or there is no API key.
        StoreError: The store's Redis cannot be reached.

    """
    config = WorkerConfig.from_env()
    store = config.store()
    async with contextlib.AsyncExitStack() as opened:  # what is open is closed if one fails
        await store.open()
        opened.push_async_callback(store.close)
        receiver: CallbackReceiver | None = None
        if config.callback_url is not None:
            receiver = CallbackReceiver(public_url=config.callback_url, store=store)
            opened.push_async_callback(receiver.stop)
            await receiver.start(*config.callback_listen)
        session = Session(store=store, submit_rate=config.submit_rate, callbacks=receiver)
        await opened.enter_async_context(session)
        gate = AccountGate(session)
        opened.push_async_callback(gate.close)
        ctx[_CTX_KEY] = _Worker(config, store, session, gate, opened.pop_all())
    logger.info("midvary worker ready on %r", store)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what :func:`startup` opened (arq's ``on_shutdown``; unfinished jobs re-run)."""
    worker = ctx.pop(_CTX_KEY, None)
    if isinstance(worker, _Worker):
        await worker.opened.aclose()


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


async def vary(
    ctx: dict[str, Any],
    task_id: str,
    image_index: int,
    *,
    key: str,
    water_mark: str | None = None,
    download: Download = None,
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
        ``key``, ``task_id`` (the new task's id, ``None`` if none is known), ``image_urls``,
        ``paths`` (downloaded files) and ``error`` (``None``, or the error's type and text).
        A failed task, a refused or invalid request and an uncertain submission (sent, its
        answer lost: never re-sent; ``store.forget(key)`` allows that) complete the job.
        A submission refused for the account (401, 402, 505) does not: the worker's jobs
        wait until a credits check (at a growing interval) finds the account usable, then
        send it (within arq's ``job_timeout``; past it arq runs the job again).
        With a callback receiver, a lost answer is first waited for (up to 7 minutes): the
        provider's callback names the task, which the job then awaits (``"succeeded"``),
        and the key records it, for any worker. Every job kind returns this same dict.

    Raises:
        arq.Retry: Transient trouble (the store unreachable, the provider in maintenance or
            rate limiting past the retry budget, the network, a wait that timed out, the
            worker shutting down): arq runs the job again later, which re-attaches by key.

    """
    make = partial(VaryRequest, task_id=task_id, image_index=image_index, water_mark=water_mark)
    return await _job(ctx, key, download, make)


async def generate(
    ctx: dict[str, Any],
    prompt: str,
    *,
    key: str,
    download: Download = None,
    **options: Any,
) -> dict[str, Any]:
    """The ``"generate"`` job: a :class:`~midvary.GenerateRequest` of ``prompt`` and ``options``.

    Args:
        ctx: arq's job context.
        prompt: The prompt, 1 to 2000 characters.
        key: The submission key, as in :func:`vary`.
        download: As in :func:`vary`.
        **options: Any other :class:`~midvary.GenerateRequest` field (``task_type``,
            ``aspect_ratio``, ``speed``, ``file_urls``, ...); an unknown or invalid one
            completes the job ``"failed"`` with nothing sent.

    Returns:
        The result dict of :func:`vary`.

    Raises:
        arq.Retry: As for :func:`vary`.

    """
    return await _job(ctx, key, download, partial(GenerateRequest, prompt=prompt, **options))


async def upscale(
    ctx: dict[str, Any],
    task_id: str,
    image_index: int,
    *,
    key: str,
    water_mark: str | None = None,
    download: Download = None,
) -> dict[str, Any]:
    """The ``"upscale"`` job: image ``image_index`` (0..3) of task ``task_id``, upscaled.

    The arguments, the result dict and ``arq.Retry`` are as in :func:`vary`.
    """
    make = partial(UpscaleRequest, task_id=task_id, image_index=image_index, water_mark=water_mark)
    return await _job(ctx, key, download, make)


async def extend(
    ctx: dict[str, Any],
    task_id: str,
    index: int,
    *,
    key: str,
    prompt: str | None = None,
    task_type: str | None = None,
    water_mark: str | None = None,
    download: Download = None,
) -> dict[str, Any]:
    """The ``"extend"`` job: video ``index`` (0..3) of the video task ``task_id``, extended.

    ``prompt`` and ``task_type`` are as in :class:`~midvary.ExtendRequest` (no
    ``task_type``: manual with a prompt, auto without); the other arguments, the result
    dict and ``arq.Retry`` as in :func:`vary`.
    """
    make = partial(
        ExtendRequest, task_id, index, prompt=prompt, task_type=task_type, water_mark=water_mark
    )
    return await _job(ctx, key, download, make)


async def _job(
    ctx: dict[str, Any], key: str, download: Download, request: Callable[..., SubmitRequest]
) -> dict[str, Any]:
    """One job of any kind: :func:`run_job` on ``request(key=key)``.

    Transient trouble becomes arq's ``Retry`` with a growing delay.
    """
    worker = _worker(ctx)
    try:
        return await run_job(
            worker.session,
            request,
            key=key,
            download=download_dir(worker.config, download),
            gate=worker.gate,
        )
    except RetryLater as later:
        defer = retry_delay(int(ctx.get("job_try") or 1))
        logger.warning("job %s: %s; arq runs it again in %gs", key, later.error, defer)
        raise Retry(defer=defer) from later.error


_WORKER_ARGS: Final = frozenset(inspect.signature(Worker).parameters)


class WorkerSettings:
    """arq's settings for midvary workers: ``arq midvary.arq.WorkerSettings``.

    Subclass it to change arq settings (``job_timeout``, ``max_tries``, ``functions``,
    ...): every setting a subclass does not define is copied into it, because arq reads
    only the settings class's own ``__dict__``.
    """

    functions: ClassVar[list[Any]] = [
        func(generate, name="generate"),
        func(vary, name="vary"),
        func(upscale, name="upscale"),
        func(extend, name="extend"),
    ]
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
