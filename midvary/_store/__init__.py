"""Shared stores: idempotent submission keys and one submission window per account.

The interface is :class:`Store` (``_base``): its keys (:class:`KeyStore`) and its shared
window (:class:`SubmitWindow`); a store that carries callback tokens is a
:class:`TokenStore` too. The backends are :class:`MemoryStore` (``key=`` within one
process), :class:`SQLiteStore` (processes on one machine) and :class:`RedisStore` (many
machines). :func:`holding` and :class:`StoreLimiter` are what the submission pipeline uses
them through.
"""

from ._base import (
    DEFAULT_KEY_TTL,
    Claim,
    ClaimState,
    KeyStore,
    SlotRequest,
    Store,
    StoredJob,
    SubmitWindow,
    TokenRecord,
    TokenStore,
    account_namespace,
)
from ._hold import Hold, StoreClaims, holding
from ._limiter import StoreLimiter
from ._memory import MemoryStore
from ._redis import RedisStore
from ._sqlite import SQLiteStore

__all__ = [
    "DEFAULT_KEY_TTL",
    "Claim",
    "ClaimState",
    "Hold",
    "KeyStore",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SlotRequest",
    "Store",
    "StoreClaims",
    "StoreLimiter",
    "StoredJob",
    "SubmitWindow",
    "TokenRecord",
    "TokenStore",
    "account_namespace",
    "holding",
]
