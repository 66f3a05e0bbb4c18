"""The error tree: every error survives pickling (Celery results, other processes)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

import midvary
from midvary._errors import error_for

RECORD = midvary.TaskRecord(
    task_id="t-1",
    status=midvary.TaskStatus.GENERATE_FAILED,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    error_code=501,
    error_message="generation failed",
)
REQUEST = midvary.VaryRequest(task_id="parent-1", image_index=2, key="order-42/2")

ERRORS: list[Exception] = [
    *(
        error_for(code, f"code {code}", http_status=200, retry_after=1.5)
        for code in (400, 401, 402, 404, 422, 429, 455, 500, 501, 505, 599)
    ),
    midvary.EndpointNotServedError("/api/v1/mj/generateVary", "https://x.test", http_status=405),
    midvary.TransportError("GET /x: could not connect", sent=False),
    midvary.SubmitUncertainError(REQUEST, "the connection was reset"),
    midvary.ProtocolError("HTTP 200 with an HTML page", http_status=200),
    midvary.DownloadError("https://cdn.test/a.png", 403, retry_after=2.0),
    midvary.DownloadError("file:///etc/passwd", None, reason="not an http(s) URL"),
    midvary.TaskFailedError(RECORD),
    midvary.TaskTimeoutError("t-1", 60.0, RECORD, failing_for=3.0),
    midvary.SessionClosedError("the Session was closed"),
    midvary.EventLoopError("called from the session's own loop"),
    midvary.ReceiverClosedError("the receiver was stopped"),
    midvary.CallbackSignatureError("the signature does not match", task_id="t-1"),
    midvary.StoreError("the store did not answer in time"),
    midvary.KeyConflictError("order-42/2", "another request"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_every_error_pickles_with_its_class_message_and_attributes(error: Exception) -> None:
    """A round trip through pickle keeps the class, the message and every attribute."""
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def test_a_wait_that_polled_for_ever_still_has_a_delay() -> None:
    """A backoff long enough to pass any float is capped at max_delay, not an OverflowError."""
    policy = midvary.PollPolicy(jitter=0.0, target_delay=None)
    assert policy.delay(100_000) == policy.max_delay
