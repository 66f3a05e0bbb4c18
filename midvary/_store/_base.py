"""The store interface: what a submission asks of a shared store, whatever backs it.

A store keeps two things per *namespace* (one account, see :func:`account_namespace`):

- **Keys**: a submission key's claim, the request it was claimed for (JSON), its state and,
  once accepted, its task id. The states, and who moves a key between them::

      (none) --claim--> claimed --mark_sending--> sending --record_task--> submitted -> done
                         |  ^  ^                      |  |
                         |  |  '------unsend----------'  '--mark_uncertain--> uncertain
                         |  '--(lease expired before sending: the next claim takes it over)
                         '--release (certain refusal, nothing accepted) --> (none)
      sending whose holder stopped renewing --(next claim)--> uncertain (never re-sent)
      done: only the fingerprint, the task id and the expiry are kept (no request)
      forget(key) --> (none), from any state: the one way to re-send an uncertain key

- **The account's submission window** (the fleet-wide limiter): slots in flight (each with a
  lease, so a dead process's slot expires) and stamps of answered POSTs, an allowance that a
  429 halves and each quiet window grows back by one, and a pause.

Every time a store uses is its own clock (the Redis server's ``TIME``; the host's wall clock
for SQLite, whose processes share one host), so the hosts' clock skew does not matter.

- **Callback tokens** (a :class:`~midvary.CallbackReceiver` given ``store=``): each token
  (by its hash: the store never holds a usable token) and the task it was bound to, with an
  expiry, and a channel of *wake-ups*: a replica that accepted a delivery publishes the token,
  and the process whose handle waits on it polls once. Tokens live in their own *scope* (not
  an account namespace: a receiver knows no API key). :class:`RedisStore` shares them across
  machines, :class:`MemoryStore` within one process; :class:`SQLiteStore` has no channel
  between processes and refuses them (``shares_callbacks`` is false).

Backends live in private modules (``_memory``, ``_sqlite``, ``_redis``) and pass one
contract test suite.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final, Literal, NoReturn, Self, cast, get_args

import attrs

from .._errors import KeyConflictError, StoreError

#: How long a key is kept: 15 days, the provider's retention of tasks.
DEFAULT_KEY_TTL: Final = 15 * 24 * 3600.0
#: Seconds a claim lives without renewal (renewed every third of it while its submission
#: runs): how long a key whose submitter died blocks the others before it is taken over
#: (never sent) or called uncertain (it was sending).
DEFAULT_CLAIM_LEASE: Final = 30.0

#: A key's state as :meth:`Store.unfinished` reports it.
KeyStateName = Literal["claimed", "sending", "submitted", "uncertain", "done"]

_NAMESPACE_LABEL: Final = b"midvary account namespace v1"


def account_namespace(api_key: str) -> str:
    """Return the store namespace of the account that owns ``api_key``.

    It is a keyed hash (HMAC-SHA256 under a fixed midvary label, 32 hex digits): the same
    key gives the same namespace in every process, and nothing of the key can be read back
    from it.
    """
    if not isinstance(api_key, str) or not api_key:
        raise ValueError("api_key must be a non-empty string")
    digest = hmac.new(_NAMESPACE_LABEL, api_key.encode(), hashlib.sha256).hexdigest()
    return digest[:32]


def check_namespace(namespace: object) -> str:
    """Validate a ``namespace=`` setting: a non-empty string without whitespace or braces."""
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
    if any(c.isspace() or c in "{}*?[]\\" for c in namespace) or len(namespace) > 200:
        raise ValueError(
            "namespace must be at most 200 characters without whitespace, braces or glob "
            f"characters (*?[]\\), got {namespace!r}"
        )
    return namespace


class RequestJSON(str):
    """A request already in :func:`dump_request`'s canonical JSON (not dumped again)."""

    __slots__ = ()


#: The canonical JSON of stored requests: sorted keys, no spaces, no NaN.
_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(data: object) -> str:
    """``data`` (JSON data) as canonical JSON: what keys compare and stores keep.

    Raises:
        TypeError, ValueError: ``data`` is not JSON data (or holds NaN or infinity).

    """
    return _CANONICAL.encode(data)


def dump_request(request: object) -> str:
    """The canonical JSON of a request (a JSON-able dict, built by the caller's converter).

    A :class:`RequestJSON` is that JSON already, and is returned as a plain string.
    """
    if type(request) is RequestJSON:
        return str.__str__(request)
    try:
        return canonical_json(request)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a stored request must be JSON-serialisable, got {request!r}") from exc


class ClaimState(enum.Enum):
    """What :meth:`Store.claim` found; see :class:`Claim`."""

    #: The caller owns the key and must send it (or release / mark it uncertain).
    CLAIMED = "claimed"
    #: Already submitted: re-attach to ``Claim.task_id``, send nothing.
    KNOWN = "known"
    #: Held by a live submitter: poll again after ``Claim.retry_after`` seconds.
    BUSY = "busy"
    #: Sent and its answer lost (or its sender died sending): never re-sent.
    UNCERTAIN = "uncertain"


@attrs.frozen(kw_only=True)
class Claim:
    """The outcome of :meth:`Store.claim`.

    Attributes:
        state: See :class:`ClaimState`.
        task_id: The task id when ``state`` is KNOWN (a ``done`` key too), else ``None``.
        retry_after: For BUSY, seconds until the holder's lease ends (poll then, or
            sooner); ``None`` otherwise.
        slot_wait: Only when a :class:`SlotRequest` was given and the key was CLAIMED:
            ``0.0`` means the slot is taken and the key is marked sending (POST now);
            more means wait that many seconds, then call :meth:`Store.mark_sending`.
            ``None`` when no slot was asked for or the key was not claimed.

    """

    state: ClaimState
    task_id: str | None = None
    retry_after: float | None = None
    slot_wait: float | None = None

    @property
    def sending(self) -> bool:
        """Whether the key is now marked sending with a slot taken: the caller POSTs now."""
        return self.state is ClaimState.CLAIMED and self.slot_wait == 0.0


@attrs.frozen(kw_only=True)
class SlotRequest:
    """A limiter slot to take together with a claim or :meth:`Store.mark_sending`.

    Attributes:
        slot_id: Unique id of this POST's slot (end it with the same id).
        rate: ``(count, window_seconds)`` of the account, or ``None`` for no limit (the
            key is then marked sending at once).
        lease_s: Seconds the slot counts as in flight if its owner never ends it (it then
            becomes a stamp at its lease's end). Longer than the POST's timeout.

    """

    slot_id: str
    rate: tuple[int, float] | None
    lease_s: float = 120.0


@attrs.frozen(kw_only=True)
class StoredJob:
    """One key in a store, as :meth:`SQLiteStore.unfinished` (any store) lists it.

    Attributes:
        key: The submission key.
        namespace: The account namespace it belongs to.
        request: The request it was claimed for, as JSON data (a dict for vary requests).
        task_id: The provider's task id once the submission was accepted, else ``None``.
        state: ``"claimed"`` (not sent yet), ``"sending"`` (a POST in flight),
            ``"submitted"`` (accepted: ``task_id`` is set), ``"uncertain"`` (sent, answer
            lost: forget the key to allow a re-send) or ``"done"``.

    """

    key: str
    namespace: str
    request: Any
    task_id: str | None
    state: KeyStateName


@attrs.frozen(kw_only=True)
class TokenRecord:
    """A callback token as a store holds it (see :meth:`Store.get_token`).

    Attributes:
        task_id: The task the token was bound to, or ``None`` while its submission has not
            been answered yet.
        reported: The task a checked delivery to a still unbound token named (see
            :meth:`Store.report_token`: a claim to confirm with one GET, never trusted on its
            own), or ``None``.

    """

    task_id: str | None
    reported: str | None = None


def key_state(value: object, where: str) -> KeyStateName:
    """``value`` as a key's state; a ``where`` store that holds anything else is corrupt."""
    if value not in get_args(KeyStateName):
        raise StoreError(f"the {where} store is corrupt: a key has the state {value!r}")
    return cast(KeyStateName, value)


def store_error(what: str, exc: BaseException) -> StoreError:
    """A StoreError for a failed operation, naming the cause's type and message."""
    detail = str(exc) or type(exc).__name__
    return StoreError(f"{what}: {type(exc).__name__}: {detail}")


def lost_data_error(namespace: str) -> StoreError:
    """The StoreError raised when a store no longer has the data this process saw in it."""
    return StoreError(
        f"the store lost its data for namespace {namespace!r} (its marker is missing or "
        "changed: restarted without persistence, flushed or replaced); submissions stop so "
        "that no forgotten key is sent twice. Run Redis with persistence (appendonly yes)."
    )


def lost_claim(key: str) -> StoreError:
    """The StoreError for a holder whose claim was taken over (its lease expired)."""
    return StoreError(
        f"the claim on key {key!r} was lost (its lease expired and another submission took "
        "it over); this submission sends nothing"
    )


def no_callbacks(store: object) -> NoReturn:
    """Raise the NotImplementedError of a store that cannot share callback tokens."""
    raise NotImplementedError(
        f"{type(store).__name__} cannot share callback tokens between processes (it has no "
        "channel to wake another process): use a RedisStore, or a MemoryStore in one process"
    )


def new_epoch() -> str:
    """A fresh namespace marker."""
    return secrets.token_hex(8)


def conflict(key: str, stored_request: str) -> KeyConflictError:
    """The KeyConflictError for ``key``, quoting (a prefix of) the stored request."""
    if not stored_request:
        return KeyConflictError(key, "stored request: not kept once its task was done")
    shown = stored_request if len(stored_request) <= 200 else stored_request[:200] + "..."
    return KeyConflictError(key, f"stored request: {shown}")


class KeyStore(abc.ABC):
    """Submission keys: a claim per key, its state and, once accepted, its task id.

    Every method raises :class:`~midvary.StoreError` when the store is unreachable, lost
    its data or is corrupt. Times are seconds of the store's own clock. ``holder`` is a
    unique id of one submission attempt (a fresh id each time): a claim is only moved on by
    the holder that made it. A ``slot`` (:class:`SlotRequest`) is a place in the store's
    :class:`SubmitWindow`, taken in the same atomic step as the key's move to sending.
    """

    #: The namespace every session on this store uses, or ``None``: one per API key.
    namespace: str | None = None
    #: Seconds a key is kept (default 15 days, the provider's retention).
    key_ttl: float = DEFAULT_KEY_TTL
    #: Seconds a session's claim on a key lives without renewal (see DEFAULT_CLAIM_LEASE).
    claim_lease: float = DEFAULT_CLAIM_LEASE

    @abc.abstractmethod
    async def claim(
        self,
        namespace: str,
        key: str,
        *,
        fingerprint: str,
        request: object,
        holder: str,
        lease_s: float,
        slot: SlotRequest | None = None,
    ) -> Claim:
        """Claim ``key`` atomically for ``holder`` for ``lease_s`` seconds, recording ``request``.

        A key held by a holder whose lease expired before it marked the key sending is
        taken over (nothing was sent). One whose holder was sending and stopped renewing
        becomes uncertain. With ``slot``, a CLAIMED key also tries to take a limiter slot
        and, when it gets one, is marked sending in the same atomic step.

        Raises:
            KeyConflictError: ``key`` is stored with another ``fingerprint``.

        """

    @abc.abstractmethod
    async def mark_sending(
        self, namespace: str, key: str, *, holder: str, lease_s: float, slot: SlotRequest | None
    ) -> float:
        """Take a limiter slot (with ``slot``) and mark the key sending; renews the lease.

        Returns:
            ``0.0`` when the key is now marked sending (POST now), else the seconds to wait
            before calling again (the lease is renewed meanwhile).

        Raises:
            StoreError: ``holder`` no longer holds the key (its lease expired and another
                submission took it over): do not send.

        """

    @abc.abstractmethod
    async def renew(self, namespace: str, key: str, *, holder: str, lease_s: float) -> bool:
        """Extend the holder's lease by ``lease_s`` seconds; ``False`` if it lost the key."""

    @abc.abstractmethod
    async def record_task(
        self, namespace: str, key: str, *, holder: str, task_id: str, slot_id: str | None = None
    ) -> bool:
        """Record the accepted task id (and end ``slot_id``'s slot, stamped now).

        The key then lives ``key_ttl`` seconds from now. Also accepted for a key that
        became uncertain meanwhile. ``False`` when the key was forgotten or taken over.
        """

    @abc.abstractmethod
    async def release(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """Drop the claim after a certain refusal (and refund ``slot_id``'s slot).

        A later submission of the key sends again. ``False`` if ``holder`` did not hold it.
        """

    @abc.abstractmethod
    async def unsend(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """Back from sending to claimed: the POST was certainly refused and will be retried.

        Refunds ``slot_id``'s slot. Used while waiting out a 429 or 455 so that, should the
        process die in that wait, the next claim takes the key over instead of calling it
        uncertain. ``False`` if ``holder`` did not hold it.
        """

    @abc.abstractmethod
    async def mark_uncertain(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """Mark the key uncertain: sent, answer lost (``slot_id``'s slot keeps its stamp)."""

    @abc.abstractmethod
    async def mark_done(self, namespace: str, key: str, *, task_id: str) -> bool:
        """Mark a submitted key's task final, so :meth:`unfinished` leaves it out."""

    @abc.abstractmethod
    async def unfinished(self, *, namespace: str | None = None) -> list[StoredJob]:
        """Every key that is not done: claimed, sending, submitted or uncertain.

        Args:
            namespace: One namespace; ``None`` means the store's ``namespace=`` if it has
                one, else every namespace in the store.

        """

    @abc.abstractmethod
    async def forget(self, key: str, *, namespace: str | None = None) -> bool:
        """Delete ``key``: the one way to allow a re-send of an uncertain key.

        Args:
            key: The submission key.
            namespace: As for :meth:`unfinished` (``None``: the store's, else every one).

        Returns:
            Whether the key was in the store.

        """


class SubmitWindow(abc.ABC):
    """The account's submission window, shared by every process on the store.

    The store's twin of the in-process limiter's rule (``_ratelimit.Window``): slots in
    flight with a lease, stamps of answered POSTs, an allowance that a 429 halves and each
    quiet window grows back by one, and a pause. Seconds of the store's own clock.
    """

    @abc.abstractmethod
    async def acquire_slot(
        self, namespace: str, *, rate: tuple[int, float], slot_id: str, lease_s: float
    ) -> float:
        """Take a slot in the window if one is free (idempotent per ``slot_id``).

        Returns:
            ``0.0`` when taken, else the seconds to wait before trying again.

        """

    @abc.abstractmethod
    async def end_slot(self, namespace: str, slot_id: str, *, refunded: bool) -> float | None:
        """End a slot: stamped now, or removed when ``refunded`` (certainly not accepted).

        Returns:
            The stamp (store clock, seconds), or ``None`` when refunded.

        """

    @abc.abstractmethod
    async def slow_down(self, namespace: str, *, rate: tuple[int, float], pause_s: float) -> int:
        """A 429 got through: halve the shared allowance, pause everyone ``pause_s`` seconds.

        429s during a pause extend it without halving again. Returns the new allowance.
        """

    @abc.abstractmethod
    async def pause(self, namespace: str, *, pause_s: float) -> float:
        """No new slot for anyone for ``pause_s`` seconds; the allowance stays.

        An account refusal (401, 402, 505) or an outage (455, no connection) seen by one
        process pauses every process's submissions on the account. Returns the seconds left
        of the pause (a longer one already in effect is kept).
        """

    @abc.abstractmethod
    async def allowance(self, namespace: str, *, rate: tuple[int, float]) -> int:
        """Submissions currently allowed per window (``rate``'s count unless slowed down)."""


class TokenStore(abc.ABC):
    """Callback tokens (by their hash) and a channel of wake-ups between processes.

    Stores that have one (Redis: across machines; memory: within one process) are this as
    well as a :class:`Store`; a :class:`~midvary.CallbackReceiver` given ``store=`` needs it.
    """

    #: The scope of the tokens when set (else the receiver's default scope).
    namespace: str | None = None

    @abc.abstractmethod
    async def add_token(
        self, scope: str, token_id: str, *, ttl_s: float, link_id: str | None = None
    ) -> None:
        """Record a new, unbound token (by its hash ``token_id``) for ``ttl_s`` seconds.

        With ``link_id`` (the hash of a submission key, see :meth:`linked_token`), the
        token is also findable from that key for as long: a later run of a key whose answer
        was lost finds the delivery the provider made for it.
        """

    @abc.abstractmethod
    async def bind_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """Bind a recorded token to its task, keeping its expiry; ``False`` if it is gone."""

    @abc.abstractmethod
    async def get_token(self, scope: str, token_id: str) -> TokenRecord | None:
        """The token's record, or ``None`` when it is unknown or expired."""

    @abc.abstractmethod
    async def report_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """A checked delivery to the still unbound token named ``task_id``: keep that claim.

        Kept as the record's ``reported`` until the token expires (the submission's answer
        was lost: whoever waits for it confirms the claim with one GET). ``False`` if the
        token is gone.
        """

    @abc.abstractmethod
    async def linked_token(self, scope: str, link_id: str) -> str | None:
        """The token id recorded with ``link_id`` (see :meth:`add_token`), or ``None``."""

    @abc.abstractmethod
    async def settle_token(self, scope: str, token_id: str, *, grace_s: float) -> None:
        """A delivery was accepted: the token expires within ``grace_s`` seconds (or sooner)."""

    @abc.abstractmethod
    async def publish_wake(self, scope: str, token: str) -> None:
        """Tell every process listening on ``scope`` that ``token``'s task may be final."""

    @abc.abstractmethod
    def wakes(self, scope: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]]:
        """Listen to ``scope``'s wake-ups: entering subscribes (done once it returns).

        Iterate what it yields for each published token. A connection lost while listening
        raises :class:`~midvary.StoreError` from the iteration; wake-ups meanwhile are lost
        (the handles' safety polls find those tasks).
        """


class Store(KeyStore, SubmitWindow):
    """A shared store: submission keys and the account's submission window.

    What ``Session(store=...)`` takes: a :class:`~midvary.SQLiteStore` (processes on one
    machine) or a :class:`~midvary.RedisStore` (many machines). Open it (``async with
    store``) before use; a session never closes a store it was given. Its parts are
    :class:`KeyStore` (keys) and :class:`SubmitWindow` (the shared window); a store that also
    carries callback tokens is a :class:`TokenStore` too.
    """

    #: Whether other processes see this store's keys and window (``False``: one process's
    #: memory, which ``Session(store=...)`` refuses: a session dedupes within itself anyway).
    cross_process: ClassVar[bool] = True

    @property
    def shares_callbacks(self) -> bool:
        """Whether the store keeps callback tokens and carries wake-ups (a TokenStore)."""
        return isinstance(self, TokenStore)

    def namespace_for(self, api_key: str) -> str:
        """The namespace a session with ``api_key`` uses: ``namespace=`` or the key's hash."""
        return self.namespace if self.namespace is not None else account_namespace(api_key)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the store's connections (idempotent); ``async with store`` calls it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close what :meth:`open` opened (idempotent). A borrowed client stays open."""
