"""midvary: an asyncio client for the Midjourney API (kie.ai, midapi.ai), built around Vary.

Submit a vary task, await its handle, get a :class:`TaskRecord`::

    async with midvary.Session() as session:
        handle = await session.vary("parent-task-id", 0)
        record = await handle
        print(record.image_urls)
"""

from types import FunctionType as _FunctionType
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._callbacks import CallbackReceiver
from ._config import USE_DEFAULT, PollPolicy, RetryPolicy
from ._converter import to_json_dict
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    CallbackSignatureError,
    DownloadError,
    EndpointNotServedError,
    EventLoopError,
    FeatureDisabledError,
    GenerationFailedError,
    InsufficientCreditsError,
    KeyConflictError,
    MidvaryError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ReceiverClosedError,
    ServerError,
    ServiceUnavailableError,
    SessionClosedError,
    StoreError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    ValidationError,
)
from ._fanout import FanOut
from ._handle import TaskHandle
from ._jobs import (
    JobEvent,
    JobEventKind,
    JobFailed,
    JobOutcome,
    JobSucceeded,
    Outcome,
    UnfinishedJob,
)
from ._models import (
    ExtendRequest,
    GenerateRequest,
    TaskRecord,
    TaskStatus,
    UpscaleRequest,
    VaryRequest,
)
from ._outage import Outage
from ._polling import DEFAULT_SAFETY_POLL
from ._session import Session
from ._session import warn_renamed as _warn_renamed
from ._signature import verify_callback
from ._store import RedisStore, SQLiteStore, Store, StoredJob
from ._sync import SyncSession, SyncTaskHandle
from ._version import VERSION

__version__ = VERSION

__all__ = [
    "DEFAULT_SAFETY_POLL",
    "USE_DEFAULT",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "CallbackReceiver",
    "CallbackSignatureError",
    "DownloadError",
    "EndpointNotServedError",
    "EventLoopError",
    "ExtendRequest",
    "FanOut",
    "FeatureDisabledError",
    "GenerateRequest",
    "GenerationFailedError",
    "InsufficientCreditsError",
    "JobEvent",
    "JobEventKind",
    "JobFailed",
    "JobOutcome",
    "JobSucceeded",
    "KeyConflictError",
    "MidvaryError",
    "NotFoundError",
    "Outage",
    "Outcome",
    "PollPolicy",
    "ProtocolError",
    "RateLimitError",
    "ReceiverClosedError",
    "RedisStore",
    "RetryPolicy",
    "SQLiteStore",
    "ServerError",
    "ServiceUnavailableError",
    "Session",
    "SessionClosedError",
    "Store",
    "StoreError",
    "StoredJob",
    "SubmitUncertainError",
    "SyncSession",
    "SyncTaskHandle",
    "TaskFailedError",
    "TaskHandle",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeoutError",
    "TransportError",
    "UnfinishedJob",
    "UpscaleRequest",
    "ValidationError",
    "VaryRequest",
    "__version__",
    "to_json_dict",
    "verify_callback",
]

# Public classes and functions say they are `midvary.X`, not `midvary._errors.X`, in reprs,
# tracebacks and pickles (as httpx does); each one is importable from here under that name.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type | _FunctionType):
        _value.__module__ = __name__
del _name, _value, _FunctionType

# Names renamed by issue 18, kept as aliases that warn (stamina's policy); not in __all__,
# so `from midvary import *` neither warns nor spreads them.
_RENAMED = {"VaryOutcome": "JobOutcome"}
if _TYPE_CHECKING:  # type checkers see the alias (and stamina-style warnings at run time)
    VaryOutcome = JobOutcome


def __getattr__(name: str) -> object:
    """The deprecated aliases: ``midvary.VaryOutcome`` is :class:`JobOutcome` (it warns)."""
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module 'midvary' has no attribute {name!r}")
    _warn_renamed(f"midvary.{name}", f"midvary.{new}")
    return globals()[new]
