"""Result downloads: stream each image of a record to ``<directory>/<task_id>_<n>.<ext>``.

Each file is written to a temporary file in the same directory, flushed to disk and renamed
into place, so a file with its final name is always complete: a later download of the same
record skips it. Transient failures (network, 429, 5xx) are retried by the one retry module;
the API key is never sent to the result host (see :func:`midvary._transport.fetch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Final

import aiohttp
import yarl

from . import _validate as check
from ._config import RetryPolicy
from ._errors import APIError, DownloadError
from ._models import TaskRecord
from ._retry import read_retrying
from ._transport import fetch, public_url

logger = logging.getLogger(__name__)

DEFAULT_EXTENSION: Final = ".png"
#: The largest result file a download accepts by default, in bytes: far above any image or
#: video Midjourney makes, far below what fills a disk (a hostile 2 GiB ".png", say).
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 256 * 1024 * 1024
#: The statuses of a result URL that expired (the docs give from a day to 15 days) or that
#: the result host refused to this client: the API's ``download-url`` endpoint then gives a
#: temporary URL of the same file, fetched once.
REFRESHABLE: Final = frozenset((401, 403, 404, 410))
#: ``fresh_url(url)``: a temporary URL of the result file ``url`` (valid 20 minutes).
FreshURL = Callable[[str], Awaitable[str]]
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# Characters of a task id kept in its file name: with "~", the hash, the index, the
# extension and the temporary file's ".<name>.<12 hex>.part", far below the usual 255-byte
# limit of a file name.
_MAX_STEM: Final = 100
# Hex characters of the task id's SHA-256 in a changed name (80 bits: no collision by
# chance, and a crafted one needs a second preimage).
_HASH_CHARS: Final = 20


def file_name(task_id: str, index: int, url: str) -> str:
    """``<task_id>_<index>.<ext>``: the extension from the URL's path, ``.png`` if none.

    A task id made only of ``A-Z a-z 0-9 . _ -`` (not starting with a dot) and at most
    :data:`_MAX_STEM` characters long is used as is, so normal names stay readable. Any
    other is changed: unsafe characters become ``_``, it is cut to :data:`_MAX_STEM`
    characters, and ``~`` and a hash of the whole task id are appended. ``~`` never occurs
    in an unchanged name, and the hash tells changed ones apart, so two task ids never share
    a file (as ``x/y`` and ``x_y`` would), and no name is too long for the file system.
    """
    try:
        suffix = PurePosixPath(yarl.URL(url).path).suffix
    except (TypeError, ValueError):
        suffix = ""
    extension = suffix.lower() if _EXTENSION.fullmatch(suffix) else DEFAULT_EXTENSION
    stem = _UNSAFE.sub("_", task_id).lstrip(".")
    if stem != task_id or len(stem) > _MAX_STEM:
        digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()
        stem = f"{stem[:_MAX_STEM]}~{digest[:_HASH_CHARS]}"
    return f"{stem}_{index}{extension}"


async def download_record(
    http: aiohttp.ClientSession,
    record: TaskRecord,
    directory: Path,
    *,
    timeout: aiohttp.ClientTimeout,
    retry: RetryPolicy,
    concurrency: int,
    max_bytes: int | None,
    fresh_url: FreshURL | None = None,
) -> tuple[Path, ...]:
    """Download every image of ``record`` into ``directory``; return their paths in order.

    ``max_bytes`` bounds each file (``None``: no bound). A URL that is not http(s) (a
    ``file:``, ``ftp:`` or ``javascript:`` one from a hostile answer) is refused at once,
    before anything is requested or written, and not retried. A URL answered with a
    status of :data:`REFRESHABLE` is fetched once more through ``fresh_url(url)``
    (``None``: it is not, the :class:`DownloadError` is raised).
    """
    if not record.image_urls:
        return ()
    for url in record.image_urls:
        _check_scheme(url)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int, url: str) -> Path:
        target = directory / file_name(record.task_id, index, url)
        if await asyncio.to_thread(target.is_file):
            logger.debug("%s is already complete; not downloading it again", target)
            return target
        async with limit:
            try:
                await read_retrying(retry, what=f"download of {public_url(url)}")(
                    _download_file, http, url, target, timeout, max_bytes
                )
            except DownloadError as refused:
                if fresh_url is None or refused.http_status not in REFRESHABLE:
                    raise
                await _download_fresh(
                    http, url, target, timeout, retry, max_bytes, fresh_url, refused
                )
        return target

    # Every image gets its chance even when another one fails; the first error is raised.
    results = await asyncio.gather(
        *(one(n, url) for n, url in enumerate(record.image_urls)), return_exceptions=True
    )
    paths: list[Path] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        paths.append(result)
    return tuple(paths)


def _check_scheme(url: str) -> None:
    """Refuse a result URL that is not an absolute http(s) URL with a host."""
    try:
        check.http_url(url, name="a result URL")
    except (TypeError, ValueError):
        shown = url if len(url) <= 80 else url[:80] + "..."
        raise DownloadError(
            shown, None, reason="a result URL must be an absolute http:// or https:// URL"
        ) from None


async def _download_fresh(  # noqa: PLR0917 - one call site, the caller's state
    http: aiohttp.ClientSession,
    url: str,
    target: Path,
    timeout: aiohttp.ClientTimeout,
    retry: RetryPolicy,
    max_bytes: int | None,
    fresh_url: FreshURL,
    refused: DownloadError,
) -> None:
    """Ask the API for a temporary URL of ``url`` and fetch that once (retrying transients).

    An API refusal to give one (a URL it does not know: 422) raises ``refused``, the
    result host's answer, with the API's error as its cause.
    """
    shown = public_url(url)
    logger.info("%s answered HTTP %s: asking for a fresh link", shown, refused.http_status)
    try:
        fresh: str = await read_retrying(retry, what=f"fresh link for {shown}")(fresh_url, url)
    except APIError as exc:
        raise refused from exc
    await read_retrying(retry, what=f"download of {shown} through a fresh link")(
        _download_file, http, fresh, target, timeout, max_bytes
    )


async def _download_file(
    http: aiohttp.ClientSession,
    url: str,
    target: Path,
    timeout: aiohttp.ClientTimeout,
    max_bytes: int | None,
) -> None:
    """One attempt: stream ``url`` to a temporary file, flush it to disk, rename it.

    Every file operation runs in a worker thread: the event loop never waits for the disk.
    """
    fd, temporary = await asyncio.to_thread(_create_temporary, target)
    renamed = False
    try:
        file = await asyncio.to_thread(os.fdopen, fd, "wb")
        try:

            async def write(chunk: bytes) -> None:
                await asyncio.to_thread(file.write, chunk)

            size = await fetch(http, url, write, timeout=timeout, max_bytes=max_bytes)
            await asyncio.to_thread(_flush, file)
        finally:
            await asyncio.to_thread(file.close)
        await asyncio.to_thread(os.replace, temporary, target)
        renamed = True
        logger.info("downloaded %s (%d bytes) to %s", public_url(url), size, target)
    finally:
        if not renamed:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, temporary)


def _flush(file: BinaryIO) -> None:
    """Write ``file``'s buffer and have the disk keep it (before the rename names it)."""
    file.flush()
    os.fsync(file.fileno())


# O_EXCL: never reuse a file that exists; O_NOFOLLOW: never write through a planted symlink.
_CREATE_FLAGS: Final = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _create_temporary(target: Path) -> tuple[int, str]:
    """Create ``.<name>.<random>.part`` beside ``target``; return its descriptor and path.

    Unlike :func:`tempfile.mkstemp` (always ``0o600``), the file is created with mode
    ``0o666`` so the process's umask (and a directory's default ACL) applies, as for any
    normally written file: the image ends up ``-rw-r--r--`` under the usual umask 022.
    """
    for _ in range(100):
        path = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
        try:
            return os.open(path, _CREATE_FLAGS, 0o666), str(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {target}")
