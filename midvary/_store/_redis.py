"""RedisStore: keys and the account's submission window shared by many machines.

Every operation is one call of its Lua script (``_lua.py``, run through redis-py's
``register_script``: ``EVALSHA``, loaded again after ``NOSCRIPT``), atomic on the server and
timed by the server's ``TIME``, so the hosts' clocks never matter. A call is one round trip;
a keyed submission makes two (its claim, which also takes its slot, and its task id). A
connection that breaks is retried by the pool's ``Retry`` (``_retry.redis_retry``), the one
retry policy: every operation is idempotent for its holder and slot id. redis-py
(``redis.asyncio``) is an optional dependency (``pip install 'midvary[redis]'``), imported
when a store is made.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from .._errors import StoreError
from .._retry import redis_retry
from .._validate import finite_seconds
from ._base import (
    DEFAULT_CLAIM_LEASE,
    DEFAULT_KEY_TTL,
    Claim,
    ClaimState,
    SlotRequest,
    Store,
    StoredJob,
    check_namespace,
    conflict,
    dump_request,
    key_state,
    lost_claim,
    lost_data_error,
    new_epoch,
)
from ._lua import READ, SCRIPTS
from ._redis_tokens import TOKEN_SCRIPTS, RedisTokens, text

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

#: Every Redis key of the store starts so; the namespace is the cluster hash tag.
PREFIX: Final = "midvary:{"
#: A script argument (redis-py sends each as its text).
Arg = str | int | float


def marker_name(namespace: str) -> str:
    """The Redis key of ``namespace``'s marker (see ``_lua``)."""
    return f"{PREFIX}{namespace}}}:epoch"


def record_name(namespace: str, key: str) -> str:
    """The Redis key of the record of submission key ``key``."""
    return f"{PREFIX}{namespace}}}:k:{key}"


def done_name(namespace: str) -> str:
    """The Redis key of ``namespace``'s done keys (a hash: key -> expiry, fingerprint, task)."""
    return f"{PREFIX}{namespace}}}:done"


def window_names(namespace: str) -> list[str]:
    """The Redis keys of ``namespace``'s window: its hash, stamps and slots in flight."""
    base = f"{PREFIX}{namespace}}}:"
    return [base + "win", base + "stamps", base + "flight"]


def _slot(slot: SlotRequest | None) -> tuple[Arg, Arg, Arg, Arg]:
    """A slot's script arguments: id ('' = none), count and window ('' = no limit), lease (s)."""
    if slot is None:
        return ("", "", "", 0.0)
    count, window = slot.rate if slot.rate is not None else ("", "")
    return (slot.slot_id, count, window, slot.lease_s)


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


class RedisStore(Store, RedisTokens):
    """A store on a Redis (6.2 or later) or Valkey server, shared by every process everywhere.

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
            (connecting, each answer, and a free connection); ``None`` waits forever.
            A borrowed client's own ``socket_timeout`` applies to it instead.
        max_connections: The most connections a store made from a URL opens (more calls
            at once wait for a free one).

    """

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
        self.key_ttl = finite_seconds(key_ttl, "key_ttl")
        self.claim_lease = finite_seconds(claim_lease, "claim_lease")
        if socket_timeout is not None:
            finite_seconds(socket_timeout, "socket_timeout")
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
        #: Operation -> its script, once open (``None``: closed).
        self._scripts: dict[str, AsyncScript] | None = None
        #: Namespace -> the marker this store saw in it (a changed one is lost data).
        self._markers: dict[str, str] = {}
        self._failures: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._timeouts: tuple[type[BaseException], ...] = (redis.exceptions.TimeoutError,)

    def __repr__(self) -> str:
        return f"<RedisStore {self._where}>"

    def _error(self, what: str, exc: BaseException) -> StoreError:
        detail = f"{type(exc).__name__}: {exc}"
        if self._secret:
            detail = detail.replace(self._secret, "***")
        if isinstance(exc, self._timeouts):
            detail = f"the store did not answer in time ({detail})"
        return StoreError(f"{what} failed on {self._where}: {detail}")

    async def open(self) -> None:
        """Connect (from a URL), check the server answers and load the scripts; idempotent."""
        import redis.asyncio  # noqa: PLC0415 - an optional dependency

        if self._scripts is not None:
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
                    # The one retry policy of the store's calls (``_retry.redis_retry``).
                    **redis_retry(),
                )
                self._client = redis.asyncio.Redis.from_pool(pool)
            except ValueError:
                raise StoreError(
                    f"not a Redis URL: {self._where} (use redis://, rediss:// or unix://)"
                ) from None
        client = self._client
        sources = {**SCRIPTS, **TOKEN_SCRIPTS, "read": READ}
        scripts = {op: client.register_script(source) for op, source in sources.items()}
        try:
            await client.ping()
            # Loaded now so that a server that refuses scripts fails here; a server that
            # forgets them later (a restart) gets them again from register_script's EVALSHA.
            async with client.pipeline(transaction=False) as pipe:
                for script in scripts.values():
                    pipe.script_load(script.script)
                await pipe.execute()
        except self._failures as exc:
            if self._owned:
                self._client = None
                await client.aclose()
            raise self._error("connecting to the store", exc) from exc
        self._scripts = scripts

    async def close(self) -> None:
        """Close the connections it made; a borrowed client stays open."""
        self._scripts = None
        if self._owned and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[redis.asyncio.Redis]:
        """The open client; its failures in the block become StoreError naming ``what``."""
        if self._client is None or self._scripts is None:
            raise StoreError(f"{what}: the Redis store is not open (use `async with store`)")
        try:
            yield self._client
        except self._failures as exc:
            raise self._error(what, exc) from exc

    async def _run(self, what: str, op: str, keys: list[str], args: list[Arg]) -> Any:
        """Run the script of ``op``; failures become StoreError naming ``what``."""
        with self._calling(what):
            assert self._scripts is not None  # noqa: S101 - _calling checked the store is open
            return await self._scripts[op](keys=keys, args=args)

    async def _window(self, what: str, op: str, namespace: str, *args: Arg) -> str:
        """Run a window operation (no marker); its answer as text."""
        return text(await self._run(what, op, window_names(namespace), list(args)))

    async def _key(
        self, what: str, op: str, namespace: str, key: str, *args: Arg
    ) -> tuple[str, str]:
        """Run a key operation; (status, value) once the namespace's marker is checked."""
        seen = self._markers.get(namespace)
        markers = [seen, ""] if seen is not None else ["", new_epoch()]
        keys = [
            marker_name(namespace),
            record_name(namespace, key),
            done_name(namespace),
            *window_names(namespace),
        ]
        status, epoch, value = map(text, await self._run(what, op, keys, [*markers, key, *args]))
        if status == "lost" and not value:
            raise lost_data_error(namespace)
        if epoch:
            self._markers[namespace] = epoch
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
        status, value = await self._key(
            f"claim of key {key!r}", "claim", namespace, key,
            holder, lease_s, self._ttl_ms(), fingerprint, dump_request(request), *_slot(slot),
        )  # fmt: skip
        if status == "claimed":
            return Claim(state=ClaimState.CLAIMED, slot_wait=float(value) if value else None)
        if status == "conflict":
            raise conflict(key, value)
        if status == "known":
            return Claim(state=ClaimState.KNOWN, task_id=value or None)
        if status == "busy":
            return Claim(state=ClaimState.BUSY, retry_after=float(value))
        if status == "uncertain":
            return Claim(state=ClaimState.UNCERTAIN)
        raise StoreError(f"the Redis store answered a claim with {status!r}")

    def _ttl_ms(self) -> int:
        return int(self.key_ttl * 1000)

    async def mark_sending(
        self, namespace: str, key: str, *, holder: str, lease_s: float, slot: SlotRequest | None
    ) -> float:
        """See :meth:`Store.mark_sending`."""
        status, value = await self._key(
            f"marking key {key!r} sending", "send", namespace, key, holder, lease_s, *_slot(slot)
        )
        if status == "lost":
            raise lost_claim(key)
        return float(value)

    async def renew(self, namespace: str, key: str, *, holder: str, lease_s: float) -> bool:
        """See :meth:`Store.renew`."""
        _, value = await self._key(
            f"renewal of key {key!r}", "renew", namespace, key, holder, lease_s
        )
        return value == "1"

    async def record_task(
        self, namespace: str, key: str, *, holder: str, task_id: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.record_task`."""
        _, value = await self._key(
            f"recording the task of key {key!r}", "task", namespace, key,
            holder, task_id, self._ttl_ms(), slot_id or "",
        )  # fmt: skip
        return value == "1"

    async def release(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.release`."""
        _, value = await self._key(
            f"release of key {key!r}", "release", namespace, key, holder, slot_id or ""
        )
        return value == "1"

    async def unsend(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.unsend`."""
        _, value = await self._key(
            f"marking key {key!r} claimed", "unsend", namespace, key, holder, slot_id or ""
        )
        return value == "1"

    async def mark_uncertain(
        self, namespace: str, key: str, *, holder: str, slot_id: str | None = None
    ) -> bool:
        """See :meth:`Store.mark_uncertain`."""
        _, value = await self._key(
            f"marking key {key!r} uncertain", "uncertain", namespace, key, holder, slot_id or ""
        )
        return value == "1"

    async def mark_done(self, namespace: str, key: str, *, task_id: str) -> bool:
        """See :meth:`Store.mark_done`."""
        _, value = await self._key(
            f"marking key {key!r} done", "done", namespace, key, task_id, self._ttl_ms()
        )
        return value == "1"

    async def _scan(self, what: str, pattern: str) -> list[str]:
        with self._calling(what) as client:
            return [text(name) async for name in client.scan_iter(match=pattern)]

    async def unfinished(self, *, namespace: str | None = None) -> list[StoredJob]:
        """See :meth:`Store.unfinished`."""
        namespace = namespace if namespace is not None else self.namespace
        what = "listing unfinished keys"
        names = await self._scan(what, record_name(namespace or "*", "*"))
        with self._calling(what) as client:
            assert self._scripts is not None  # noqa: S101 - _calling checked the store is open
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    await self._scripts["read"](keys=[name], client=pipe)
                rows = await pipe.execute()
        jobs = []
        for name, row in zip(names, rows, strict=True):
            if not row:
                continue  # expired or deleted between the scan and the read
            state, task_id, request = map(text, row)
            if state == "done":
                continue
            ns, _, key = name[len(PREFIX) :].partition("}:k:")
            jobs.append(
                StoredJob(
                    key=key,
                    namespace=ns,
                    request=json.loads(request),
                    task_id=task_id or None,
                    state=key_state(state, "Redis"),
                )
            )
        return sorted(jobs, key=lambda job: (job.namespace, job.key))

    async def forget(self, key: str, *, namespace: str | None = None) -> bool:
        """See :meth:`Store.forget`."""
        namespace = namespace if namespace is not None else self.namespace
        what = f"forgetting key {key!r}"
        if namespace is not None:
            namespaces = [namespace]
        else:
            markers = await self._scan(what, marker_name("*"))
            namespaces = [name[len(PREFIX) : -len("}:epoch")] for name in markers]
        with self._calling(what) as client:
            async with client.pipeline(transaction=False) as pipe:
                for ns in namespaces:
                    pipe.delete(record_name(ns, key))
                    pipe.hdel(done_name(ns), key)
                deleted = await pipe.execute()
        return any(int(count) > 0 for count in deleted)

    async def acquire_slot(
        self, namespace: str, *, rate: tuple[int, float], slot_id: str, lease_s: float
    ) -> float:
        """See :meth:`Store.acquire_slot`."""
        count, window = rate
        wait = await self._window(
            "taking a submission slot", "acquire", namespace, slot_id, count, window, lease_s
        )
        return float(wait)

    async def end_slot(self, namespace: str, slot_id: str, *, refunded: bool) -> float | None:
        """See :meth:`Store.end_slot`."""
        stamp = await self._window(
            "ending a submission slot", "end", namespace, slot_id, "1" if refunded else "0"
        )
        return float(stamp) if stamp else None

    async def slow_down(self, namespace: str, *, rate: tuple[int, float], pause_s: float) -> int:
        """See :meth:`Store.slow_down`."""
        count, window = rate
        allowance = await self._window(
            "slowing the submission window down", "slow", namespace, count, window, pause_s
        )
        return int(allowance)

    async def pause(self, namespace: str, *, pause_s: float) -> float:
        """See :meth:`Store.pause`."""
        left = await self._window("pausing the submission window", "pause", namespace, pause_s)
        return float(left)

    async def allowance(self, namespace: str, *, rate: tuple[int, float]) -> int:
        """See :meth:`Store.allowance`."""
        count, window = rate
        allowance = await self._window(
            "reading the submission allowance", "allowance", namespace, count, window
        )
        return int(allowance)
