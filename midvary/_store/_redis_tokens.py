"""The Redis store's callback tokens and wake-ups, shared by every replica.

A token is a string key ``midvary:{cb:<scope>}:t:<token id>`` (its value the bound task id,
empty until bound) that expires with the token (``PX``; binding keeps the expiry). A
delivery to an unbound token leaves its claimed task id in ``...:r:<token id>``, and a
token issued for a submission key is found from the key's hash by ``...:k:<link id>``;
both expire with the token. Wake-ups are Redis pub/sub messages on
``midvary:{cb:<scope>}:wake``: at-most-once, lost while a listener is disconnected, which is
why the waiting handles keep their slow safety polls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from ._base import TokenRecord, TokenStore

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio.client import PubSub

#: The token scripts (registered with the store's key scripts). ``settle``: shorten a
#: token's expiry to the grace (never lengthen it), in one atomic step. ``report``: keep a
#: delivery's claim for as long as its token lives (nothing for a token gone).
TOKEN_SCRIPTS: Final = {
    "settle": """
local left = redis.call('PTTL', KEYS[1])
if left > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return left
""",
    "report": """
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', left)
return 1
""",
}
# Seconds one read of the subscription blocks before it looks again (no traffic meanwhile).
_LISTEN_BLOCK: Final = 5.0


def text(value: object) -> str:
    """A Redis reply as text (a client may decode its replies or not)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _name(scope: str, kind: str, token_id: str) -> str:
    """The Redis key of a token (``t``), its reported task (``r``) or its link (``k``)."""
    return f"midvary:{{cb:{scope}}}:{kind}:{token_id}"


def _channel(scope: str) -> str:
    return f"midvary:{{cb:{scope}}}:wake"


class RedisTokens(TokenStore):
    """Token records and wake-ups: the :class:`TokenStore` half of ``RedisStore``.

    It runs on the store's client through the store's ``_calling`` (the open client, its
    failures made :class:`~midvary.StoreError`) and ``_run`` (a registered script).
    """

    if TYPE_CHECKING:

        def _calling(self, what: str) -> contextlib.AbstractContextManager[redis.asyncio.Redis]: ...

        async def _run(self, what: str, op: str, keys: list[str], args: list[Any]) -> Any: ...

    async def add_token(
        self, scope: str, token_id: str, *, ttl_s: float, link_id: str | None = None
    ) -> None:
        """See :meth:`Store.add_token`."""
        ttl_ms = int(ttl_s * 1000)
        with self._calling("recording a callback token") as client:
            if link_id is None:
                await client.set(_name(scope, "t", token_id), "", px=ttl_ms)
                return
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(_name(scope, "t", token_id), "", px=ttl_ms)
                pipe.set(_name(scope, "k", link_id), token_id, px=ttl_ms)
                await pipe.execute()

    async def bind_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.bind_token`."""
        with self._calling(f"binding a callback token to task {task_id}") as client:
            name = _name(scope, "t", token_id)
            return bool(await client.set(name, task_id, xx=True, keepttl=True))

    async def get_token(self, scope: str, token_id: str) -> TokenRecord | None:
        """See :meth:`Store.get_token`."""
        with self._calling("looking a callback token up") as client:
            names = [_name(scope, "t", token_id), _name(scope, "r", token_id)]
            value, reported = await client.mget(names)
        if value is None:
            return None
        return TokenRecord(
            task_id=text(value) or None, reported=None if reported is None else text(reported)
        )

    async def report_token(self, scope: str, token_id: str, *, task_id: str) -> bool:
        """See :meth:`Store.report_token`."""
        names = [_name(scope, "t", token_id), _name(scope, "r", token_id)]
        return bool(await self._run("keeping a callback's task id", "report", names, [task_id]))

    async def linked_token(self, scope: str, link_id: str) -> str | None:
        """See :meth:`Store.linked_token`."""
        with self._calling("looking a key's callback token up") as client:
            value = await client.get(_name(scope, "k", link_id))
        return None if value is None else text(value)

    async def settle_token(self, scope: str, token_id: str, *, grace_s: float) -> None:
        """See :meth:`Store.settle_token`."""
        names, grace_ms = [_name(scope, "t", token_id)], int(grace_s * 1000)
        await self._run("settling a callback token", "settle", names, [grace_ms])

    async def publish_wake(self, scope: str, token: str) -> None:
        """See :meth:`Store.publish_wake`."""
        with self._calling("publishing a callback wake-up") as client:
            await client.publish(_channel(scope), token)

    @contextlib.asynccontextmanager
    async def wakes(self, scope: str) -> AsyncIterator[AsyncIterator[str]]:
        """See :meth:`Store.wakes`: subscribed (confirmed by the server) once entered."""
        what = "listening to callback wake-ups"
        with self._calling(what) as client:
            pubsub = client.pubsub()
        try:
            with self._calling(what):
                await pubsub.subscribe(_channel(scope))
                # The subscription is live on the server once it confirms it.
                while True:
                    message = await pubsub.get_message(timeout=_LISTEN_BLOCK)
                    if message is not None and message.get("type") == "subscribe":
                        break
            yield self._stream(pubsub, what)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # redis-py 5

    async def _stream(self, pubsub: PubSub, what: str) -> AsyncIterator[str]:
        while True:
            with self._calling(what):
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_LISTEN_BLOCK
                )
            if message is not None and message.get("type") == "message":
                yield text(message["data"])
