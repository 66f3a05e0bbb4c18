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
from typing import TYPE_CHECKING, ClassVar, cast

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
)
from ._lua import SCRIPT
from ._redis_args import NO_EXTRA, NO_FINGERPRINT, OPS, PREFIX, Packer, extra, key_names
from ._redis_pipe import ScriptPipe, bulk
from ._redis_tokens import RedisTokens

if TYPE_CHECKING:
    import redis.asyncio

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
        self._packer = Packer()  # the script's calls, packed (``_redis_args``)
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
        extra: bytes = NO_EXTRA,
        refunded: bool = False,
    ) -> tuple[bytes, bytes]:
        """Run the script's ``op``; return (status, value) after checking the marker.

        ``what`` names the operation in an error (``{key!r}`` in it is the key); ``op`` is a
        row of ``OPS``; ``extra`` is ARGV 11-13 packed (``_redis_args.extra``).
        """
        script = self._script
        if script is None:
            raise StoreError(
                f"{what.format(key=key)}: the Redis store is not open (use `async with store`)"
            )
        space = self._packer.space(namespace)
        command = self._packer.command(
            space, op, key, holder=holder, lease_s=lease_s, key_ttl=self.key_ttl,
            slot=slot, slot_id=slot_id, extra=extra, refunded=refunded,
        )  # fmt: skip
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
            OPS["claim"],
            namespace,
            key,
            holder=holder,
            lease_s=lease_s,
            slot=slot,
            extra=extra(fingerprint, request_json),
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
            "marking key {key!r} sending", OPS["send"], namespace, key,
            holder=holder, lease_s=lease_s, slot=slot,
        )  # fmt: skip
        if status == b"lost":
            raise lost_claim(key)
        return float(value)

    async def renew(self, namespace: str, key: str, *, holder: str, lease_s: float) -> bool:
        """See :meth:`Store.renew`."""
        _, value = await self._call(
            "renewal of key {key!r}", OPS["renew"], namespace, key, holder=holder, lease_s=lease_s
        )
        return value == b"1"

    async def record_task(
        self, namespace: str, key: str, *, holder: str, task_id: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.record_task`."""
        _, value = await self._call(
            "recording the task of key {key!r}", OPS["task"], namespace, key,
            holder=holder, slot_id=slot_id, extra=NO_FINGERPRINT + bulk(task_id.encode()),
        )  # fmt: skip
        return value == b"1"

    async def release(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.release`."""
        _, value = await self._call(
            "release of key {key!r}",
            OPS["release"],
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
            "marking key {key!r} claimed", OPS["unsend"], namespace, key,
            holder=holder, slot_id=slot_id,
        )  # fmt: skip
        return value == b"1"

    async def mark_uncertain(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.mark_uncertain`."""
        _, value = await self._call(
            "marking key {key!r} uncertain", OPS["uncertain"], namespace, key,
            holder=holder, slot_id=slot_id,
        )  # fmt: skip
        return value == b"1"

    async def mark_done(self, namespace: str, key: str, *, task_id: str) -> bool:
        """See :meth:`Store.mark_done`."""
        _, value = await self._call(
            "marking key {key!r} done", OPS["done"], namespace, key, extra=extra(task_id=task_id)
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
        names = await self._scan(what, f"{PREFIX}{namespace or '*'}}}:k:*")
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
            ns, _, key = name[len(PREFIX) :].partition("}:k:")
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
            markers = await self._scan(what, f"{PREFIX}*}}:epoch")
            namespaces = [name[len(PREFIX) : -len("}:epoch")] for name in markers]
        assert self._client is not None  # noqa: S101 - open checked below
        if self._script is None:
            raise StoreError(f"{what}: the Redis store is not open (use `async with store`)")
        try:
            names = [key_names(ns, key)[1] for ns in namespaces]
            return bool(names) and int(await self._client.delete(*names)) > 0
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc

    async def acquire_slot(
        self, namespace: str, *, rate: tuple[int, float], slot_id: str, lease_s: float
    ) -> float:
        """See :meth:`Store.acquire_slot`."""
        slot = SlotRequest(slot_id=slot_id, rate=rate, lease_s=lease_s)
        _, value = await self._call(
            "taking a submission slot", OPS["acquire"], namespace, slot=slot
        )
        return float(value)

    async def end_slot(self, namespace: str, slot_id: str, *, refunded: bool) -> float | None:
        """See :meth:`Store.end_slot`."""
        _, value = await self._call(
            "ending a submission slot", OPS["end"], namespace, slot_id=slot_id, refunded=refunded
        )
        return float(value) if value else None

    async def slow_down(self, namespace: str, *, rate: tuple[int, float], pause_s: float) -> int:
        """See :meth:`Store.slow_down`."""
        slot = SlotRequest(slot_id="", rate=rate)
        _, value = await self._call(
            "slowing the submission window down", OPS["slow"], namespace, slot=slot,
            extra=extra(str(pause_s)),
        )  # fmt: skip
        return int(value)

    async def allowance(self, namespace: str, *, rate: tuple[int, float]) -> int:
        """See :meth:`Store.allowance`."""
        slot = SlotRequest(slot_id="", rate=rate)
        _, value = await self._call(
            "reading the submission allowance", OPS["allowance"], namespace, slot=slot
        )
        return int(value)

    # --- callback tokens and wake-ups (``_redis_tokens``) --------------------------------

    async def add_token(
        self, scope: str, token_id: str, *, ttl_s: float, link_id: str | None = None
    ) -> None:
        """See :meth:`Store.add_token`."""
        await self._tokens.add(scope, token_id, ttl_s, link_id)

    async def bind_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.bind_token`."""
        return await self._tokens.bind(scope, token_id, task_id)

    async def get_token(self, scope: str, token_id: str) -> TokenRecord | None:
        """See :meth:`Store.get_token`."""
        return await self._tokens.get(scope, token_id)

    async def report_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.report_token`."""
        return await self._tokens.report(scope, token_id, task_id)

    async def linked_token(self, scope: str, link_id: str) -> str | None:
        """See :meth:`Store.linked_token`."""
        return await self._tokens.linked(scope, link_id)

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
