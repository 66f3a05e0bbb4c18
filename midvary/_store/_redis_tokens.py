"""The Redis store's callback tokens and wake-ups, shared by every replica.

A token is a string key ``midvary:{cb:<scope>}:t:<token id>`` (its value the bound task id,
empty until bound) that expires with the token (``PX``; binding keeps the expiry). A
delivery to an unbound token leaves its claimed task id in ``...:r:<token id>``, and a
token issued for a submission key is found from the key's hash by ``...:k:<link id>``;
both expire with the token. Wake-ups
are Redis pub/sub messages on ``midvary:{cb:<scope>}:wake``: at-most-once, lost while a
listener is disconnected, which is why the waiting handles keep their slow safety polls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

from .._errors import StoreError
from ._base import TokenRecord

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio.client import PubSub

# Shorten a token's expiry to the grace (never lengthen it), in one atomic step.
_SETTLE: Final = """
local left = redis.call('PTTL', KEYS[1])
if left > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return left
"""
# Keep a delivery's claim for as long as its token lives (nothing for a token gone).
_REPORT: Final = """
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', left)
return 1
"""
# Seconds one read of the subscription blocks before it looks again (no traffic meanwhile).
_LISTEN_BLOCK: Final = 5.0


def text(value: object) -> str:
    """A Redis reply as text (a client may decode its replies or not)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisTokens:
    """Token records and wake-ups on the store's Redis client.

    Args:
        client: Returns the open client (raising :class:`StoreError` when the store is not
            open), given what is being done.
        error: Builds the :class:`StoreError` of a failed operation (it redacts the URL).

    """

    def __init__(
        self,
        client: Callable[[str], redis.asyncio.Redis],
        error: Callable[[str, BaseException], StoreError],
    ) -> None:
        self._client = client
        self._error = error
        self._settle: Any = None
        self._report: Any = None

    @staticmethod
    def _name(scope: str, token_id: str) -> str:
        return f"midvary:{{cb:{scope}}}:t:{token_id}"

    @staticmethod
    def _report_name(scope: str, token_id: str) -> str:
        return f"midvary:{{cb:{scope}}}:r:{token_id}"

    @staticmethod
    def _link_name(scope: str, link_id: str) -> str:
        return f"midvary:{{cb:{scope}}}:k:{link_id}"

    @staticmethod
    def _channel(scope: str) -> str:
        return f"midvary:{{cb:{scope}}}:wake"

    async def add(self, scope: str, token_id: str, ttl_s: float, link_id: str | None) -> None:
        """See :meth:`Store.add_token`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "recording a callback token"
        ttl_ms = int(ttl_s * 1000)
        try:
            client = self._client(what)
            if link_id is None:
                await client.set(self._name(scope, token_id), "", px=ttl_ms)
            else:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.set(self._name(scope, token_id), "", px=ttl_ms)
                    pipe.set(self._link_name(scope, link_id), token_id, px=ttl_ms)
                    await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc

    async def bind(self, scope: str, token_id: str, task_id: str) -> bool:
        """See :meth:`Store.bind_token`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = f"binding a callback token to task {task_id}"
        try:
            client = self._client(what)
            done = await client.set(self._name(scope, token_id), task_id, xx=True, keepttl=True)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc
        return bool(done)

    async def get(self, scope: str, token_id: str) -> TokenRecord | None:
        """See :meth:`Store.get_token`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "looking a callback token up"
        try:
            value, reported = await self._client(what).mget(
                [self._name(scope, token_id), self._report_name(scope, token_id)]
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc
        if value is None:
            return None
        return TokenRecord(
            task_id=text(value) or None, reported=None if reported is None else text(reported)
        )

    async def report(self, scope: str, token_id: str, task_id: str) -> bool:
        """See :meth:`Store.report_token`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "keeping a callback's task id"
        try:
            client = self._client(what)
            if self._report is None or self._report.registered_client is not client:
                self._report = client.register_script(_REPORT)
            names = [self._name(scope, token_id), self._report_name(scope, token_id)]
            done = await self._report(keys=names, args=[task_id])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc
        return bool(done)

    async def linked(self, scope: str, link_id: str) -> str | None:
        """See :meth:`Store.linked_token`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "looking a key's callback token up"
        try:
            value = await self._client(what).get(self._link_name(scope, link_id))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc
        return None if value is None else text(value)

    async def settle(self, scope: str, token_id: str, grace_s: float) -> None:
        """See :meth:`Store.settle_token`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "settling a callback token"
        try:
            client = self._client(what)
            if self._settle is None or self._settle.registered_client is not client:
                self._settle = client.register_script(_SETTLE)
            await self._settle(keys=[self._name(scope, token_id)], args=[int(grace_s * 1000)])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc

    async def publish(self, scope: str, token: str) -> None:
        """See :meth:`Store.publish_wake`."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "publishing a callback wake-up"
        try:
            await self._client(what).publish(self._channel(scope), token)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self._error(what, exc) from exc

    @contextlib.asynccontextmanager
    async def wakes(self, scope: str) -> AsyncIterator[AsyncIterator[str]]:
        """See :meth:`Store.wakes`: subscribed (confirmed by the server) once entered."""
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        what = "listening to callback wake-ups"
        pubsub = self._client(what).pubsub()
        try:
            try:
                await pubsub.subscribe(self._channel(scope))
                # The subscription is live on the server once it confirms it.
                while True:
                    message = await pubsub.get_message(timeout=_LISTEN_BLOCK)
                    if message is not None and message.get("type") == "subscribe":
                        break
            except (redis.exceptions.RedisError, OSError) as exc:
                raise self._error(what, exc) from exc
            yield self._stream(pubsub, what)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # redis-py 5

    async def _stream(self, pubsub: PubSub, what: str) -> AsyncIterator[str]:
        import redis.exceptions  # noqa: PLC0415 - an optional dependency

        while True:
            try:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_LISTEN_BLOCK
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                raise self._error(what, exc) from exc
            if message is not None and message.get("type") == "message":
                yield text(message["data"])
