"""SessionCore: the state a session shares with its handles, fan-outs and submitter.

:class:`~midvary.Session` is the public façade; the other modules are given this object
instead, so that none of them reaches into the session's privates.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from . import _telemetry as telemetry
from ._config import USE_DEFAULT, PollPolicy, RetryPolicy, UseDefault
from ._converter import (
    redact_record,
    structure_credits,
    structure_download_url,
    structure_record,
)
from ._download import download_record
from ._errors import EventLoopError, NotFoundError, ProtocolError, SessionClosedError
from ._outage import OutageWatch
from ._polling import DurationStats, PollHealth
from ._transport import Transport

if TYPE_CHECKING:
    import yarl

    from ._fanout import FanOut
    from ._models import TaskRecord

RECORD_PATH: Final = "/api/v1/mj/record-info"
DOWNLOAD_URL_PATH: Final = "/api/v1/common/download-url"
CREDIT_PATH: Final = "/api/v1/chat/credit"


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class SessionCore:
    """What handles, fan-outs and the submitter need of their session.

    Attributes:
        base_url: The API's base URL, without a trailing slash.
        poll: The default :class:`PollPolicy` of waits.
        retry: The :class:`RetryPolicy` of submissions, polls' retries and downloads.
        index_base: Added to a vary's 0-based image index on the wire (0 or 1).
        rng: The source of jitter.
        durations: What the session learned about task durations.
        health: Whether the session's polls keep failing (warned about once).
        waiting: The timeouts of the waits in progress (closing expires them at once).
        fanouts: The fan-outs running (closing ends them first).
        outage: The outage (455, no connection) the session's requests are waiting out.

    """

    def __init__(
        self,
        *,
        base_url: yarl.URL,
        api_key: str,
        timeout: aiohttp.ClientTimeout,
        http: aiohttp.ClientSession | None,
        poll: PollPolicy,
        retry: RetryPolicy,
        index_base: int,
        seed: int | None,
        max_download_bytes: int | None,
    ) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self.timeout = timeout
        self._http = http
        self._owns_http = http is None
        self._transport: Transport | None = None
        self._state = _State.UNOPENED
        # The event loop the session first ran in: its connections belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.poll = poll
        self.retry = retry
        self.index_base = index_base
        self.max_download_bytes = max_download_bytes
        self.rng = random.Random(seed)
        self.durations = DurationStats()
        self.health = PollHealth()
        self.waiting: set[asyncio.Timeout] = set()
        self.fanouts: set[FanOut[Any]] = set()
        self.outage = OutageWatch(lambda: self.retry)

    def __repr__(self) -> str:
        return f"<SessionCore base_url={str(self.base_url)!r} state={self.state}>"

    @property
    def state(self) -> str:
        """``"unopened"``, ``"open"`` or ``"closed"``."""
        return self._state.value

    @property
    def closed(self) -> bool:
        """Whether the session closed; it cannot be reopened."""
        return self._state is _State.CLOSED

    def check_open(self) -> None:
        """Raise :class:`SessionClosedError` if the session closed."""
        if self._state is _State.CLOSED:
            raise SessionClosedError(
                "this Session is closed and cannot be reopened; create a new one"
            )

    def check_loop(self) -> None:
        """Raise :class:`EventLoopError` if the running loop is not the session's first one."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise EventLoopError(
                "this Session was first used in another event loop (an earlier "
                "asyncio.run()?); a Session belongs to one event loop: create, use and close "
                "it inside one asyncio.run(), e.g. with `async with midvary.Session() as "
                "session:`, and make a new one for another loop"
            )

    def open(self) -> Transport:
        """The transport, opened on first use (and the HTTP session, unless one was given).

        Raises:
            SessionClosedError: The session is closed.
            EventLoopError: Called from another event loop than the session's first one.

        """
        self.check_loop()
        self.check_open()
        if self._transport is None:
            if self._http is None:
                self._http = aiohttp.ClientSession()
            self._transport = Transport(
                self._http, base_url=self.base_url, api_key=self._api_key, timeout=self.timeout
            )
            self._state = _State.OPEN
        return self._transport

    async def fetch_record(
        self, task_id: str, *, polled: Callable[[], None] = telemetry.polled
    ) -> TaskRecord:
        """One ``record-info`` GET: the task's record, in whatever state it is.

        ``polled()`` is told first (a wait's span counts its own polls).

        Raises:
            NotFoundError: No such task is visible (yet); the message names the task.
            APIError, TransportError, ProtocolError: The request failed.

        """
        transport = self.open()
        polled()
        try:
            data = await transport.call("GET", RECORD_PATH, params={"taskId": task_id})
        except NotFoundError as exc:
            raise NotFoundError(
                f"task {task_id} not found ({exc.message})",
                code=exc.code,
                http_status=exc.http_status,
            ) from exc
        if data is None:
            raise NotFoundError(f"task {task_id} not found (empty record)", code=404)
        record = redact_record(structure_record(data), self._api_key)
        if record.task_id != task_id:
            raise ProtocolError(
                f"asked for task {task_id}, the provider answered with {record.task_id}"
            )
        return record

    async def fetch_credits(self) -> int:
        """One ``chat/credit`` GET: the account's remaining credits.

        Raises:
            AuthenticationError: The key is wrong (answered as code 401 inside HTTP 200).
            APIError, TransportError, ProtocolError: The request failed.

        """
        return structure_credits(await self.open().call("GET", CREDIT_PATH))

    async def download(
        self,
        record: TaskRecord,
        directory: Path,
        *,
        concurrency: int,
        max_bytes: int | UseDefault | None = USE_DEFAULT,
    ) -> tuple[Path, ...]:
        """Download ``record``'s images (arguments already checked); see ``Session.download``."""
        self.open()
        assert self._http is not None  # noqa: S101 - open() made it
        return await download_record(
            self._http,
            record,
            directory,
            timeout=self.timeout,
            retry=self.retry,
            concurrency=concurrency,
            max_bytes=self.max_download_bytes if max_bytes is USE_DEFAULT else max_bytes,
            fresh_url=self.fresh_download_url,
        )

    async def fresh_download_url(self, url: str) -> str:
        """One ``common/download-url`` POST: a temporary URL of result file ``url``.

        The API's answer is valid 20 minutes. The request goes to the API host (with the
        key); the URL it returns is fetched without it.

        Raises:
            APIError: The API refused (422: ``url`` is not one of its result files).
            TransportError, ProtocolError: The request failed, or its answer held no URL.

        """
        data = await self.open().call("POST", DOWNLOAD_URL_PATH, json_body={"url": url})
        return structure_download_url(data)

    async def aclose(self, closing: Callable[[], None]) -> None:
        """Close: end the fan-outs, call ``closing()``, end the waits, close own HTTP session.

        ``closing`` runs once the state is closed and before the waits end (the submitter
        closes its limiter and forgets its callback tokens there). A wait ends through its
        own ``asyncio.timeout``, expired now: it raises :class:`SessionClosedError`, and a
        poll request in flight is cut. Idempotent.
        """
        if self._state is _State.CLOSED:
            return
        self.check_loop()
        for fanout in tuple(self.fanouts):
            await fanout.aclose()
        self._state = _State.CLOSED
        closing()
        now = asyncio.get_running_loop().time()
        for scope in self.waiting:
            if not scope.expired():  # one that expired on its own reports its deadline
                scope.reschedule(now)
        if self._owns_http and self._http is not None:
            await self._http.close()
