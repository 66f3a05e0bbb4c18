"""The figures the fake provider keeps for tests and benchmarks."""

from __future__ import annotations

import collections
import statistics
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class CallbackFailure:
    """One callback delivery that did not get an HTTP 200.

    Attributes:
        task_id: The finished task the callback was about.
        url: Where it was sent.
        attempt: 1 for the first delivery, 2 for the first retry, and so on.
        reason: What went wrong (an HTTP status or a network error).
    """

    task_id: str
    url: str
    attempt: int
    reason: str


@attrs.define(kw_only=True)
class FakeStats:
    """Live figures of one fake provider; read them, do not write them.

    Times are in seconds of the provider's clock.

    Attributes:
        requests: Requests received per endpoint: ``"submit"`` (generateVary),
            ``"generate"``, ``"upscale"``, ``"extend"``, ``"record-info"``, ``"credit"``,
            ``"results"`` (downloads); faulted ones included.
        codes: Envelope codes answered (200 included); faults are counted in ``faults``.
        tasks_created: Submissions accepted (of every submission endpoint), dropped
            answers included.
        tasks_by_endpoint: Submissions accepted per endpoint (``"submit"``, ``"generate"``,
            ``"upscale"``, ``"extend"``), dropped answers included.
        duplicate_submissions: Accepted submissions the same as one accepted before: a
            vary or upscale of the same parent, image index and watermark, or a generate
            of the same fields (``callBackUrl`` aside).
        rate_limited: HTTP 429 answers sent.
        faults: Faults injected, by kind.
        faults_by_endpoint: Faults injected, by endpoint (as named in ``requests``).
        dropped_submit_answers: Submissions accepted whose answer was then lost on purpose.
        polls: ``record-info`` requests per task id created by the fake (invisible and final
            answers included; faulted requests and those refused before the lookup not).
        detection_delays: Per task, seconds from the task finishing to the first
            ``record-info`` answer that showed it final.
        callbacks_sent: Callback POSTs attempted, duplicates and retries included.
        callbacks_delivered: Callback POSTs answered with HTTP 200.
        callback_failures: Every callback POST that did not get an HTTP 200.
    """

    requests: collections.Counter[str] = attrs.field(factory=collections.Counter)
    codes: collections.Counter[int] = attrs.field(factory=collections.Counter)
    tasks_created: int = 0
    tasks_by_endpoint: collections.Counter[str] = attrs.field(factory=collections.Counter)
    duplicate_submissions: int = 0
    rate_limited: int = 0
    faults: collections.Counter[str] = attrs.field(factory=collections.Counter)
    faults_by_endpoint: collections.Counter[str] = attrs.field(factory=collections.Counter)
    dropped_submit_answers: int = 0
    polls: dict[str, int] = attrs.field(factory=dict)
    detection_delays: dict[str, float] = attrs.field(factory=dict)
    callbacks_sent: int = 0
    callbacks_delivered: int = 0
    callback_failures: list[CallbackFailure] = attrs.field(factory=list)

    def summary(self) -> dict[str, float | int | None]:
        """Aggregates: total and maximum polls per task, mean and max detection delay.

        Delays are in seconds; a figure with nothing to aggregate is ``None``.
        """
        polls = list(self.polls.values())
        delays = list(self.detection_delays.values())
        return {
            "polled_tasks": len(polls),
            "total_polls": sum(polls),
            "max_polls": max(polls, default=None),
            "mean_polls": statistics.fmean(polls) if polls else None,
            "mean_detection_delay": statistics.fmean(delays) if delays else None,
            "max_detection_delay": max(delays, default=None),
        }

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready data (as ``GET /_fake/stats`` serves them)."""
        data = attrs.asdict(self, recurse=True)
        data["codes"] = {str(code): count for code, count in self.codes.items()}
        data["summary"] = self.summary()
        return data
