"""The standalone callback server's defences against the open internet.

:meth:`CallbackReceiver.start` serves through :class:`GuardedSite`, an aiohttp site whose
connections a :class:`Doorman` watches:

- a connection must send a request head within ``read_timeout`` seconds of connecting (or of
  its previous answer): an idle or trickling client is closed, so slow clients cannot hold
  sockets for ever (the receiver's handler bounds the body read with the same timeout);
- at most ``limit`` connections are open at once, never more than a quarter of the
  process's open-file limit (asyncio accepts up to ``backlog`` sockets in a row before any
  of them reaches the doorman, so the backlog is kept to an eighth of it: the accepted
  sockets never exhaust the file limit, whose ``accept()`` errors asyncio would log with a
  traceback each time): when a new one comes at the limit, the oldest connection that has no
  request in progress is closed to make room (a flood of slow clients then costs the
  flooder its own connections, and a real delivery, whose head arrives at once, still gets
  in); with every connection busy, the new one is closed;
- each of those conditions is logged once when it starts and then at most once a minute
  with a count, never once per connection (a flood must not become a flood of log lines).

A public receiver still belongs behind a reverse proxy (TLS, per-client limits); these
bounds keep one process answering when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final, cast

from aiohttp import web

logger = logging.getLogger("midvary._callbacks")

# Seconds between two reports of the same condition.
_REPORT_EVERY: Final = 60.0
# aiohttp's and asyncio's default backlog.
_BACKLOG: Final = 128


def open_file_limit() -> int | None:
    """The process's soft limit on open files, or ``None`` where it is unknown or unlimited."""
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


class _Report:
    """One log line per condition: when it first happens, then a count at most once a minute."""

    __slots__ = ("_count", "_message", "_next")

    def __init__(self, message: str) -> None:
        self._message = message
        self._count = 0
        self._next = 0.0

    def add(self) -> None:
        """The condition happened once more."""
        self._count += 1
        now = time.monotonic()
        if now >= self._next:
            if self._next == 0.0:
                logger.warning("%s", self._message)
            else:
                logger.warning("%s (%d time(s) since the last report)", self._message, self._count)
            self._count = 0
            self._next = now + _REPORT_EVERY


class Doorman:
    """Watches a server's connections: a read deadline for each, a cap on how many.

    Args:
        limit: The most connections open at once (lowered to a quarter of the open-file
            limit).
        read_timeout: Seconds a connection may take to send a request head.

    """

    __slots__ = ("_busy", "_full", "_idle", "_slow", "backlog", "limit", "read_timeout")

    def __init__(self, *, limit: int, read_timeout: float) -> None:
        files = open_file_limit()
        self.limit = limit if files is None else max(1, min(limit, files // 4))
        #: The listening socket's backlog, also how many sockets asyncio accepts in a row.
        self.backlog = _BACKLOG if files is None else max(1, min(_BACKLOG, files // 8))
        self.read_timeout = read_timeout
        # Connections with no request in progress, oldest first (dicts keep insertion
        # order), each with the timer that closes it when its deadline passes.
        self._idle: dict[asyncio.Transport, asyncio.TimerHandle] = {}
        self._busy: set[asyncio.Transport] = set()
        self._full = _Report(
            f"callback receiver at its limit of {self.limit} connections: closing the "
            "oldest idle ones to make room (slow or idle clients; put a reverse proxy in front)"
        )
        self._slow = _Report(
            f"callback receiver closed connections that sent no request within "
            f"{read_timeout:g} s (slow or idle clients)"
        )

    @property
    def open(self) -> int:
        """How many connections are open."""
        return len(self._idle) + len(self._busy)

    def opened(self, transport: asyncio.Transport) -> None:
        """A connection was accepted: make room for it, then start its read deadline."""
        if self.open >= self.limit:
            self._full.add()
            if not self._idle:
                transport.abort()  # every place holds a request in progress
                return
            oldest = next(iter(self._idle))
            self._drop(oldest)
            oldest.abort()
        self._arm(transport)

    def busy(self, transport: asyncio.Transport | None) -> None:
        """A request's head arrived on ``transport``: its read deadline is off."""
        if transport is None:
            return
        timer = self._idle.pop(transport, None)
        if timer is None:
            return  # closed meanwhile (or not one of this server's connections)
        timer.cancel()
        self._busy.add(transport)

    def idle(self, transport: asyncio.Transport | None) -> None:
        """The request on ``transport`` was answered: the next one has a deadline again."""
        if transport is None or transport not in self._busy:
            return
        self._busy.discard(transport)
        if not transport.is_closing():
            self._arm(transport)

    def closed(self, transport: asyncio.Transport) -> None:
        """A connection ended."""
        self._drop(transport)

    def close_all(self) -> None:
        """Cancel every deadline (the server stops; aiohttp closes the connections)."""
        for timer in self._idle.values():
            timer.cancel()
        self._idle.clear()
        self._busy.clear()

    def _arm(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        self._idle[transport] = loop.call_later(self.read_timeout, self._expire, transport)

    def _expire(self, transport: asyncio.Transport) -> None:
        if self._idle.pop(transport, None) is not None:
            self._slow.add()
            transport.abort()

    def _drop(self, transport: asyncio.Transport) -> None:
        timer = self._idle.pop(transport, None)
        if timer is not None:
            timer.cancel()
        self._busy.discard(transport)


class _Watched(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the doorman told when it opens and ends."""

    __slots__ = ("_doorman", "_inner", "_transport")

    def __init__(self, inner: asyncio.Protocol, doorman: Doorman) -> None:
        self._inner = inner
        self._doorman = doorman
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a TCP server's
        self._transport = transport
        self._inner.connection_made(transport)
        self._doorman.opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._doorman.closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections ``doorman`` watches (see the module's docstring)."""

    __slots__ = ("_doorman", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, doorman: Doorman) -> None:
        super().__init__(runner, backlog=doorman.backlog)
        self._host = host
        self._port = port
        self._doorman = doorman

    @property
    def name(self) -> str:
        """The site's address, for aiohttp's messages."""
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen on the site's address."""
        await super().start()
        server = self._runner.server
        assert server is not None  # noqa: S101 - BaseSite checks it was set up
        doorman = self._doorman
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Watched(server(), doorman), self._host, self._port, backlog=self._backlog
        )
