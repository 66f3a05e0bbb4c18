"""The Redis store's script calls on one dedicated connection, pipelined.

Each call is one ``EVALSHA`` (one round trip for its caller), but the calls made in one
turn of the event loop go out in one write, and their answers are read back in order from
one buffer: redis-py's client would instead check a connection out of its pool, pack, send
and parse each command on its own (about four times the client CPU per call). The
connection is the client's pool's own kind, made from its settings (host, TLS, password,
database), owned by the pipe; its answers stay bytes, and instead of one timer per answer
the pump gives each batch one deadline, the pool's ``socket_timeout``, from its write to its
last answer. One *pump* task writes the queued calls and reads their answers, and
:meth:`ScriptPipe.close` cancels and awaits it. A call is packed by its caller, with
:func:`bulk` for each part, after the pipe's ``EVALSHA`` head.

A connection that fails (or times out) fails every call it carried; each call is then sent
again on a new connection, twice at most, after a short backoff (every store operation is
idempotent for its holder and slot id). A server that forgot the script (``NOSCRIPT``, a
restart) gets it again and the call is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio.connection import AbstractConnection

#: Tries of one call on a failing connection (the first and two retries).
_ATTEMPTS: Final = 3


def bulk(part: bytes) -> bytes:
    """One part of a Redis command, packed (a RESP bulk string)."""
    return b"$%d\r\n%b\r\n" % (len(part), part)


def pack(parts: Sequence[bytes]) -> bytes:
    """One Redis command (RESP array of bulk strings) from its encoded parts."""
    return b"*%d\r\n%b" % (len(parts), b"".join(map(bulk, parts)))


class ScriptPipe:
    """Calls of one Lua script on a dedicated, pipelined connection of ``client``'s pool.

    Args:
        client: The store's client (its pool makes the connection; the pipe closes only
            the connection it made).
        script: The Lua source (sent again whenever the server answers ``NOSCRIPT``).
        keys: How many of each call's parts are keys.
        args: How many are arguments (after the keys).

    """

    def __init__(self, client: redis.asyncio.Redis, script: str, *, keys: int, args: int) -> None:
        import redis.exceptions  # noqa: PLC0415 - optional dependency
        from redis.backoff import ExponentialBackoff  # noqa: PLC0415

        self._errors = redis.exceptions
        self._client = client
        #: Seconds a batch may take, from its write to its last answer (``None``: no limit).
        self._timeout: float | None = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._script = script.encode()
        sha = hashlib.sha1(self._script, usedforsecurity=False).hexdigest().encode()
        # Every call is EVALSHA sha keys, then its parts: the packed command starts so.
        self._head: Final = b"*%d\r\n" % (3 + keys + args) + b"".join(
            map(bulk, (b"EVALSHA", sha, b"%d" % keys))
        )
        self._backoff = ExponentialBackoff(cap=0.5, base=0.05)
        self._queue: list[bytes] = []  # packed commands not written yet
        self._futures: list[asyncio.Future[Any]] = []  # their answers, in order
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None
        self._closed = False

    async def call(self, parts: bytes) -> Any:
        """Run the script with ``parts`` (its keys then its arguments, each :func:`bulk`).

        Returns the script's reply (bytes, or a list of them).

        Raises:
            redis.exceptions.RedisError, OSError: The server failed (after the retries).

        """
        errors = self._errors
        command = self._head + parts
        failures = 0
        while True:
            try:
                return await self._send(command)
            except errors.NoScriptError:
                failures += 1
                if failures >= _ATTEMPTS:
                    raise
                await self._send(pack((b"SCRIPT", b"LOAD", self._script)))
            except (errors.ConnectionError, errors.TimeoutError, OSError):
                failures += 1
                if failures >= _ATTEMPTS or self._closed:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    def _send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command`` for the pump's next write; the future of its answer."""
        if self._closed:
            raise self._errors.ConnectionError("the store's connection was closed")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(command)
        self._futures.append(future)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name="midvary-redis-pipe"
            )
        self._wake.set()
        return future

    async def _run(self) -> None:
        errors = self._errors
        futures: list[asyncio.Future[Any]] = []
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                await asyncio.sleep(0)  # let this turn's other calls queue up too
                batch, futures = self._queue, self._futures
                self._queue, self._futures = [], []
                done = 0
                try:
                    conn = await self._connection()
                    async with asyncio.timeout(self._timeout):
                        await conn.send_packed_command(b"".join(batch), check_health=False)
                        for future in futures:
                            try:
                                reply: object = await conn.read_response()
                            except errors.ResponseError as exc:
                                reply = exc  # this call's error; the connection is fine
                            done += 1
                            _settle(future, reply)
                except Exception as exc:
                    # The connection is broken: what it carried fails (and is retried).
                    await self._drop()
                    if isinstance(exc, TimeoutError):
                        exc = errors.TimeoutError("the store did not answer in time")
                    elif not isinstance(exc, errors.RedisError | OSError):
                        exc = errors.ConnectionError(f"{type(exc).__name__}: {exc}")
                    for future in futures[done:]:
                        _settle(future, exc)
                futures = []
        finally:
            error = errors.ConnectionError("the store's connection was closed")
            for future in (*futures, *self._futures):
                _settle(future, error)
            self._queue, self._futures = [], []

    async def _connection(self) -> AbstractConnection:
        if self._conn is None:
            # The pool's own kind of connection, with its host, TLS, password, database and
            # timeouts, except that answers stay bytes and are not timed one by one: the
            # pump times each batch (``_timeout``), with one timer instead of one per answer.
            pool = self._client.connection_pool
            options = {**pool.connection_kwargs, "decode_responses": False, "socket_timeout": None}
            conn = pool.connection_class(**options)
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.connect()  # type: ignore[no-untyped-call,unused-ignore]  # redis-py 5
            except BaseException:
                await conn.disconnect()
                raise
            self._conn = conn
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Stop the pump (pending calls fail with a connection error) and disconnect."""
        self._closed = True
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await self._drop()


def _settle(future: asyncio.Future[Any], outcome: object) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
