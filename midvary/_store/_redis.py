"""RedisStore: keys and the account's submission window shared by many machines.

Every operation is one call of one Lua script (``_lua.py``), atomic on the server and timed
by the server's ``TIME``, so the hosts' clocks never matter. redis-py (``redis.asyncio``) is
an optional dependency (``pip install 'midvary[redis]'``), imported when a store is made.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, ClassVar, Final, cast

from .._errors import StoreError
from ._base import (
    DEFAULT_CLAIM_LEASE,
    DEFAULT_KEY_TTL,
    Claim,
    ClaimState,
    KeyStateName,
    SlotRequest,
    Store,
    StoredJob,
    TokenRecord,
    check_namespace,
    check_seconds,
    conflict,
    dump_request,
    lost_claim,
    lost_data_error,
    new_epoch,
)
from ._lua import SCRIPT
from ._redis_pipe import ScriptPipe, bulk
from ._redis_tokens import RedisTokens

if TYPE_CHECKING:
    import redis.asyncio

_PREFIX = "midvary:{"
_EMPTY: Final = bulk(b"")
_REFUNDED: Final = bulk(b"1")
#: ARGV 8-10 of a call without a slot: no count, no window, no slot lease.
_NO_RATE: Final = _EMPTY + _EMPTY + bulk(b"0.0")
#: ARGV 11-13 of a call that sends none of them.
_NO_EXTRA: Final = _EMPTY * 3
#: ARGV 11-12 of a call that sends neither.
_NO_FINGERPRINT: Final = _EMPTY * 2
#: The script's operations (ARGV 1), packed.
_OPS: Final = {
    op: bulk(op.encode())
    for op in (
        "claim", "send", "renew", "task", "release", "unsend", "uncertain", "done",
        "acquire", "end", "slow", "allowance",
    )
}  # fmt: skip
#: The most packed leases or rates kept (a session uses one of each; more start over).
_CACHED: Final = 64
_STATES: frozenset[str] = frozenset({"claimed", "sending", "submitted", "uncertain", "done"})


def redact_url(url: str) -> str:
    """``url`` with its password (and user name) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None and parts.username is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))
    except ValueError:
        return "<a Redis URL that could not be parsed>"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _extra(fingerprint: str = "", request: str = "", task_id: str = "") -> bytes:
    """ARGV 11-13 packed: fingerprint (or pause, s), request JSON, task id."""
    return bulk(fingerprint.encode()) + bulk(request.encode()) + bulk(task_id.encode())


def _slot_rate(slot: SlotRequest) -> bytes:
    """ARGV 8-10 packed: ``slot``'s count and window ('' = no limit), and its lease (s)."""
    count, window = slot.rate if slot.rate is not None else ("", "")
    return b"".join(bulk(str(part).encode()) for part in (count, window, slot.lease_s))


class _Space:
    """One namespace's constant parts of every script call, packed once (``_call``)."""

    __slots__ = ("_markers", "after_key", "before_key", "epoch", "key_prefix")

    def __init__(self, names: list[str]) -> None:
        epoch, record, *window = names  # KEYS 1-5: marker, the key's hash, window, stamps, flight
        self.before_key = bulk(epoch.encode())
        self.key_prefix = record.encode()  # the key's hash is this, then the key
        self.after_key = b"".join(bulk(name.encode()) for name in window)
        self.epoch = b""  # the namespace's marker, once a call has seen it
        self._markers = b""

    def markers(self) -> bytes:
        """ARGV 2-3 packed: the marker expected, and a fresh one if none is known yet."""
        return self._markers or _EMPTY + bulk(new_epoch().encode())

    def learn(self, epoch: bytes) -> None:
        """A call saw the namespace's marker ``epoch``."""
        self.epoch = epoch
        self._markers = bulk(epoch) + _EMPTY


class RedisStore(Store):
    """A store on a Redis (or Valkey) server, shared by every process on every machine.

    Run the server with persistence (``appendonly yes``): a server that loses its data is
    detected by the processes that used it (their submissions stop with
    :class:`~midvary.StoreError`), but keys it forgot could be sent again by a process
    started afterwards.

    Args:
        url_or_client: A ``redis://`` / ``rediss://`` / ``unix://`` URL (its password never
            appears in a repr, log line or error), or an existing ``redis.asyncio.Redis``
            client, which the store uses and never closes.
        namespace: The namespace every session on this store uses; ``None`` means one per
            API key (a keyed hash of it: the key itself is never written).
        key_ttl: Seconds a key is kept (default 15 days, the provider's retention).
        claim_lease: Seconds a session's claim on a key lives without renewal (default 30;
            renewed every third of it): how long a key whose submitter died blocks the
            others before it is taken over (never sent) or called uncertain (sending).
        socket_timeout: Seconds to wait for the server on a connection made from a URL
            (connecting, each answer, and a free connection; for the pipelined script
            calls, each batch from its write to its last answer); ``None`` waits forever.
            A borrowed client's own ``socket_timeout`` applies to it instead.
        max_connections: The most connections a store made from a URL opens for its
            other commands (more at once wait for a free one); the claims' script calls
            share one more connection of their own, pipelined.

    """

    shares_callbacks: ClassVar[bool] = True

    def __init__(
        self,
        url_or_client: str | redis.asyncio.Redis,
        *,
        namespace: str | None = None,
        key_ttl: float = DEFAULT_KEY_TTL,
        socket_timeout: float | None = 10.0,
        claim_lease: float = DEFAULT_CLAIM_LEASE,
        max_connections: int = 32,
    ) -> None:
        try:
            import redis.asyncio  # noqa: PLC0415 - an optional dependency
            import redis.exceptions  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError("RedisStore needs redis-py: pip install 'midvary[redis]'") from exc
        self.namespace = check_namespace(namespace) if namespace is not None else None
        self.key_ttl = check_seconds("key_ttl", key_ttl)
        self.claim_lease = check_seconds("claim_lease", claim_lease)
        if socket_timeout is not None:
            check_seconds("socket_timeout", socket_timeout)
        self._secret: str | None = None
        if isinstance(url_or_client, str):
            self._where = redact_url(url_or_client)
            self._secret = urllib.parse.urlsplit(url_or_client).password
            self._url: str | None = url_or_client
            self._client: redis.asyncio.Redis | None = None
            self._owned = True
        elif isinstance(url_or_client, redis.asyncio.Redis):
            kwargs = url_or_client.connection_pool.connection_kwargs
            self._where = "redis {}:{}/{}".format(
                kwargs.get("host", kwargs.get("path", "?")),
                kwargs.get("port", ""),
                kwargs.get("db", 0),
            )
            self._secret = kwargs.get("password")
            self._url = None
            self._client = url_or_client
            self._owned = False
        else:
            raise TypeError(
                "RedisStore takes a redis:// URL or a redis.asyncio.Redis client, got "
                f"{type(url_or_client).__name__}"
            )
        self._socket_timeout = socket_timeout
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, not {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._max_connections = max_connections
        self._script: ScriptPipe | None = None
        # The packed constant parts of the script's calls (``_call``).
        self._spaces: dict[str, _Space] = {}
        self._packed_times: dict[tuple[float, float], bytes] = {}
        self._rates: dict[tuple[tuple[int, float] | None, float], bytes] = {}
        self._failures: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._tokens = RedisTokens(self._open_client, self._error)

    def __repr__(self) -> str:
        return f"<RedisStore {self._where}>"

    def _error(self, what: str, exc: BaseException) -> StoreError:
        detail = f"{type(exc).__name__}: {exc}"
        if self._secret:
            detail = detail.replace(self._secret, "***")
        return StoreError(f"{what} failed on {self._where}: {detail}")

    async def open(self) -> None:
        """Connect (from a URL) and check the server answers; idempotent."""
        import redis.asyncio  # noqa: PLC0415 - an optional dependency
        import redis.exceptions  # noqa: PLC0415
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import ExponentialBackoff  # noqa: PLC0415

        if self._script is not None:
            return
        if self._client is None:
            assert self._url is not None  # noqa: S101 - set when no client was given
            try:
                # A blocking pool: submissions beyond max_connections wait for a free
                # connection (redis-py's default pool raises "Too many connections").
                # (Untyped in redis-py 5, which arq pins; typed from 6 on.)
                pool = redis.asyncio.BlockingConnectionPool.from_url(  # type: ignore[no-untyped-call,unused-ignore]
                    self._url,
                    max_connections=self._max_connections,
                    timeout=self._socket_timeout,
                    socket_timeout=self._socket_timeout,
                    socket_connect_timeout=self._socket_timeout,
                    # A connection the server closed (a restart) is retried on a new one,
                    # briefly: every operation is idempotent for its holder and slot id.
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
                    retry_on_error=[
                        redis.exceptions.ConnectionError,
                        redis.exceptions.TimeoutError,
                    ],
                )
                self._client = redis.asyncio.Redis.from_pool(pool)
            except ValueError:
                raise StoreError(
                    f"not a Redis URL: {self._where} (use redis://, rediss:// or unix://)"
                ) from None
        try:
            await self._client.ping()
            await self._client.script_load(SCRIPT)
        except (redis.exceptions.RedisError, OSError) as exc:
            if self._owned:
                client, self._client = self._client, None
                await client.aclose()
            raise self._error("connecting to the store", exc) from exc
        # The script's calls go on a connection of their own, pipelined (``_redis_pipe``).
        self._script = ScriptPipe(self._client, SCRIPT, keys=5, args=14)

    async def close(self) -> None:
        """Close the connections it made (and the script's); a borrowed client stays open."""
        script, self._script = self._script, None
        if script is not None:
            await script.close()
        if self._owned and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _open_client(self, what: str) -> redis.asyncio.Redis:
        if self._client is None or self._script is None:
            raise StoreError(f"{what}: the Redis store is not open (use `async with store`)")
        return self._client

    def _keys(self, namespace: str, key: str = "") -> list[str]:
        base = f"{_PREFIX}{namespace}}}:"
        return [base + "epoch", base + "k:" + key, base + "win", base + "stamps", base + "flight"]

    def _space(self, namespace: str) -> _Space:
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = _Space(self._keys(namespace))
        return space

    def _times(self, lease_s: float) -> bytes:
        """ARGV 5-6 packed: the claim's lease (s) and the key's ttl (ms), kept for next time."""
        if len(self._packed_times) >= _CACHED:
            self._packed_times.clear()
        packed = bulk(str(lease_s).encode()) + bulk(b"%d" % int(self.key_ttl * 1000))
        self._packed_times[lease_s, self.key_ttl] = packed
        return packed

    def _rate(self, slot: SlotRequest) -> bytes:
        """ARGV 8-10 packed for ``slot`` (:func:`_slot_rate`), kept for next time."""
        if len(self._rates) >= _CACHED:
            self._rates.clear()
        packed = self._rates[slot.rate, slot.lease_s] = _slot_rate(slot)
        return packed

    async def _call(
        self,
        what: str,
        op: bytes,
        namespace: str,
        key: str = "",
        *,
        holder: str = "",
        lease_s: float = 0.0,
        slot: SlotRequest | None = None,
        slot_id: str | None = None,
        extra: bytes = _NO_EXTRA,
        refunded: bool = False,
    ) -> tuple[bytes, bytes]:
        """Run the script's ``op``; return (status, value) after checking the marker.

        ``what`` names the operation in an error (``{key!r}`` in it is the key); ``op`` is a
        row of ``_OPS``; ``extra`` is ARGV 11-13 packed (:func:`_extra`).
        """
        script = self._script
        if script is None:
            raise StoreError(
                f"{what.format(key=key)}: the Redis store is not open (use `async with store`)"
            )
        space = self._spaces.get(namespace) or self._space(namespace)
        if slot is not None:
            slot_id = slot.slot_id
            rate = self._rates.get((slot.rate, slot.lease_s)) or self._rate(slot)
        else:
            rate = _NO_RATE
        command = b"".join((
            space.before_key,
            bulk(space.key_prefix + key.encode()),
            space.after_key,
            op,
            space.markers(),
            bulk(holder.encode()),
            self._packed_times.get((lease_s, self.key_ttl)) or self._times(lease_s),
            bulk(slot_id.encode()) if slot_id else _EMPTY,
            rate,
            extra,
            _REFUNDED if refunded else _EMPTY,
        ))  # fmt: skip
        try:
            status, epoch, value = await script.call(command)
        except self._failures as exc:
            raise self._error(what.format(key=key), exc) from exc
        if status == b"lost" and not value:
            raise lost_data_error(namespace)
        if epoch and epoch != space.epoch:
            space.learn(epoch)
        return status, value

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
        """See :meth:`Store.claim`."""
        request_json = dump_request(request)
        status, value = await self._call(
            "claim of key {key!r}",
            _OPS["claim"],
            namespace,
            key,
            holder=holder,
            lease_s=lease_s,
            slot=slot,
            extra=_extra(fingerprint, request_json),
        )
        if status == b"claimed":
            return Claim(state=ClaimState.CLAIMED, slot_wait=float(value) if value else None)
        if status == b"conflict":
            raise conflict(key, value.decode())
        if status == b"known":
            return Claim(state=ClaimState.KNOWN, task_id=value.decode() or None)
        if status == b"busy":
            return Claim(state=ClaimState.BUSY, retry_after=float(value))
        if status == b"uncertain":
            return Claim(state=ClaimState.UNCERTAIN)
        raise StoreError(f"the Redis store answered a claim with {status!r}")

    async def mark_sending(
        self, namespace: str, key: str, *, holder: str, lease_s: float, slot: SlotRequest | None
    ) -> float:
        """See :meth:`Store.mark_sending`."""
        status, value = await self._call(
            "marking key {key!r} sending", _OPS["send"], namespace, key,
            holder=holder, lease_s=lease_s, slot=slot,
        )  # fmt: skip
        if status == b"lost":
            raise lost_claim(key)
        return float(value)

    async def renew(self, namespace: str, key: str, *, holder: str, lease_s: float) -> bool:
        """See :meth:`Store.renew`."""
        _, value = await self._call(
            "renewal of key {key!r}", _OPS["renew"], namespace, key, holder=holder, lease_s=lease_s
        )
        return value == b"1"

    async def record_task(
        self, namespace: str, key: str, *, holder: str, task_id: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.record_task`."""
        _, value = await self._call(
            "recording the task of key {key!r}", _OPS["task"], namespace, key,
            holder=holder, slot_id=slot_id, extra=_NO_FINGERPRINT + bulk(task_id.encode()),
        )  # fmt: skip
        return value == b"1"

    async def release(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.release`."""
        _, value = await self._call(
            "release of key {key!r}",
            _OPS["release"],
            namespace,
            key,
            holder=holder,
            slot_id=slot_id,
        )
        return value == b"1"

    async def unsend(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.unsend`."""
        _, value = await self._call(
            "marking key {key!r} claimed", _OPS["unsend"], namespace, key,
            holder=holder, slot_id=slot_id,
        )  # fmt: skip
        return value == b"1"

    async def mark_uncertain(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.mark_uncertain`."""
        _, value = await self._call(
            "marking key {key!r} uncertain", _OPS["uncertain"], namespace, key,
            holder=holder, slot_id=slot_id,
        )  # fmt: skip
        return value == b"1"

    async def mark_done(self, namespace: str, key: str, *, task_id: str) -> bool:
        """See :meth:`Store.mark_done`."""
        _, value = await self._call(
            "marking key {key!r} done", _OPS["done"], namespace, key, extra=_extra(task_id=task_id)
        )
        return value == b"1"

    async def _scan(self, what: str, pattern: str) -> list[str]:
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        if self._client is None or self._script is None:
            raise StoreError(f"{what}: the Redis store is not open (use `async with store`)")
        try:
            return [_text(name) async for name in self._client.scan_iter(match=pattern)]
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc

    async def unfinished(self, *, namespace: str | None = None) -> list[StoredJob]:
        """See :meth:`Store.unfinished`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        namespace = namespace if namespace is not None else self.namespace
        what = "listing unfinished keys"
        names = await self._scan(what, f"{_PREFIX}{namespace or '*'}}}:k:*")
        assert self._client is not None  # noqa: S101 - _scan checked it
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(name)
                rows = await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc
        jobs = []
        for name, row in zip(names, rows, strict=True):
            fields = {_text(k): _text(v) for k, v in row.items()}
            state = fields.get("st")
            if state is None or state == "done":
                continue  # expired or deleted between the scan and the read
            if state not in _STATES:
                raise StoreError(f"the Redis store is corrupt: a key has the state {state!r}")
            ns, _, key = name[len(_PREFIX) :].partition("}:k:")
            jobs.append(
                StoredJob(
                    key=key,
                    namespace=ns,
                    request=json.loads(fields.get("rq", "null")),
                    task_id=fields.get("tid"),
                    state=_state(state),
                )
            )
        return sorted(jobs, key=lambda job: (job.namespace, job.key))

    async def forget(self, key: str, *, namespace: str | None = None) -> bool:
        """See :meth:`Store.forget`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        namespace = namespace if namespace is not None else self.namespace
        what = f"forgetting key {key!r}"
        if namespace is not None:
            namespaces = [namespace]
        else:
            markers = await self._scan(what, f"{_PREFIX}*}}:epoch")
            namespaces = [name[len(_PREFIX) : -len("}:epoch")] for name in markers]
        assert self._client is not None  # noqa: S101 - open checked below
        if self._script is None:
            raise StoreError(f"{what}: the Redis store is not open (use `async with store`)")
        try:
            names = [self._keys(ns, key)[1] for ns in namespaces]
            return bool(names) and int(await self._client.delete(*names)) > 0
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc

    async def acquire_slot(
        self, namespace: str, *, rate: tuple[int, float], slot_id: str, lease_s: float
    ) -> float:
        """See :meth:`Store.acquire_slot`."""
        slot = SlotRequest(slot_id=slot_id, rate=rate, lease_s=lease_s)
        _, value = await self._call(
            "taking a submission slot", _OPS["acquire"], namespace, slot=slot
        )
        return float(value)

    async def end_slot(self, namespace: str, slot_id: str, *, refunded: bool) -> float | None:
        """See :meth:`Store.end_slot`."""
        _, value = await self._call(
            "ending a submission slot", _OPS["end"], namespace, slot_id=slot_id, refunded=refunded
        )
        return float(value) if value else None

    async def slow_down(self, namespace: str, *, rate: tuple[int, float], pause_s: float) -> int:
        """See :meth:`Store.slow_down`."""
        slot = SlotRequest(slot_id="", rate=rate)
        _, value = await self._call(
            "slowing the submission window down", _OPS["slow"], namespace, slot=slot,
            extra=_extra(str(pause_s)),
        )  # fmt: skip
        return int(value)

    async def allowance(self, namespace: str, *, rate: tuple[int, float]) -> int:
        """See :meth:`Store.allowance`."""
        slot = SlotRequest(slot_id="", rate=rate)
        _, value = await self._call(
            "reading the submission allowance", _OPS["allowance"], namespace, slot=slot
        )
        return int(value)

    # --- callback tokens and wake-ups (``_redis_tokens``) --------------------------------

    async def add_token(self, scope: str, token_id: str, *, ttl_s: float) -> None:
        """See :meth:`Store.add_token`."""
        await self._tokens.add(scope, token_id, ttl_s)

    async def bind_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.bind_token`."""
        return await self._tokens.bind(scope, token_id, task_id)

    async def get_token(self, scope: str, token_id: str) -> TokenRecord | None:
        """See :meth:`Store.get_token`."""
        return await self._tokens.get(scope, token_id)

    async def settle_token(self, scope: str, token_id: str, *, grace_s: float) -> None:
        """See :meth:`Store.settle_token`."""
        await self._tokens.settle(scope, token_id, grace_s)

    async def publish_wake(self, scope: str, token: str) -> None:
        """See :meth:`Store.publish_wake`."""
        await self._tokens.publish(scope, token)

    def wakes(self, scope: str) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """See :meth:`Store.wakes`."""
        return self._tokens.wakes(scope)


def _state(value: str) -> KeyStateName:
    return cast(KeyStateName, value)  # checked against _STATES by the caller
