"""CallbackReceiver: the provider's callbacks wake the handles that wait for them.

How a submission and its callback meet:

1. Before the POST is sent, the submitter takes a :class:`Ticket` from its session's
   :class:`SessionTickets` (the session's named view of the receiver, from
   :func:`tickets_for`): a fresh unguessable token whose URL becomes the ``callBackUrl``.
2. When the answer names the task, the ticket is bound to the task id and the new handle's
   :class:`~midvary._polling.Alarm` (or dropped if the submission failed). A delivery that
   arrives before that waits, briefly, for the binding.
3. A delivery is checked in this order: unknown or expired token (404), signature when an
   HMAC key is configured (401), both before the body is read; then the body: compressed
   (415), over 64 KiB (413), malformed (400), about another task than the token's (400).
   Only then is the handle woken; it confirms with ONE ``record-info`` GET and returns that
   record, never what the body claims. The request handler does no I/O of its own. How
   often a token wakes its handle, and when it is forgotten: ``_tickets``.
4. With ``store=``, tokens are also recorded in the shared store and a delivery for another
   replica's token is checked against the store's record and passed on to that replica
   (:mod:`midvary._relay`).
5. A submission whose answer was lost keeps its ticket, marked lost (no task id is known):
   a delivery to it is checked against the task id its body names (the one the signature
   covers), and that claim goes to the recovery that waits for it (``_recovery``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

import yarl
from aiohttp import web

from ._config import PollPolicy
from ._converter import structure_callback
from ._errors import ProtocolError, ReceiverClosedError
from ._listener import Doorman, GuardedSite
from ._polling import DEFAULT_SAFETY_POLL
from ._relay import CallbackRelay
from ._signature import signature_problem
from ._store import Store, TokenStore
from ._tickets import Ticket, TicketBook
from ._transport import read_at_most
from ._validate import base_url, callable_or_none, count, instance, positive_seconds

logger = logging.getLogger(__name__)

#: The path prefix when the receiver derives its URL from the address it serves on.
DEFAULT_PATH: Final = "/midvary/callback"

# Seconds a delivery that beat its submission's answer waits for that answer to be processed
# (normally microseconds: the provider answered the POST before it ran the task). Well inside
# the provider's 15 s; beyond it the delivery gets 503 and the provider retries it later.
_BIND_WAIT: Final = 5.0
# Callback bodies are a few hundred bytes; refuse anything absurd before parsing it.
_MAX_BODY: Final = 64 * 1024
_REASONS: Final = {
    200: "ok",
    400: "malformed callback",
    401: "bad signature",
    404: "unknown token",
    408: "body too slow",
    413: "body too large",
    415: "compressed bodies are not accepted",
    503: "not ready, retry later",
}
_IDENTITY: Final = frozenset({"", "identity"})


class _State(enum.Enum):
    READY = "ready"
    SERVING = "serving"
    STOPPED = "stopped"


class SessionTickets:
    """One session's tokens at one receiver: all a session's submitter asks of it."""

    __slots__ = ("_receiver",)

    def __init__(self, receiver: CallbackReceiver) -> None:
        self._receiver = receiver

    @property
    def safety_poll(self) -> PollPolicy:
        """The poll policy of handles waiting on a callback (the receiver's)."""
        return self._receiver.safety_poll

    @property
    def relay(self) -> CallbackRelay | None:
        """The receiver's door to its shared store, or ``None`` when it has no store."""
        return self._receiver._relay

    async def issue(self, link: str | None = None) -> Ticket:
        """A fresh ticket for one submission; take it before sending the submission.

        With a store, the token is recorded there first (other replicas then recognise it),
        findable from ``link`` (the ``_relay.link_id`` of the submission's key) if given.

        Raises:
            ReceiverClosedError: The receiver was stopped.
            ValueError: The receiver has no public URL yet.
            StoreError: The receiver's store failed (nothing may be sent).

        """
        receiver = self._receiver
        receiver._check_usable()
        ticket = receiver._book.issue(self)
        if receiver._relay is not None:
            try:
                await receiver._relay.register(ticket, link)
            except BaseException:
                ticket.book.drop(ticket)
                raise
        return ticket

    def forget(self) -> None:
        """Forget every token of this session (it is closing)."""
        self._receiver._book.forget(self)


def tickets_for(callbacks: object) -> SessionTickets | None:
    """A session's view of its ``callbacks`` receiver; ``None`` for no receiver.

    Raises:
        TypeError: ``callbacks`` is not a :class:`CallbackReceiver` nor ``None``.
        ReceiverClosedError: The receiver was stopped.

    """
    receiver = instance(callbacks, "callbacks", CallbackReceiver, what="a midvary.CallbackReceiver")
    if receiver is None:
        return None
    receiver._check_usable()
    return SessionTickets(receiver)


class CallbackReceiver:
    """Receives the provider's callbacks and wakes the handles that wait for them.

    Give it to a :class:`Session` (``Session(callbacks=receiver)``) and each submission
    gets its own unguessable callback URL, ``<public_url>/<token>``. A handle is then
    resolved by its callback or by a poll, whichever comes first; a callback only wakes it,
    and it returns the record of one confirming ``record-info`` GET, never the body's URLs.
    Handles waiting on a callback still poll, slowly (``safety_poll``), in case a delivery
    never arrives.

    Serve it in one of three ways:

    - standalone: ``await receiver.start(host, port)`` runs an aiohttp server
      (``await receiver.stop()``, or ``async with receiver:``, stops it);
    - mounted in your aiohttp app: ``receiver.add_routes(app)``;
    - from any framework: ``status = await receiver.handle(body, headers, path)``.

    One receiver can serve several sessions. A session's tokens are forgotten when it
    closes, and every token when the receiver stops; later deliveries get 404. A stopped
    receiver cannot be restarted or given to a new session (:class:`ReceiverClosedError`).

    Args:
        public_url: The absolute http(s) URL at which the provider reaches this receiver;
            its path is the prefix of every callback path. ``None`` means: derive it, once
            :meth:`start` has bound, as ``http://<host>:<port>/midvary/callback`` (for
            local use and tests; not possible on a wildcard host such as ``0.0.0.0``).
        hmac_key: kie.ai's ``webhookHmacKey``: deliveries must then carry a valid
            ``X-Webhook-Signature``; ``None`` means deliveries are not signed (the token in
            the path is then the only credential).
        safety_poll: The :class:`PollPolicy` of handles waiting on a callback, deadline
            (``timeout``) included; ``None`` means :data:`DEFAULT_SAFETY_POLL` (first poll
            60 s after submission, then every 120 s, 900 s deadline). A ``poll=`` passed to
            ``handle.wait`` still wins.
        timestamp_tolerance: Seconds a signed delivery's ``X-Webhook-Timestamp`` may differ
            from this machine's clock (> 0).
        duplicate_grace: Seconds a token stays valid after its first accepted delivery or
            after its handle saw the task final, so duplicates are answered 200 (> 0).
        token_ttl: Seconds after which a token is forgotten in any case, so memory stays
            bounded in a long-lived worker (> 0).
        wake_interval: Seconds between two wakes of one handle by deliveries to its token
            (> 0): the first delivery wakes it at once (one ``record-info`` GET), later ones
            within the interval fold into one wake at its end. Bounds what a leaked, replayed
            token can cost; a genuine callback after a replay is late by at most this.
        max_connections: The most connections the standalone server (:meth:`start`) keeps
            open at once (>= 1; never more than half the process's open-file limit); at the
            limit, the oldest connection with no request in progress is closed to make room.
        read_timeout: Seconds a client of the standalone server has to send a request head
            (from connecting, or from its previous answer), and again to send the body
            (> 0); slower connections are closed.
        clock: The monotonic clock of those expiries, in seconds; ``None`` means
            ``time.monotonic``. For tests.
        store: A shared store (a :class:`RedisStore`; a :class:`MemoryStore` within one
            process) for a receiver that is one of several replicas behind a load
            balancer: it then recognises every replica's tokens and passes their
            deliveries on, through the store, to the process whose handle waits. The
            receiver uses it (open) and never closes it; its ``namespace=`` (if any)
            scopes the tokens. ``None`` means this receiver knows its own tokens only.

    Raises:
        TypeError: ``store`` cannot share callbacks (a :class:`SQLiteStore` has no channel
            to wake another process).

    """

    def __init__(
        self,
        *,
        public_url: str | None = None,
        hmac_key: str | None = None,
        safety_poll: PollPolicy | None = None,
        timestamp_tolerance: float = 300.0,
        duplicate_grace: float = 600.0,
        token_ttl: float = 3600.0,
        wake_interval: float = 10.0,
        max_connections: int = 256,
        read_timeout: float = 10.0,
        clock: Callable[[], float] | None = None,
        store: Store | None = None,
    ) -> None:
        self._public_url: yarl.URL | None = None
        self._path = DEFAULT_PATH
        if public_url is not None:
            self._public_url = base_url(public_url, name="public_url")
            self._path = self._public_url.path
        if hmac_key is not None and (not isinstance(hmac_key, str) or not hmac_key):
            # Never echo the value: it is a secret even when it is malformed.
            raise ValueError("hmac_key must be a non-empty str (kie's webhookHmacKey) or None")
        instance(safety_poll, "safety_poll", PollPolicy, what="a midvary.PollPolicy")
        callable_or_none(clock, "clock")
        self._hmac_key = hmac_key.encode() if hmac_key is not None else None
        self.safety_poll = safety_poll if safety_poll is not None else DEFAULT_SAFETY_POLL
        self._tolerance = float(positive_seconds(timestamp_tolerance, "timestamp_tolerance"))
        if store is not None and not (isinstance(store, Store) and isinstance(store, TokenStore)):
            raise TypeError(
                "store must be a store that wakes other processes: a midvary.RedisStore (or a "
                f"MemoryStore, within one process) or None, not {type(store).__name__}"
            )
        self._book = TicketBook(
            url_prefix=self._base_url,
            clock=clock if clock is not None else time.monotonic,
            grace=float(positive_seconds(duplicate_grace, "duplicate_grace")),
            ttl=float(positive_seconds(token_ttl, "token_ttl")),
            wake_interval=float(positive_seconds(wake_interval, "wake_interval")),
        )
        self._max_connections = count(max_connections, "max_connections")
        self._read_timeout = float(positive_seconds(read_timeout, "read_timeout"))
        self._doorman: Doorman | None = None
        self._relay: CallbackRelay | None = None
        if store is not None:
            book = self._book
            self._relay = CallbackRelay(store, book, ttl=book.ttl, grace=book.grace)
            book.on_bind = self._relay.bound
        self._state = _State.READY
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        return (
            f"<midvary.CallbackReceiver url={self.public_url!r} "
            f"tokens={len(self._book)} state={self._state.value}>"
        )

    @property
    def public_url(self) -> str | None:
        """The URL prefix of callback URLs, or ``None`` until :meth:`start` derives it."""
        return None if self._public_url is None else str(self._public_url)

    @property
    def path(self) -> str:
        """The path prefix of callback paths (``public_url``'s path, no trailing slash)."""
        return self._path

    @property
    def port(self) -> int | None:
        """The port :meth:`start` bound (useful with port 0), or ``None`` when not serving."""
        return self._port

    @property
    def closed(self) -> bool:
        """Whether :meth:`stop` has run; a stopped receiver cannot be used again."""
        return self._state is _State.STOPPED

    @property
    def active_tokens(self) -> int:
        """How many tokens are live (issued, not yet expired, dropped or forgotten)."""
        return len(self._book)

    async def __aenter__(self) -> CallbackReceiver:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve callbacks standalone: run an aiohttp server on ``host:port``.

        The server answers ``POST <path>/<token>`` only, logs no access lines (the path holds
        the token), accepts uncompressed bodies up to 64 KiB, closes connections that send
        nothing within ``read_timeout`` and keeps at most ``max_connections`` open. On a
        public address, put a reverse proxy (TLS, per-client limits) in front of it.

        Args:
            host: The address to listen on.
            port: The TCP port; 0 picks a free one (read it from :attr:`port`).

        Raises:
            ReceiverClosedError: The receiver was stopped.
            RuntimeError: It is already serving.
            TypeError, ValueError: ``host`` or ``port`` is invalid, or ``public_url`` is
                ``None`` and ``host`` is a wildcard address it cannot be derived from.
            OSError: The address could not be bound.

        """
        self._check_usable()
        if self._runner is not None:
            raise RuntimeError("this CallbackReceiver is already serving")
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(
                f"port must be an int from 0 to 65535 (0: any free port), got {port!r}"
            )
        if self._public_url is None and host in ("0.0.0.0", "::"):  # noqa: S104
            raise ValueError(
                f"cannot derive a callback URL from the wildcard host {host!r}: "
                "pass CallbackReceiver(public_url=...)"
            )
        app = web.Application(client_max_size=_MAX_BODY)
        self.add_routes(app)
        doorman = Doorman(limit=self._max_connections, read_timeout=self._read_timeout)
        # No access log: each request line holds a token. No decompression: a small gzip
        # body can inflate to hundreds of MiB, and callbacks are small JSON.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            keepalive_timeout=self._read_timeout,
        )
        await runner.setup()
        try:
            await GuardedSite(runner, host, port, doorman).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._doorman = doorman
        self._port = int(runner.addresses[0][1])
        self._state = _State.SERVING
        if self._public_url is None:
            self._public_url = yarl.URL.build(
                scheme="http", host=host, port=self._port, path=self._path
            )
        logger.info("callback receiver serving on %s:%d%s", host, self._port, self._path)

    async def stop(self) -> None:
        """Stop serving (if :meth:`start` ran) and forget every token. Idempotent.

        Later deliveries get 404 (or no answer once the server is gone). Handles still
        waiting go on with their safety polls; new submissions through this receiver raise
        :class:`ReceiverClosedError`.
        """
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        self._book.drop_all()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.info("callback receiver stopped")
        if self._doorman is not None:
            self._doorman.close_all()
        if self._relay is not None:
            await self._relay.close()

    def add_routes(self, app: web.Application) -> None:
        """Mount the receiver in your aiohttp ``app``: ``POST <path>/{token}``.

        Your app's server must be reachable at ``public_url``. Beware of your own access
        log: the request line holds the token (a per-task capability, not the API key).
        """
        if not isinstance(app, web.Application):
            raise TypeError(f"app must be an aiohttp.web.Application, not {type(app).__name__}")
        app.router.add_post(f"{self._path}/{{token}}", self._on_post)

    async def _on_post(self, request: web.Request) -> web.Response:
        doorman = self._doorman
        if doorman is not None:
            doorman.busy(request.transport)
        try:
            status = await self._receive(request)
        finally:
            if doorman is not None:
                doorman.idle(request.transport)
        return web.Response(status=status, text=_REASONS.get(status, ""))

    async def _receive(self, request: web.Request) -> int:
        """The status for one delivery: token and signature before a byte of the body."""
        admitted = await self._admit(request.path, request.headers)
        if isinstance(admitted, int):
            return admitted
        refused = _body_refused(request.headers, request.content_length)
        if refused is not None:
            return refused
        try:
            async with asyncio.timeout(self._read_timeout):
                body = await read_at_most(request.content, _MAX_BODY)
        except TimeoutError:
            logger.info(
                "callback for task %s: body not sent within %g s", admitted[0], self._read_timeout
            )
            return 408
        if body is None:
            return 413
        return await self._deliver(admitted, body, request.headers)

    async def handle(self, body: bytes, headers: Mapping[str, str], path: str) -> int:
        """Check one delivery and wake its handle; return the HTTP status to answer.

        The framework-free core: call it from any web framework with the raw body, the
        request headers and the request path, and answer with the status it returns. It
        does no I/O for its own tokens; it waits (up to 5 s) only for a delivery that beat
        its own submission's answer. With a ``store``, a delivery for another replica's
        token is checked against the store's record and passed on through the store.

        Args:
            body: The raw request body (as sent: a framework that inflates compressed
                bodies should not be given them; callbacks are small JSON).
            headers: The request headers (names in any case).
            path: The request path, ``<path>/<token>`` (a query string is ignored).

        Returns:
            200 (accepted, duplicates included), 404 (unknown, expired or forgotten token),
            401 (missing, stale or wrong signature when ``hmac_key`` is set), 415 (a
            ``Content-Encoding`` other than identity), 413 (body over 64 KiB), 400
            (malformed body, or a body about another task), or 503 (the submission's answer
            is still being processed: retry later).

        """
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        admitted = await self._admit(path, headers)
        if isinstance(admitted, int):
            return admitted
        refused = _body_refused(headers, len(body))
        if refused is not None:
            return refused
        return await self._deliver(admitted, bytes(body), headers)

    async def _admit(
        self, path: str, headers: Mapping[str, str]
    ) -> tuple[str | None, Ticket | str] | int:
        """The delivery's task and its local ticket (or remote token), or the status.

        Looks at the path and headers only: an unknown token or a bad signature costs no
        body read. The task is ``None`` for a token whose answer was lost (or, for another
        replica's, is late past the bind wait): the body names it, and the signature is
        checked against that (:meth:`_deliver`).
        """
        token = self._token_from(path)
        ticket = self._book.lookup(token) if token is not None else None
        task_id: str | int | None
        if ticket is None and token is not None and self._relay is not None:
            task_id = await self._relay.task_of(token, bind_wait=_BIND_WAIT)
            if isinstance(task_id, int):
                return task_id
            target: Ticket | str = token
        else:
            found = await self._bound_ticket(ticket)
            if isinstance(found, int):
                return found
            target, task_id = found
        if task_id is not None and (refused := self._bad_signature(task_id, headers)):
            return refused
        return task_id, target

    async def _deliver(
        self, admitted: tuple[str | None, Ticket | str], body: bytes, headers: Mapping[str, str]
    ) -> int:
        """Check an admitted delivery's body, then wake its handle (or its replica's)."""
        task_id, target = admitted
        try:
            notice = structure_callback(body)
        except ProtocolError as exc:
            logger.info("callback for task %s rejected: %s", task_id, exc)
            return 400
        if task_id is None:
            return await self._deliver_unbound(target, notice.task_id, headers)
        if notice.task_id != task_id:
            logger.warning(
                "callback for task %s names another task (%.80r): rejected",
                task_id,
                notice.task_id,
            )
            return 400
        if isinstance(target, str):
            logger.debug("callback for task %s: passing it on through the store", task_id)
            assert self._relay is not None  # noqa: S101 - a remote token came from the relay
            return await self._relay.forward(target)
        if target.ring():
            logger.debug("callback for task %s: waking its handle", task_id)
        else:
            logger.debug("callback for task %s: handle final or woken lately", task_id)
        return 200

    async def _deliver_unbound(
        self, target: Ticket | str, task_id: str, headers: Mapping[str, str]
    ) -> int:
        """A checked body names ``task_id`` for a token with no task: keep it for recovery.

        A local ticket's answer was lost: the recovery waiting for it confirms the task
        (kept in the store first, if any, so a later run can too), 200. Another replica's
        token may only be late: the task is kept in the store and its owner woken, but 503,
        so that the provider's retry takes the ordinary path once the answer came.
        """
        if refused := self._bad_signature(task_id, headers):
            return refused
        relay = self._relay
        if isinstance(target, str):
            assert relay is not None  # noqa: S101 - a remote token came from the relay
            logger.info("callback to an unbound token (via the store) names %s: kept, 503", task_id)
            status = await relay.report(target, task_id, wake=True)
            return 503 if status == 200 else status
        if relay is not None:
            status = await relay.report(target.token, task_id, wake=False)
            if status != 200:
                return status
        logger.info("callback for a lost submission names task %s: confirming it", task_id)
        target.report(task_id)
        return 200

    async def _bound_ticket(self, ticket: Ticket | None) -> tuple[Ticket, str | None] | int:
        """The live ``ticket`` and its task (once bound), or the status to answer.

        The task is ``None`` for a live ticket whose submission's answer was lost.
        """
        if ticket is None:
            logger.debug("callback to an unknown or expired token: 404")
            return 404
        if ticket.alarm is None:
            try:
                async with asyncio.timeout(_BIND_WAIT):
                    await ticket.bound.wait()
            except TimeoutError:
                logger.info("callback for %r came before its task id: 503", ticket)
                return 503
        task_id = ticket.task_id
        if ticket.lost and ticket.alarm is None and ticket.live:
            return ticket, None
        if task_id is None or ticket.alarm is None or not ticket.live:
            logger.debug("callback for %r, dropped meanwhile: 404", ticket)
            return 404
        return ticket, task_id

    def _token_from(self, path: str) -> str | None:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        path = path.split("?", 1)[0]
        prefix = f"{self._path}/"
        if not path.startswith(prefix):
            return None
        token = path[len(prefix) :]
        return token or None

    def _bad_signature(self, task_id: str, headers: Mapping[str, str]) -> int | None:
        """401 when signing is on and the delivery's signature is not valid and fresh."""
        if self._hmac_key is None:
            return None
        problem = signature_problem(
            task_id, headers, key=self._hmac_key, max_age=self._tolerance, now=time.time()
        )
        if problem is None:
            return None
        logger.warning("callback for task %s rejected: %s", task_id, problem)
        return 401

    def _check_usable(self) -> None:
        if self._state is _State.STOPPED:
            raise ReceiverClosedError("this CallbackReceiver is stopped; create a new one")

    def _base_url(self) -> str:
        if self._public_url is None:
            raise ValueError(
                "the CallbackReceiver has no public_url yet: pass one, or await "
                "receiver.start() before submitting"
            )
        return str(self._public_url)


def _body_refused(headers: Mapping[str, str], length: int | None) -> int | None:
    """415 for a compressed body, 413 for a declared length over 64 KiB, else ``None``."""
    encoding = next(
        (value for name, value in headers.items() if name.lower() == "content-encoding"), ""
    )
    if encoding.strip().lower() not in _IDENTITY:
        return 415
    if length is not None and length > _MAX_BODY:
        return 413
    return None
