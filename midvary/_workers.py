"""What a midvary job is on any job queue (arq, Celery): its configuration, run and result.

A queue delivers a job at least once; the job submits with its ``key`` through a session on
a shared store, so however often it runs it is billed at most once (a re-run re-attaches to
the task, or reports the key uncertain). :func:`run_job` is that job, the same for every
queue: it returns the result dict, or raises :class:`RetryLater` for transient trouble,
which each queue turns into its own retry (arq's ``Retry``, Celery's ``task.retry``).
:class:`WorkerConfig` is the ``MIDVARY_*`` environment of a worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from ._errors import (
    ACCOUNT_STOPPING,
    APIError,
    AuthenticationError,
    DownloadError,
    InsufficientCreditsError,
    KeyConflictError,
    MidvaryError,
    SubmitUncertainError,
    TaskFailedError,
)
from ._models import SubmitRequest
from ._ratelimit import DEFAULT_SUBMIT_RATE
from ._retry import is_transient
from ._session import Session
from ._store import RedisStore
from ._validate import submit_rate as check_submit_rate

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
DEFAULT_LISTEN: Final = "0.0.0.0:8080"  # the receiver, behind a load balancer
#: Seconds a queue defers a job after transient trouble: the first, then doubling per try
#: up to the last.
RETRY_DEFER: Final = (5.0, 300.0)

# What completes a job as "failed" when it is not transient: a refused or invalid request,
# a failed task, a result the host will not serve. Anything else is a bug, raised to the queue.
_FINAL: Final = (APIError, KeyConflictError, TaskFailedError, DownloadError, TypeError, ValueError)

# Seconds a job whose answer was lost waits for the provider's callback (with a receiver):
# a task's callback comes when it ends, and a failed delivery is retried after 1 and 5
# minutes; within the job's timeout with the task's wait and downloads after it.
RECOVER_WAIT: Final = 420.0

State = Literal["succeeded", "failed", "uncertain"]
#: A job's ``download`` argument: a directory, ``False`` for none, ``None`` for the worker's.
Download = str | Literal[False] | None


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
    callback_listen: tuple[str, int] = _listen(DEFAULT_LISTEN)
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
            callback_listen=_listen(get("MIDVARY_CALLBACK_LISTEN") or DEFAULT_LISTEN),
            claim_lease=_seconds("MIDVARY_CLAIM_LEASE", lease) if lease is not None else None,
        )

    def store(self) -> RedisStore:
        """A new (unopened) :class:`RedisStore` on ``store_url`` with ``claim_lease``."""
        if self.claim_lease is None:  # the store's own default, not a copy of it here
            return RedisStore(self.store_url)
        return RedisStore(self.store_url, claim_lease=self.claim_lease)


class AccountGate:
    """Holds a worker's submissions while the account refuses them (401, 402, 505).

    One per worker process (its session), shared by its jobs; used on the session's loop.

    The first refusal closes the gate (one WARNING line); one task checks the credits
    (``session.credits()``, one cheap GET) at a growing interval, from the retry policy's
    ``outage_probe`` doubling up to ``outage_probe_max``, and opens the gate once the
    account answers with credits left (one WARNING line). Jobs wait at the gate instead of
    failing: nothing was billed for them.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._open = asyncio.Event()
        self._open.set()
        self._checker: asyncio.Task[None] | None = None

    async def wait_open(self) -> None:
        """Return once submissions may be sent."""
        await self._open.wait()

    def refused(self, error: APIError) -> None:
        """A submission was refused for the account: close the gate and start checking."""
        if not self._open.is_set():
            return
        self._open.clear()
        logger.warning(
            "the account refused a submission (%s: %s): this worker's jobs wait, checking "
            "the credits at a growing interval",
            type(error).__name__,
            error,
        )
        self._checker = asyncio.get_running_loop().create_task(self._check(error))

    async def _check(self, error: APIError) -> None:
        checks = 0
        while True:
            checks += 1
            await asyncio.sleep(self._session.retry.probe_delay(checks))
            try:
                left = await self._session.credits()
            except MidvaryError as exc:  # still refused, or not answering: look again later
                logger.debug("credits check: %s: %s", type(exc).__name__, exc)
            else:
                if left > 0 or not isinstance(
                    error, InsufficientCreditsError | AuthenticationError
                ):
                    break
        logger.warning("the account is usable again (%d credits): jobs resume", left)
        self._open.set()

    async def close(self) -> None:
        """Stop checking (the worker shuts down)."""
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker


def retry_delay(tries: int) -> float:
    """Seconds to defer a job's run number ``tries + 1`` (``tries`` >= 1 runs so far)."""
    first, last = RETRY_DEFER
    return min(last, first * 2.0 ** (max(tries, 1) - 1))


class RetryLater(Exception):  # noqa: N818 - an instruction to the queue, not an error of ours
    """Transient trouble: the queue should run the job again later (it re-attaches by key).

    Attributes:
        error: What went wrong (a midvary error).

    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def job_result(
    state: State,
    *,
    key: str,
    task_id: str | None = None,
    image_urls: tuple[str, ...] = (),
    paths: tuple[Path, ...] = (),
    error: BaseException | None = None,
) -> dict[str, Any]:
    """A job's JSON-able result dict (see :func:`run_job`)."""
    return {
        "state": state,
        "key": key,
        "task_id": task_id,
        "image_urls": list(image_urls),
        "paths": [str(path) for path in paths],
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }


def _settle(key: str, error: Exception, *, task_id: str | None = None) -> dict[str, Any]:
    """The failed job's result; :class:`RetryLater` (raised) if ``error`` is transient."""
    if is_transient(error):
        raise RetryLater(error) from error
    if isinstance(error, _FINAL):
        return job_result("failed", key=key, task_id=task_id, error=error)
    raise error


def download_dir(config: WorkerConfig, download: Download) -> Path | None:
    """Where a job's images go: ``download``, or the worker's directory when it is ``None``.

    ``False`` (or no ``MIDVARY_DOWNLOAD_DIR`` for ``None``) means no download.
    """
    target = config.download if download is None else download
    return None if target is None or target is False else Path(target)


async def run_job(
    session: Session,
    request: Callable[..., SubmitRequest],
    *,
    key: str,
    download: Path | None,
    gate: AccountGate,
) -> dict[str, Any]:
    """Submit ``request(key=key)``, await the task, optionally download.

    A submission refused for the account (401, 402, 505) waits at ``gate``, then is sent
    again (nothing was billed for it); a lost answer is first recovered through the
    session's callback receiver, if it has one (:data:`RECOVER_WAIT`).

    Returns:
        The job's result dict (:func:`job_result`, as :func:`midvary.arq.vary` documents
        it): a failed task, a refused or invalid request (``request`` raises ``TypeError``
        or ``ValueError``: nothing sent) and an uncertain submission complete the job.

    Raises:
        RetryLater: Transient trouble (``_retry.is_transient``): run the job again later,
            which re-attaches by key.
        Exception: Anything else that is neither transient nor a failure of the job (a bug).

    """
    while True:
        await gate.wait_open()
        try:
            try:
                handle = await session.submit(request(key=key))
            except SubmitUncertainError as lost:  # a receiver's callback may still name it
                handle = await session.recover(lost, timeout=RECOVER_WAIT)
        except SubmitUncertainError as exc:
            return job_result("uncertain", key=key, error=exc)
        except ACCOUNT_STOPPING as exc:  # nothing billed: wait for the account, send again
            gate.refused(exc)
            continue
        except Exception as exc:
            return _settle(key, exc)
        break
    try:
        record = await handle
        paths: tuple[Path, ...] = ()
        if download is not None:
            paths = await session.download(record, download)
    except Exception as exc:
        return _settle(key, exc, task_id=handle.task_id)
    return job_result(
        "succeeded", key=key, task_id=record.task_id, image_urls=record.image_urls, paths=paths
    )
