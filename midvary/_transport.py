"""One HTTP exchange with the provider, and the one place aiohttp errors are translated.

:func:`translate` turns aiohttp and socket errors into :class:`~midvary.TransportError` for
both the API (:class:`Transport`, which alone holds the key) and result downloads
(:func:`fetch`, which sends only a User-Agent to the result host).

A response is a success only when the HTTP status is 2xx AND the envelope's ``code`` is 200.
Everything else becomes a typed midvary error: an :class:`~midvary.APIError` subclass from
the envelope code (or the HTTP status when the body carries none), a
:class:`~midvary.ProtocolError` for bodies that are not an envelope, or a
:class:`~midvary.TransportError` that says whether the request may have been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from . import _telemetry as telemetry
from ._converter import decode_json, envelope_code, envelope_message, redact
from ._errors import (
    ERROR_CLASSES,
    DownloadError,
    EndpointNotServedError,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
    TransportError,
    error_for,
)
from ._version import USER_AGENT

logger = logging.getLogger(__name__)

_SNIPPET = 120


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe_body(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return "an empty body"
    if text[:1] == "<":
        return "an HTML page"
    return f"a body that is not a JSON envelope: {text[:_SNIPPET]!r}"


def _unchanged(text: str) -> str:
    return text


def translate(
    exc: BaseException,
    what: str,
    timeout: aiohttp.ClientTimeout,
    redact: Callable[[str], str] = _unchanged,
) -> BaseException:
    """The error to raise for ``exc``, raised while sending ``what``.

    aiohttp and socket errors become :class:`TransportError`; anything else is returned
    unchanged. ``sent`` is ``False`` only when the connection could not be opened at all. ``what``
    names the request in messages; ``redact`` cleans an error's text of secrets. The caller
    raises the result ``from exc``: the API's transport and the result downloads share it.
    """
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return TransportError(
            f"{what}: could not connect ({type(exc).__name__}: {exc})", sent=False
        )
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError since 3.11
        return TransportError(f"{what}: no answer within {timeout.total} s", sent=True)
    if isinstance(exc, aiohttp.ClientError | OSError):  # OSError: a reset aiohttp did not wrap
        _hide_authorization(exc)
        return TransportError(
            f"{what}: connection failed after sending ({type(exc).__name__}: {redact(str(exc))})",
            sent=True,
        )
    return exc


#: The bare HTTP statuses of a host that does not serve a path (no route, or not for POST).
_NOT_SERVED = (404, 405)

#: The errors :func:`translate` turns into :class:`TransportError`.
_TRANSLATED = (aiohttp.ClientError, OSError)  # TimeoutError is an OSError


def _hide_authorization(exc: BaseException) -> None:
    """Mask the key in the request headers aiohttp keeps on its error (and shows in its repr).

    A ``ClientResponseError`` (an answer aiohttp could not parse, say) carries the request's
    headers; it stays chained as ``__cause__``, so it must not carry the key.
    """
    if (
        isinstance(exc, aiohttp.ClientResponseError)
        and "Authorization" in (info := exc.request_info).headers
    ):
        headers = CIMultiDict(info.headers)
        headers["Authorization"] = "***"
        exc.request_info = aiohttp.RequestInfo(
            info.url, info.method, CIMultiDictProxy(headers), info.real_url
        )
        exc.args = tuple(exc.request_info if arg is info else arg for arg in exc.args)


#: The most bytes of an API answer that are read: an envelope is a few KiB, so a larger
#: answer (endless, or a 200 MB one) is a :class:`ProtocolError`, read no further.
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024


async def read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes, else ``None`` (read no further)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def public_url(url: str | yarl.URL) -> str:
    """``url`` without its query string and fragment (a signed URL's signature stays out)."""
    return str(yarl.URL(url).with_query(None).with_fragment(None))


async def fetch(
    http: aiohttp.ClientSession,
    url: str,
    sink: Callable[[bytes], Awaitable[object]],
    *,
    timeout: aiohttp.ClientTimeout,
    max_bytes: int | None = None,
    chunk_size: int = 64 * 1024,
) -> int:
    """Stream a result file: GET ``url`` and await ``sink`` with each chunk of its body.

    Result URLs live on another host than the API, so this sends only the User-Agent: never
    the API key. Redirects are followed (there is no secret for them to carry). Errors that
    ``sink`` raises (a full disk, say) propagate unchanged. ``max_bytes`` bounds the file
    (``None``: no bound): a larger ``Content-Length`` is refused before a byte is read, and
    a body that grows past it is cut there.

    Returns:
        The number of bytes received.

    Raises:
        DownloadError: The host answered with an HTTP error status, or a file over
            ``max_bytes`` (not transient).
        TransportError: The network failed, or the body ended early.

    """
    what = f"GET {public_url(url)}"
    try:
        response = await http.get(
            url, headers={"User-Agent": USER_AGENT}, timeout=timeout, allow_redirects=True
        )
    except _TRANSLATED as exc:
        raise translate(exc, what, timeout) from exc
    try:
        if not 200 <= response.status < 300:
            raise DownloadError(
                public_url(url),
                response.status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        declared = response.content_length
        if max_bytes is not None and declared is not None and declared > max_bytes:
            raise _too_large(url, response.status, f"{declared} bytes", max_bytes)
        size = 0
        while True:
            try:
                chunk = await response.content.read(chunk_size)
            except _TRANSLATED as exc:
                raise translate(exc, what, timeout) from exc
            if not chunk:
                return size
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise _too_large(url, response.status, "a body longer than that", max_bytes)
            await sink(chunk)
    finally:
        response.release()


def _too_large(url: str, status: int, size: str, limit: int) -> DownloadError:
    return DownloadError(
        public_url(url),
        status,
        reason=f"{size}, over the {limit}-byte limit (Session(max_download_bytes=...))",
    )


class Transport:
    """Sends requests to the API's base URL with the key; never anywhere else."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: yarl.URL,
        api_key: str,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._http = http
        self._base_url = base_url
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        self._api_key = api_key
        self._timeout = timeout
        # The API has a handful of paths: each is joined to the base URL once.
        self._urls: dict[str, yarl.URL] = {}
        # Requests beyond the connector's limit would only queue inside aiohttp, each one
        # fully built: 10,000 handles polling at once would hold 10,000 of them. Waiting
        # here first keeps that burst small (and happens before anything is sent).
        limit = http.connector.limit if http.connector is not None else 0
        self._places = asyncio.Semaphore(limit) if limit else None

    def __repr__(self) -> str:
        return f"<Transport base_url={str(self._base_url)!r}>"

    def _redact(self, text: str) -> str:
        # A body may echo what we sent; the key must never reach a message or a log line.
        return redact(text, self._api_key)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return the envelope's ``data``.

        Raises:
            APIError: The provider answered with an error code.
            ProtocolError: The answer was not a valid envelope.
            TransportError: The network failed; ``sent`` says whether it may have arrived.

        """
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base_url / path.lstrip("/")
        what = f"{method} {path}"
        started = time.monotonic()
        try:
            async with (
                self._places or contextlib.nullcontext(),
                self._http.request(
                    method,
                    url,
                    json=json_body,
                    params=params,
                    headers=self._headers,
                    timeout=self._timeout,
                    # A redirect could carry the key to another host: never follow one.
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                headers = response.headers
                declared = response.content_length
                body = None
                if declared is None:
                    body = await read_at_most(response.content, MAX_ANSWER_BYTES)
                elif declared <= MAX_ANSWER_BYTES:
                    # aiohttp's parser stops at the declared length: the read is bounded.
                    body = await response.read()
                if body is None:
                    raise ProtocolError(
                        f"{what}: HTTP {status} with an answer over "
                        f"{MAX_ANSWER_BYTES} bytes (an envelope is a few KiB); not read further",
                        http_status=status,
                    )
                raw = body
        except _TRANSLATED as exc:
            raise translate(exc, what, self._timeout, self._redact) from exc
        logger.debug(
            "%s -> HTTP %d (%d bytes, %.3f s)", what, status, len(raw), time.monotonic() - started
        )
        try:
            return self._unwrap(raw, status, headers, method, path)
        except (RateLimitError, ServiceUnavailableError) as exc:
            telemetry.throttled(exc.code)
            raise

    def _unwrap(
        self, raw: bytes, status: int, headers: Mapping[str, str], method: str, path: str
    ) -> Any:
        what = f"{method} {path}"
        retry_after = parse_retry_after(headers.get("Retry-After"))
        envelope: Any = None
        if raw.strip():
            with contextlib.suppress(ProtocolError):  # not JSON: described below
                envelope = decode_json(raw, what)
        ok_status = 200 <= status < 300
        if not isinstance(envelope, dict) or "code" not in envelope:
            if status in _NOT_SERVED and method == "POST":
                # Every POST of the API is answered with an envelope, errors included; a
                # bare 404/405 comes from a server without that endpoint: nothing was made.
                raise EndpointNotServedError(path, str(self._base_url), http_status=status)
            if not ok_status and status in ERROR_CLASSES:
                # e.g. a bare 429 from the CDN: the status is the only signal there is.
                raise error_for(
                    status,
                    f"{what}: HTTP {status} with {self._redact(_describe_body(raw))}",
                    http_status=status,
                    retry_after=retry_after,
                )
            raise ProtocolError(
                f"{what}: HTTP {status} with {self._redact(_describe_body(raw))}",
                http_status=status,
            )
        code = envelope_code(envelope.get("code"))
        if code is None:
            raise ProtocolError(
                f"{what}: envelope code is not an integer: {envelope.get('code')!r:.40}",
                http_status=status,
            )
        if ok_status and code == 200:
            return envelope.get("data")
        if code == 200:
            # The envelope claims success but the HTTP status does not: trust the status.
            code = status
        msg = envelope_message(envelope)
        message = self._redact(msg) if msg is not None else f"{what} failed"
        raise error_for(code, message, http_status=status, retry_after=retry_after)
