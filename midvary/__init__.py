"""midvary: an asyncio client for the Midjourney Vary API (kie.ai, midapi.ai).

Submit a vary task, await its handle, get a :class:`TaskRecord`::

    async with midvary.Session() as session:
        handle = await session.vary("parent-task-id", 0)
        record = await handle
        print(record.image_urls)
"""

from ._callbacks import CallbackReceiver
from ._config import USE_DEFAULT, PollPolicy, RetryPolicy
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    DownloadError,
    FeatureDisabledError,
    GenerationFailedError,
    InsufficientCreditsError,
    MidvaryError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ReceiverClosedError,
    ServerError,
    ServiceUnavailableError,
    SessionClosedError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    ValidationError,
)
from ._fanout import FanOut
from ._handle import TaskHandle
from ._jobs import JobEvent, JobEventKind, UnfinishedJob, VaryOutcome
from ._models import TaskRecord, TaskStatus, VaryRequest
from ._polling import DEFAULT_SAFETY_POLL
from ._session import Session
from ._version import VERSION

__version__ = VERSION

__all__ = [
    "DEFAULT_SAFETY_POLL",
    "USE_DEFAULT",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "CallbackReceiver",
    "DownloadError",
    "FanOut",
    "FeatureDisabledError",
    "GenerationFailedError",
    "InsufficientCreditsError",
    "JobEvent",
    "JobEventKind",
    "MidvaryError",
    "NotFoundError",
    "PollPolicy",
    "ProtocolError",
    "RateLimitError",
    "ReceiverClosedError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "Session",
    "SessionClosedError",
    "SubmitUncertainError",
    "TaskFailedError",
    "TaskHandle",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeoutError",
    "TransportError",
    "UnfinishedJob",
    "ValidationError",
    "VaryOutcome",
    "VaryRequest",
    "__version__",
]
