"""Shared stores: idempotent submission keys and one submission window per account.

The interface is :class:`Store` (``_base``); the backends are :class:`MemoryStore`
(``key=`` within one process), :class:`SQLiteStore` (processes on one machine) and
:class:`RedisStore` (many machines). :func:`holding` and :class:`StoreLimiter` are what the
submission pipeline uses them through.
"""

from ._base import (
    DEFAULT_KEY_TTL,
    Claim,
    ClaimState,
    SlotRequest,
    Store,
    StoredJob,
    TokenRecord,
    account_namespace,
)
from ._hold import Hold, StoreClaims, holding
from ._limiter import StoreLimiter, StoreSlot
from ._memory import MemoryStore
from ._redis import RedisStore
from ._sqlite import SQLiteStore

__all__ = [
    "DEFAULT_KEY_TTL",
    "Claim",
    "ClaimState",
    "Hold",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SlotRequest",
    "Store",
    "StoreClaims",
    "StoreLimiter",
    "StoreSlot",
    "StoredJob",
    "TokenRecord",
    "account_namespace",
    "holding",
]
