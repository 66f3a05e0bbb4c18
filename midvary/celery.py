"""Run midvary jobs on Celery workers (``pip install 'midvary[celery]'``): one session per process.

Register midvary's tasks on your Celery app (Redis as the broker)::

    # myproject/jobs.py
    from celery import Celery
    import midvary.celery

    app = Celery("jobs", broker="redis://host:6379/0", backend="redis://host:6379/1")
    tasks = midvary.celery.register(app)

start workers on as many machines as you like::

    MIDVARY_API_KEY=... MIDVARY_STORE_URL=redis://host:6379/2 celery -A myproject.jobs worker

and send jobs from anywhere (a Django view, a script)::

    result = tasks.vary.delay("parent-id", 0, key="order-42/0")
    result.get()  # {"state": "succeeded", "task_id": ..., "image_urls": [...], ...}

Each worker process opens one :class:`~midvary.SyncSession` when the pool starts it
(Celery's ``worker_process_init``) and closes it when it ends (``worker_process_shutdown``,
or ``worker_shutdown`` for the solo and threads pools, whose tasks share the main process's
session); its :class:`~midvary.RedisStore` makes a job's ``key`` submitted at most once
however often Celery delivers the job, and ``submit_rate`` one limit for every worker.

Why that matters: the tasks are ``acks_late`` (a message is acknowledged when its job
ends), so the jobs of a worker killed mid-run are delivered again, to another worker or to
the same one restarted: by the Redis transport once its ``visibility_timeout`` has passed
(``broker_transport_options``; Celery's default is one hour: set it above your longest job,
a wait's 900 s plus downloads), and at once when only a pool process died
(``reject_on_worker_lost``). The second run re-attaches to the task (or reports the key
``"uncertain"`` if the first run was killed between sending and reading the answer); it
never bills twice.

The tasks (``<prefix>.vary``, ``.generate``, ``.upscale``, ``.extend``) return the
result dict of the arq jobs (:mod:`midvary.arq`): ``state`` (``"succeeded"``, ``"failed"``
or ``"uncertain"``), ``key``, ``task_id``, ``image_urls``, ``paths``, ``error``. Transient
trouble (the store or the network down, maintenance, rate limiting past the retry budget, a
wait that timed out) is retried through Celery's own ``retry``, with a countdown of 5 s
doubling per try up to 300 s, at most ``max_retries`` times (then the task fails with the
midvary error). A submission refused for the account (401, 402, 505) waits instead, as in
the arq workers: the process's jobs hold until a credits check, at a growing interval,
finds the account usable, then send it (nothing was billed for it).

The environment is that of the arq workers (``WorkerConfig.from_env``), read when a worker
process opens its session: ``MIDVARY_API_KEY``, ``MIDVARY_BASE_URL``,
``MIDVARY_STORE_URL`` (else ``MIDVARY_REDIS_URL``, else ``redis://localhost:6379/0``),
``MIDVARY_SUBMIT_RATE``, ``MIDVARY_DOWNLOAD_DIR``, ``MIDVARY_CLAIM_LEASE``. Celery workers
poll for results: the callback variables are not used (a pool's processes cannot share one
listening port).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import attrs
from celery import Celery, Task, signals

from ._models import (
    ExtendRequest,
    GenerateRequest,
    SubmitRequest,
    UpscaleRequest,
    VaryRequest,
)
from ._session import Session
from ._sync import SyncSession
from ._workers import (
    AccountGate,
    Download,
    RetryLater,
    WorkerConfig,
    download_dir,
    retry_delay,
    run_job,
)

__all__ = ["DEFAULT_MAX_RETRIES", "MidvaryTasks", "close_session", "register", "session"]

logger = logging.getLogger(__name__)

#: Times a job is retried after transient trouble (5 s doubling up to 300 s: about 35 min).
DEFAULT_MAX_RETRIES: Final = 10


@attrs.frozen
class _Worker:
    """This process's session (and the pid it was opened in: a forked child opens its own)."""

    pid: int
    config: WorkerConfig
    session: SyncSession
    gate: AccountGate


_lock = threading.Lock()
_worker: _Worker | None = None


def session() -> SyncSession:
    """This worker process's :class:`~midvary.SyncSession`, opened on first use.

    Opened by ``worker_process_init`` in a prefork pool's processes; otherwise (the solo or
    threads pool, a task run eagerly) on the first call, from the ``MIDVARY_*``
    environment. Use it in tasks of your own.

    Raises:
        ValueError: A ``MIDVARY_*`` variable is invalid, or there is no API key.
        StoreError: The store's Redis cannot be reached.

    """
    return _open().session


def _open() -> _Worker:
    global _worker  # noqa: PLW0603 - one session per process is the point
    with _lock:
        worker = _worker
        if worker is not None and worker.pid == os.getpid():
            return worker
        # None yet, or inherited through fork(): that session's loop thread is not in this
        # process, so it is left alone and this process opens its own.
        config = WorkerConfig.from_env()
        store = config.store()
        session = SyncSession(store=store, submit_rate=config.submit_rate)
        worker = _Worker(os.getpid(), config, session, session.call(_gate))
        _worker = worker
        logger.info("midvary worker process %d ready on %r", worker.pid, store)
        return worker


async def _gate(session: Session) -> AccountGate:
    """The process's account gate: its jobs wait there while the account refuses them."""
    return AccountGate(session)


def close_session() -> None:
    """Close this process's session, if it opened one (idempotent).

    Connected to ``worker_process_shutdown`` and ``worker_shutdown`` by :func:`register`.
    """
    global _worker
    with _lock:
        worker, _worker = _worker, None
    if worker is not None and worker.pid == os.getpid():
        try:
            worker.session.call(lambda _: worker.gate.close())
        finally:
            worker.session.close()


def _on_process_init(**_: Any) -> None:
    try:
        _open()
    except Exception:
        # Celery would kill and respawn the process forever; the tasks raise the error.
        logger.exception("midvary: this worker process could not open its session")


def _on_shutdown(**_: Any) -> None:
    close_session()


def _job(
    task: Task, key: str, download: Download, request: Callable[..., SubmitRequest]
) -> dict[str, Any]:
    """One job of any kind: :func:`run_job` on ``request(key=key)``.

    Transient trouble becomes Celery's ``retry`` with a growing countdown.
    """
    worker = _open()
    try:
        return worker.session.call(
            run_job,
            request,
            key=key,
            download=download_dir(worker.config, download),
            gate=worker.gate,
        )
    except RetryLater as later:
        countdown = retry_delay(task.request.retries + 1)
        logger.warning("job %s: %s; Celery runs it again in %gs", key, later.error, countdown)
        raise task.retry(exc=later.error, countdown=countdown) from later.error


def _vary(
    task: Task,
    task_id: str,
    image_index: int,
    *,
    key: str,
    water_mark: str | None = None,
    download: Download = None,
) -> dict[str, Any]:
    """Vary image ``image_index`` (0..3) of task ``task_id``."""
    make = partial(VaryRequest, task_id=task_id, image_index=image_index, water_mark=water_mark)
    return _job(task, key, download, make)


def _generate(
    task: Task, prompt: str, *, key: str, download: Download = None, **options: Any
) -> dict[str, Any]:
    """Generate from ``prompt``; ``options`` are other :class:`GenerateRequest` fields."""
    return _job(task, key, download, partial(GenerateRequest, prompt=prompt, **options))


def _upscale(
    task: Task,
    task_id: str,
    image_index: int,
    *,
    key: str,
    water_mark: str | None = None,
    download: Download = None,
) -> dict[str, Any]:
    """Upscale image ``image_index`` (0..3) of task ``task_id``."""
    make = partial(UpscaleRequest, task_id=task_id, image_index=image_index, water_mark=water_mark)
    return _job(task, key, download, make)


def _extend(
    task: Task,
    task_id: str,
    index: int,
    *,
    key: str,
    prompt: str | None = None,
    task_type: str | None = None,
    water_mark: str | None = None,
    download: Download = None,
) -> dict[str, Any]:
    """Extend video ``index`` (0..3) of the video task ``task_id``."""
    make = partial(
        ExtendRequest, task_id, index, prompt=prompt, task_type=task_type, water_mark=water_mark
    )
    return _job(task, key, download, make)


@attrs.frozen
class MidvaryTasks:
    """The Celery tasks :func:`register` made (``tasks.vary.delay(...)``).

    Attributes:
        vary: ``vary(task_id, image_index, *, key, water_mark=None, download=None)``.
        generate: ``generate(prompt, *, key, download=None, **options)``, ``options`` those
            of :meth:`Session.generate` (``aspect_ratio``, ``speed``, ...).
        upscale: ``upscale(task_id, image_index, *, key, water_mark=None, download=None)``.
        extend: ``extend(task_id, index, *, key, prompt=None, task_type=None,
            water_mark=None, download=None)``: video ``index`` of a video task, extended.

    Each takes ``key``, the submission key (sent at most once per key however often Celery
    delivers the job; use it as the Celery ``task_id`` too), and ``download``: a directory
    for the images, ``False`` for none, ``None`` for the worker's ``MIDVARY_DOWNLOAD_DIR``.

    """

    vary: Task
    generate: Task
    upscale: Task
    extend: Task


def register(
    app: Celery, *, prefix: str = "midvary", max_retries: int = DEFAULT_MAX_RETRIES
) -> MidvaryTasks:
    """Add midvary's tasks to ``app`` and open/close a session in each worker process.

    Args:
        app: Your Celery app (a Redis broker; any result backend).
        prefix: The tasks' names are ``<prefix>.vary``, ``<prefix>.generate``,
            ``<prefix>.upscale`` and ``<prefix>.extend``.
        max_retries: Times a job is retried after transient trouble (>= 0).

    Returns:
        The tasks, to call ``.delay()`` / ``.apply_async()`` on.

    Raises:
        TypeError, ValueError: An argument is invalid.

    """
    if not isinstance(app, Celery):
        raise TypeError(f"app must be a celery.Celery, not {type(app).__name__}")
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
    options: dict[str, Any] = {
        "bind": True,
        # Acknowledged when the job ends: a worker killed mid-job has its jobs delivered
        # again, which the keys make harmless (never billed twice).
        "acks_late": True,
        "reject_on_worker_lost": True,
        "max_retries": max_retries,
    }
    # The same receivers for every app: Celery's signals are per process, and one session
    # per process serves every app registered in it.
    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid=__name__)
    signals.worker_process_shutdown.connect(_on_shutdown, weak=False, dispatch_uid=__name__)
    signals.worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid=__name__)
    return MidvaryTasks(
        vary=app.task(name=f"{prefix}.vary", **options)(_vary),
        generate=app.task(name=f"{prefix}.generate", **options)(_generate),
        upscale=app.task(name=f"{prefix}.upscale", **options)(_upscale),
        extend=app.task(name=f"{prefix}.extend", **options)(_extend),
    )
