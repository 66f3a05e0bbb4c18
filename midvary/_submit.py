"""The submission pipeline: one :class:`Submitter` owns a submission from request to handle.

One submission, in order:

1. its kind (``_bodies.KINDS``: the endpoint and the body of each request class);
2. for a request with a ``key``, the key's claim in the :class:`SubmitStore`
   (:func:`identity` fingerprints the request's wire body): a key that already names a
   task returns a handle on it, with no POST; a key whose earlier POST is uncertain raises
   :class:`SubmitUncertainError` naming it (never re-sent); a key held by a live submitter
   is waited for; a key used for another request raises :class:`KeyConflictError`;
3. a callback ticket from the session's receiver, if it has one and the request names no
   ``callback_url`` (registered before the POST: the callback may beat the answer);
4. per attempt: a limiter slot (the claim's own, taken in the store with it, when the
   store limits), ``claim.before_post`` (the key is marked sending: nothing is sent whose
   claim is not recorded), ``hooks.before_post``, the POST, ``hooks.after_post``;
5. classification of each failure: **accepted** (a task id), **certainly refused** (an
   :class:`APIError` that says so, 429/455 with the retry budget spent, a request never
   sent, a hook or a store that stopped it) or **uncertain** (:class:`SubmitUncertainError`:
   500, a broken answer, an answer lost after sending). Only 429, 455 and "never sent" are
   retried (the one retry module decides); they give their slot back, and before each
   wait ``claim.retrying`` puts the key back to claimed and ``hooks.retrying`` is told;
6. on acceptance the store records key -> task id (before the handle is returned; if that
   write fails the task id is logged at WARNING with its key and the handle is returned
   anyway: the key then turns uncertain, never sent twice), the ticket is bound to the
   handle's alarm, and the :class:`TaskHandle` is returned; on a certain refusal the claim
   is released (and the ticket dropped); an uncertain submission marks the key uncertain
   and keeps its ticket, marked lost, for the provider's callback: the error's
   :class:`~midvary._recovery.Recovery` (:meth:`Submitter.recovery`) waits for it. A key
   found uncertain gets one too when its token is in the receiver's shared store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import weakref
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeGuard

from . import _telemetry as telemetry
from ._bodies import KINDS, RequestKind
from ._converter import structure_task_id
from ._errors import (
    ACCOUNT_STOPPING,
    APIError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SessionClosedError,
    StoreError,
    SubmitUncertainError,
    TransportError,
)
from ._handle import TaskHandle
from ._models import SubmitRequest
from ._outage import is_outage
from ._polling import Alarm
from ._recovery import Recovery
from ._relay import link_id, token_id
from ._retry import is_unaccepted, submit_with_retries
from ._store._base import RequestJSON, canonical_json

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from ._callbacks import SessionTickets
    from ._core import SessionCore
    from ._ratelimit import OnWait
    from ._tickets import Ticket

logger = logging.getLogger(__name__)

#: What a wrong request type is told it may be.
REQUEST_CLASSES: Final = "a midvary.VaryRequest, GenerateRequest, UpscaleRequest or ExtendRequest"


def is_request(item: object) -> TypeGuard[SubmitRequest]:
    """Whether ``item`` is a request a :class:`Submitter` can send (a row of :data:`KINDS`)."""
    return type(item) in KINDS


def identity(kind: RequestKind, request: SubmitRequest) -> tuple[str, RequestJSON]:
    """What a key is bound to: ``(fingerprint, stored request)`` of ``request``.

    Both come from the request's wire body without its callback URL (and with the
    documented 0-based image index), so two requests are "the same" for a key exactly when
    they would make the same task: the endpoint and every field sent. The stored request
    is ``{"path": <endpoint>, "body": <that body>}``, as its canonical JSON (dumped once,
    here: the store writes it as it is); the fingerprint is that JSON's SHA-256.
    """
    stored = {"path": kind.path, "body": kind.body(request, callback_url=None, index_base=0)}
    text = canonical_json(stored)
    return hashlib.sha256(text.encode()).hexdigest()[:32], RequestJSON(text)


class SubmitHooks(Protocol):
    """What a submission reports to its caller (the fan-out) about its POSTs."""

    def before_post(self) -> None:
        """A POST is about to be sent (raise to stop it)."""

    def after_post(self) -> None:
        """The POST was answered, or failed in a way its error describes."""

    def waiting(self, seconds: float, error: RateLimitError | None = None) -> None:
        """The submission is about to wait ``seconds`` for the limiter or after a 429."""

    def retrying(self, error: BaseException, seconds: float) -> None:
        """A POST certainly refused (429, 455, never sent) is retried after ``seconds``."""

    def reattached(self) -> None:
        """The request's key already named a task: its handle is returned, nothing sent."""

    def recovered(self) -> None:
        """The answer was lost (now or earlier, for a key): the callback named the task."""


class Slot(Protocol):
    """One POST's place in a limiter's window (``_ratelimit.Slot``)."""

    def refund(self) -> None:
        """The POST was certainly not accepted: it does not count against the window."""


class Limiter(Protocol):
    """The submission slots: the in-process :class:`SubmitLimiter`, or a store's fleet one."""

    def slot(self, on_wait: OnWait | None = None) -> AbstractAsyncContextManager[Slot]:
        """Hold one submission slot for one POST, waiting for a free one first."""
        ...

    async def slow_down(self, pause: float) -> int:
        """A 429 got through: slow down, and pause ``pause`` seconds; the new allowance."""
        ...

    async def pause(self, seconds: float) -> None:
        """An account refusal or an outage: no new slot for ``seconds`` (a store's: shared)."""

    def close(self, error: BaseException) -> None:
        """Make every current and later wait for a slot raise ``error``."""


class Claim(Protocol):
    """One submission's hold on its key in a :class:`SubmitStore` (``_store.Hold``).

    Held (and kept alive by the store) while the submission runs; leaving it unsettled
    leaves a key that was sending uncertain (never re-sent) and releases one never sent.
    """

    @property
    def task_id(self) -> str | None:
        """The task the key already names (no POST is then sent), or ``None``."""
        ...

    @property
    def known_uncertain(self) -> bool:
        """Whether the key was sent before and its answer lost (it is never re-sent)."""
        ...

    @property
    def takes_slot(self) -> bool:
        """Whether :meth:`before_post` also takes the account's limiter slot."""
        ...

    async def before_post(self, on_wait: OnWait | None = None) -> None:
        """Mark the key sending (with its slot when :attr:`takes_slot`); raise to stop."""

    async def retrying(self) -> None:
        """A 429/455/never-sent POST is retried: back to claimed, its slot refunded."""

    async def accepted(self, task_id: str) -> bool:
        """The POST was accepted as ``task_id``: record key -> task id (``False``: not taken)."""
        ...

    async def refused(self) -> None:
        """The submission was certainly not accepted: release the key."""

    async def uncertain(self) -> None:
        """The answer was lost after sending: the key becomes uncertain."""


class SubmitStore(Protocol):
    """Where a store plugs into submissions (``_store.StoreClaims``)."""

    @property
    def namespace(self) -> str:
        """The account's namespace of keys in the store."""
        ...

    async def recovered(self, key: str, task_id: str) -> bool:
        """An uncertain ``key``'s lost answer was recovered as ``task_id``: record it."""
        ...

    def claim(
        self, key: str, *, fingerprint: str, request: object
    ) -> AbstractAsyncContextManager[Claim]:
        """Claim ``key`` for ``request`` before anything is sent (waits for a live holder).

        Raises:
            StoreError: The store failed: nothing may be sent.
            KeyConflictError: ``key`` is bound to another request.

        """
        ...


class Submitter:
    """Submits requests for one session; see the module docstring for the steps.

    Args:
        core: The session's shared state (open/closed, transport, retry policy).
        limiter: The submission slots; ``None`` means no limit.
        tickets: The session's callback tickets; ``None`` means no receiver.
        store: The key store of requests with a ``key``.

    """

    __slots__ = ("_core", "_limiter", "_recoveries", "_store", "_tickets")

    def __init__(
        self,
        core: SessionCore,
        *,
        limiter: Limiter | None,
        tickets: SessionTickets | None,
        store: SubmitStore,
    ) -> None:
        self._core = core
        self._limiter = limiter
        self._tickets = tickets
        self._store = store
        # The recovery of each uncertain submission that has one, by its error (held by
        # its caller for as long as the caller may ask).
        self._recoveries: weakref.WeakKeyDictionary[SubmitUncertainError, Recovery] = (
            weakref.WeakKeyDictionary()
        )

    def recovery(self, error: SubmitUncertainError) -> Recovery | None:
        """The recovery of the submission that raised ``error``, or ``None`` if it has none.

        Only a submission of this session sent with its receiver's ticket (or, with a
        receiver on a shared store, a key found uncertain whose token is there) has one.
        """
        return self._recoveries.get(error)

    @property
    def limiter(self) -> Limiter | None:
        """The submission slots, or ``None`` when submissions are not limited."""
        return self._limiter

    def close(self) -> None:
        """The session closed: waits for a slot end, and its callback tokens are forgotten."""
        if self._limiter is not None:
            self._limiter.close(SessionClosedError("the Session was closed before this was sent"))
        if self._tickets is not None:
            self._tickets.forget()

    async def submit(self, request: SubmitRequest, hooks: SubmitHooks | None = None) -> TaskHandle:
        """Submit ``request`` and return the handle of its task.

        Raises:
            TypeError: ``request`` is not a request class; nothing was sent.
            KeyConflictError: Its key is bound to another request; nothing was sent.
            StoreError: The key's store failed before the POST; nothing was sent.
            SubmitUncertainError: The answer was lost after sending (now or, for a key,
                earlier); never re-sent.
            APIError, TransportError: The submission was certainly refused.

        """
        kind = KINDS.get(type(request))
        if kind is None:
            raise TypeError(f"request must be {REQUEST_CLASSES}, not {type(request).__name__}")
        self._core.open()
        with telemetry.submission(request, self._core.base_url) as span:
            return await self._claimed(kind, request, hooks, span)

    async def _claimed(
        self,
        kind: RequestKind,
        request: SubmitRequest,
        hooks: SubmitHooks | None,
        span: telemetry.Submission,
    ) -> TaskHandle:
        """Submit ``request``, claiming its key first if it has one."""
        key = request.key
        if key is None:
            return await self._submit(kind, request, hooks, None, span)
        fingerprint, stored = identity(kind, request)
        async with self._store.claim(key, fingerprint=fingerprint, request=stored) as claim:
            if claim.task_id is not None:
                logger.info("%s was submitted before as task %s", request.describe(), claim.task_id)
                if hooks is not None:
                    hooks.reattached()
                span.accepted(claim.task_id, "reattached")
                return TaskHandle(self._core, claim.task_id, request=request)
            if claim.known_uncertain:
                error = SubmitUncertainError(
                    request,
                    f"key {key!r} was sent before and its answer was lost; "
                    "store.forget(key) allows a re-send",
                )
                recovery = await self._recovery_of_key(kind, request, key)
                if recovery is not None:
                    # A delivery for it may be in the store already: one look, no wait.
                    handle = await recovery.wait(0.0)
                    if handle is not None:
                        if hooks is not None:
                            hooks.recovered()
                        span.accepted(handle.task_id, "recovered")
                        return handle
                    self._recoveries[error] = recovery
                raise error
            return await self._submit(kind, request, hooks, claim, span)

    async def _recovery_of_key(
        self, kind: RequestKind, request: SubmitRequest, key: str
    ) -> Recovery | None:
        """The recovery of uncertain ``key`` by its earlier token, if the store has it."""
        relay = self._tickets.relay if self._tickets is not None else None
        if relay is None:
            return None
        try:
            name = await relay.linked(link_id(self._store.namespace, key))
        except StoreError as exc:
            logger.warning("could not look up the callback token of key %r: %s", key, exc)
            return None
        if name is None:
            return None
        body = kind.body(request, callback_url=None, index_base=self._core.index_base)
        return self._recovery(request, body, name, None)

    async def _submit(
        self,
        kind: RequestKind,
        request: SubmitRequest,
        hooks: SubmitHooks | None,
        claim: Claim | None,
        span: telemetry.Submission,
    ) -> TaskHandle:
        ticket = await self._ticket(request, claim)
        callback_url = request.callback_url if ticket is None else ticket.url
        body = kind.body(request, callback_url=callback_url, index_base=self._core.index_base)
        attempt = _Attempt(self._core, self._limiter, kind.path, body, request, hooks, claim, span)
        try:
            task_id = await submit_with_retries(
                attempt, self._core.retry, self._core.outage, on_retry=attempt.retrying
            )
        except BaseException as exc:
            if ticket is not None and isinstance(exc, SubmitUncertainError):
                ticket.lose()  # kept for the provider's callback, which the recovery awaits
                name = token_id(ticket.token)
                self._recoveries[exc] = self._recovery(request, body, name, ticket)
            elif ticket is not None:
                ticket.book.drop(ticket)
            accepted = attempt.task_id
            if accepted is not None:
                # Accepted, then something failed on our side: the task is billed, so its id
                # is kept (in the key, and in the log) rather than dropped with the error.
                logger.warning(
                    "submitted %s as task %s, then failed (%s)",
                    request.describe(),
                    accepted,
                    type(exc).__name__,
                )
                if claim is not None:
                    await _record(claim, request, accepted)
            elif claim is not None:
                # Only a POST that never left or an answer read as a refusal is certain.
                uncertain = isinstance(exc, SubmitUncertainError) or attempt.in_flight
                await _settle(claim, request, uncertain=uncertain)
            raise
        span.accepted(task_id)
        if claim is not None:
            await _record(claim, request, task_id)
        logger.info("submitted %s as task %s", request.describe(), task_id)
        if ticket is None or self._tickets is None:
            return TaskHandle(self._core, task_id, request=request, submitted=True)
        # A handle waiting on a callback polls slowly, as a safety net.
        alarm = Alarm()
        poll = self._tickets.safety_poll
        handle = TaskHandle(
            self._core, task_id, request=request, submitted=True, poll=poll, alarm=alarm
        )
        ticket.bind(task_id, alarm)
        return handle

    async def _ticket(self, request: SubmitRequest, claim: Claim | None) -> Ticket | None:
        """A callback ticket for ``request`` (its key's link in a shared store), or ``None``."""
        tickets = self._tickets
        if tickets is None or request.callback_url is not None:
            return None  # no receiver, or the request's own URL wins
        link = None
        if claim is not None and tickets.relay is not None:
            link = link_id(self._store.namespace, request.key or "")
        return await tickets.issue(link)

    def _recovery(
        self,
        request: SubmitRequest,
        body: dict[str, Any],
        name: str,
        ticket: Ticket | None,
    ) -> Recovery:
        """The recovery of a lost answer by its token's callback (see ``_recovery``)."""
        tickets = self._tickets
        assert tickets is not None  # noqa: S101 - only a submission with a receiver has one
        return Recovery(
            self._core,
            request,
            body,
            token_name=name,
            ticket=ticket,
            relay=tickets.relay,
            poll=tickets.safety_poll,
            keys=self._store,
            key=request.key,
        )


async def _record(claim: Claim, request: SubmitRequest, task_id: str) -> None:
    """Record key -> task id; a failure is logged with both, never raised (it is billed).

    A cancellation while recording is logged the same way, then goes on.
    """
    problem = ""
    try:
        if not await claim.accepted(task_id):
            problem = "the key was forgotten or taken over meanwhile"
    except StoreError as exc:
        problem = str(exc)
    except BaseException as exc:
        problem = type(exc).__name__
        if not isinstance(exc, Exception):
            raise
    finally:
        if problem:
            logger.warning(
                "submitted %s as task %s, but the store did not record it (%s); the key will "
                "be uncertain there: never sent again",
                request.describe(),
                task_id,
                problem,
            )


async def _settle(claim: Claim, request: SubmitRequest, *, uncertain: bool) -> None:
    """Settle the claim of a submission that failed (best effort).

    If settling fails, the claim is left as it is: a key marked sending then turns
    uncertain when its lease ends (never sent again), one never sent is released.
    """
    try:
        await (claim.uncertain() if uncertain else claim.refused())
    except Exception as exc:  # best effort: the caller's own error is the one raised
        logger.warning(
            "could not settle the key of %s in the store (%s)",
            request.describe(),
            exc if isinstance(exc, StoreError) else type(exc).__name__,
        )


class _Attempt:
    """One submission's attempts: each takes a slot, tells the hooks, POSTs and classifies."""

    def __init__(  # noqa: PLR0917 - internal, built in one place
        self,
        core: SessionCore,
        limiter: Limiter | None,
        path: str,
        body: dict[str, Any],
        request: SubmitRequest,
        hooks: SubmitHooks | None,
        claim: Claim | None,
        span: telemetry.Submission,
    ) -> None:
        self._core = core
        self._limiter = limiter  # slowed down after a 429
        # A claim that takes its slot with it (in the store's window, which the session's
        # store limiter also uses) replaces the limiter's slot.
        self._slots = None if claim is not None and claim.takes_slot else limiter
        self._path = path
        self._body = body
        self._request = request
        self._hooks = hooks
        self._claim = claim
        # A POST may have left and no answer has positively refused it: whatever stops the
        # submission now (a cancellation, a bug, an answer we cannot read) leaves it uncertain.
        self.in_flight = False
        # The task id of the accepted POST (set once, just before the attempt returns it).
        self.task_id: str | None = None
        # This attempt is the session's outage probe (see _outage.OutageWatch.admit).
        self._probe = False
        self._span = span  # told of each POST sent

    async def retrying(self, exc: BaseException, wait: float) -> None:
        """A certainly refused attempt (``exc``) is retried after ``wait`` seconds."""
        if is_outage(exc):
            wait = self._core.outage.next_in()  # the outage's schedule, not tenacity's
        if self._claim is not None:
            await self._claim.retrying()  # a StoreError here ends the submission, unsent
        hooks = self._hooks
        if isinstance(exc, RateLimitError):
            if self._limiter is not None:
                try:
                    await self._limiter.slow_down(wait)
                except StoreError as error:  # the next claim or slot fails closed anyway
                    logger.warning("could not slow the shared limiter down: %s", error)
            if hooks is not None:
                hooks.waiting(wait, exc)
        if hooks is not None:
            hooks.retrying(exc, wait)

    async def __call__(self) -> str:
        """One attempt: its turn in an outage, then :meth:`_attempt`."""
        outage = self._core.outage
        if not outage.active:
            return await self._attempt()
        # Waits before any slot or claim: nothing is held while the outage lasts.
        self._probe = await outage.admit()
        try:
            return await self._attempt()
        finally:
            outage.release(self._probe)  # a probe that got no answer lets the next one go
            self._probe = False

    async def _attempt(self) -> str:
        """One attempt: a limiter slot, the claim marked sending, the hooks told, the POST."""
        self._core.check_open()
        hooks = self._hooks

        def on_wait(seconds: float, error: RateLimitError | None = None) -> None:
            telemetry.limiter_waited(seconds)
            if hooks is not None:
                hooks.waiting(seconds, error)

        slots = self._slots
        slotted: AbstractAsyncContextManager[Slot | None] = (
            slots.slot(on_wait) if slots is not None else contextlib.nullcontext()
        )
        async with slotted as slot:
            if self._claim is not None:
                await self._claim.before_post(on_wait)
            if hooks is not None:
                try:
                    hooks.before_post()
                except Exception:
                    if slot is not None:
                        slot.refund()  # held back by the caller: nothing was sent
                    raise
            try:
                task_id = await self._post()
            except Exception as exc:
                if slot is not None and is_unaccepted(exc):
                    # 429, 455 or never sent: the provider accepted nothing, so nothing of
                    # its budget is used (an uncertain answer keeps its slot).
                    slot.refund()
                if hooks is not None:
                    hooks.after_post()  # answered, or certainly lost: no longer in flight
                raise
            if hooks is not None:
                hooks.after_post()
            return task_id

    async def _pause(self, seconds: float) -> None:
        """Pause the account's submissions (every process's, with a store) for ``seconds``."""
        if self._limiter is None:
            return
        try:
            await self._limiter.pause(seconds)
        except StoreError as error:  # best effort: this submission's own error is raised
            logger.warning("could not pause the shared submission window: %s", error)

    async def _post(self) -> str:
        # open() raises SessionClosedError if the session closed (the limiter may have kept
        # this waiting while it did).
        transport = self._core.open()
        self.in_flight = True
        self._span.attempt()
        try:
            data = await transport.call("POST", self._path, json_body=self._body)
            task_id = structure_task_id(data)
        except Exception as exc:
            outage = self._core.outage
            if is_outage(exc):
                scheduled = self._probe or not outage.active
                outage.failed(exc, probe=self._probe)
                self._probe = False
                if scheduled:  # the outage began, or its probe failed: the next try is set
                    await self._pause(outage.next_in())
            else:
                outage.answered()  # any other answer: the provider is there again
                if isinstance(exc, ACCOUNT_STOPPING):
                    await self._pause(self._core.retry.outage_probe_max)
            reason = uncertainty(exc)
            if reason is not None:
                raise SubmitUncertainError(self._request, reason) from exc
            self.in_flight = False  # certainly refused
            raise
        # A BaseException (a cancellation) leaves in_flight set: the submission is uncertain.
        self.in_flight = False
        self.task_id = task_id
        self._core.outage.answered()
        return task_id


def uncertainty(exc: BaseException) -> str | None:
    """Why a POST that failed with ``exc`` may have been accepted; ``None`` if it was not.

    ``None`` only for an answer positively read as a refusal (an envelope or HTTP status
    that refuses, a 500 aside) or a request that never left. Anything else that goes wrong
    once the request may have left (a 500, an answer that is not a valid envelope, a
    connection lost, and any other exception: a ``RecursionError``, a ``MemoryError``, a bug)
    may hide an accepted, billed task.
    """
    if isinstance(exc, ServerError):
        return f"the provider answered {exc}"
    if isinstance(exc, APIError):
        return None
    if isinstance(exc, TransportError):
        return str(exc) if exc.sent else None
    if isinstance(exc, ProtocolError):
        return str(exc)
    # Not a midvary error: its text may quote the answer, so only its type is told.
    return f"the answer could not be read ({type(exc).__name__})"
