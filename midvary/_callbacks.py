"""CallbackReceiver: the provider's callbacks wake the handles that wait for them.

How a submission and its callback meet:

1. Before the POST is sent, the submitter takes a :class:`Ticket` from its session's
   :class:`SessionTickets` (the session's named view of the receiver, from
   :func:`tickets_for`): a fresh unguessable token whose URL becomes the ``callBackUrl``.
2. When the answer names the task, the ticket is bound to the task id and the new handle's
   :class:`~midvary._polling.Alarm` (or dropped if the submission failed). A delivery that
   arrives before that waits, briefly, for the binding.
3. A delivery is checked in this order: unknown or expired token (404), signature when an
   HMAC key is configured (401), body (400), the body's task id against the token's (400).
   Only then is the handle woken; it confirms with ONE ``record-info`` GET and returns that
   record, never what the body claims. The request handler does no I/O of its own.
4. A ticket is forgotten (by the receiver's :class:`~midvary._tickets.TicketBook`) when its
   session closes, when the receiver stops, ``duplicate_grace`` seconds after its first
   accepted delivery or after its handle saw the task final, and in any case ``token_ttl``
   seconds after it was issued.
5. With ``store=``, tokens are also recorded in the shared store and a delivery for another
   replica's token is checked against the store's record and passed on to that replica
   (:mod:`midvary._relay`).
6. A submission whose answer was lost keeps its ticket, marked lost (it is not bound: no
   task id is known). A delivery to it is checked the same way, against the task id its
   body names (the one the signature covers), and that claim is handed to the recovery
   that waits for it (``_recovery``: one GET confirms it), and kept in the store if any.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import yarl
from aiohttp import web

from ._config import PollPolicy
from ._converter import structure_callback
from ._errors import ProtocolError, ReceiverClosedError
from ._polling import DEFAULT_SAFETY_POLL
from ._relay import CallbackRelay
from ._signature import signature_problem
from ._store import Store
from ._tickets import Ticket, TicketBook
from ._validate import base_url, callable_or_none, instance, positive_seconds

if TYPE_CHECKING:
    from ._polling import Alarm

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
    413: "body too large",
    503: "not ready, retry later",
}


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
                ticket.drop()
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
    receiver = instance(callbacks, CallbackReceiver, "callbacks", what="a midvary.CallbackReceiver")
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
        instance(safety_poll, PollPolicy, "safety_poll", what="a midvary.PollPolicy")
        callable_or_none(clock, "clock")
        self._hmac_key = hmac_key.encode() if hmac_key is not None else None
        self.safety_poll = safety_poll if safety_poll is not None else DEFAULT_SAFETY_POLL
        self._tolerance = float(positive_seconds(timestamp_tolerance, "timestamp_tolerance"))
        if store is not None and not isinstance(store, Store):
            raise TypeError(
                f"store must be a midvary.RedisStore or None, not {type(store).__name__}"
            )
        if store is not None and not store.shares_callbacks:
            raise TypeError(
                f"CallbackReceiver(store=...) needs a store that wakes other processes: a "
                f"RedisStore (or a MemoryStore, within one process), not {type(store).__name__}"
            )
        self._book = TicketBook(
            url_prefix=self._base_url,
            clock=clock if clock is not None else time.monotonic,
            grace=float(positive_seconds(duplicate_grace, "duplicate_grace")),
            ttl=float(positive_seconds(token_ttl, "token_ttl")),
        )
        self._relay = (
            None
            if store is None
            else CallbackRelay(store, self._book, ttl=self._book.ttl, grace=self._book.grace)
        )
        if self._relay is not None:
            self._book.on_bind = self._relay.bound
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
        the token), and accepts bodies up to 64 KiB.

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
        if self._state is _State.STOPPED:
            raise ReceiverClosedError("this CallbackReceiver is stopped; create a new one")
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
        # No access log: each request line holds a token.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
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
        body = await request.read()
        status = await self.handle(body, request.headers, request.path)
        return web.Response(status=status, text=_REASONS.get(status, ""))

    async def handle(self, body: bytes, headers: Mapping[str, str], path: str) -> int:
        """Check one delivery and wake its handle; return the HTTP status to answer.

        The framework-free core: call it from any web framework with the raw body, the
        request headers and the request path, and answer with the status it returns. It
        does no I/O for its own tokens; it waits (up to 5 s) only for a delivery that beat
        its own submission's answer. With a ``store``, a delivery for another replica's
        token is checked against the store's record and passed on through the store.

        Args:
            body: The raw request body.
            headers: The request headers (names in any case).
            path: The request path, ``<path>/<token>`` (a query string is ignored).

        Returns:
            200 (accepted, duplicates included), 404 (unknown, expired or forgotten token),
            401 (missing, stale or wrong signature when ``hmac_key`` is set), 400
            (malformed body, or a body about another task), 413 (body over 64 KiB), or 503
            (the submission's answer is still being processed: retry later).

        """
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        token = self._token_from(path)
        ticket = self._book.lookup(token) if token is not None else None
        if ticket is None and token is not None and self._relay is not None:
            return await self._handle_remote(self._relay, token, bytes(body), headers)
        found = await self._bound_ticket(ticket)
        if isinstance(found, int):
            return found
        if isinstance(found, Ticket):
            return await self._handle_lost(found, bytes(body), headers)
        ticket, task_id, alarm = found
        status = self._verify(task_id, bytes(body), headers)
        if status != 200:
            return status
        ticket.settle()
        if alarm.final:
            logger.debug("duplicate callback for finished task %s", task_id)
        else:
            logger.debug("callback for task %s: waking its handle", task_id)
            alarm.notify()
        return 200

    async def _handle_remote(
        self, relay: CallbackRelay, token: str, body: bytes, headers: Mapping[str, str]
    ) -> int:
        """A delivery for a token this receiver did not issue: check it, pass it on."""
        task_id = await relay.task_of(token, bind_wait=_BIND_WAIT)
        if isinstance(task_id, int):
            return task_id
        if task_id is None:
            # Its answer is late, or lost: keep the task id the delivery names for whoever
            # recovers the submission, and let the provider retry (the answer may come).
            claimed = self._claimed_task(body, headers)
            if isinstance(claimed, int):
                return claimed
            logger.info("callback to an unbound token (via the store): kept, 503")
            status = await relay.report(token, claimed, wake=True)
            return 503 if status == 200 else status
        status = self._verify(task_id, body, headers)
        if status != 200:
            return status
        logger.debug("callback for task %s: passing it on through the store", task_id)
        return await relay.forward(token)

    async def _handle_lost(self, ticket: Ticket, body: bytes, headers: Mapping[str, str]) -> int:
        """A delivery to a ticket whose answer was lost: hand its task id to the recovery."""
        claimed = self._claimed_task(body, headers)
        if isinstance(claimed, int):
            return claimed
        if self._relay is not None:  # kept in the store first: a later run can use it too
            status = await self._relay.report(ticket.token, claimed, wake=False)
            if status != 200:
                return status
        logger.info("callback for a lost submission names task %s: confirming it", claimed)
        ticket.report(claimed)
        return 200

    def _claimed_task(self, body: bytes, headers: Mapping[str, str]) -> str | int:
        """The task a delivery to an unbound token names once checked, or the status."""
        if len(body) > _MAX_BODY:
            return 413
        try:
            notice = structure_callback(body)
        except ProtocolError as exc:
            logger.info("callback to an unbound token rejected: %s", exc)
            return 400
        status = self._verify(notice.task_id, body, headers)
        return notice.task_id if status == 200 else status

    async def _bound_ticket(
        self, ticket: Ticket | None
    ) -> tuple[Ticket, str, Alarm] | Ticket | int:
        """The live ``ticket``'s task and alarm (once bound), or the status to answer.

        A live ticket whose submission's answer was lost is returned alone.
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
        task_id, alarm = ticket.task_id, ticket.alarm
        if ticket.lost and alarm is None and ticket.live:
            return ticket
        if task_id is None or alarm is None or not ticket.live:
            logger.debug("callback for %r, dropped meanwhile: 404", ticket)
            return 404
        return ticket, task_id, alarm

    def _verify(self, task_id: str, body: bytes, headers: Mapping[str, str]) -> int:
        """Check signature, body and task id, in that order; the status to answer."""
        if self._hmac_key is not None:
            problem = self._signature_problem(task_id, headers)
            if problem is not None:
                logger.warning("callback for task %s rejected: %s", task_id, problem)
                return 401
        if len(body) > _MAX_BODY:
            return 413
        try:
            notice = structure_callback(body)
        except ProtocolError as exc:
            logger.info("callback for task %s rejected: %s", task_id, exc)
            return 400
        if notice.task_id != task_id:
            logger.warning(
                "callback for task %s names another task (%.80r): rejected",
                task_id,
                notice.task_id,
            )
            return 400
        return 200

    def _token_from(self, path: str) -> str | None:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        path = path.split("?", 1)[0]
        prefix = f"{self._path}/"
        if not path.startswith(prefix):
            return None
        token = path[len(prefix) :]
        return token or None

    def _signature_problem(self, task_id: str, headers: Mapping[str, str]) -> str | None:
        """Why the delivery's signature fails, or ``None`` when it is valid and fresh."""
        assert self._hmac_key is not None  # noqa: S101  # only called when signing is on
        return signature_problem(
            task_id, headers, key=self._hmac_key, max_age=self._tolerance, now=time.time()
        )

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
