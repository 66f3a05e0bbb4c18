"""OpenTelemetry traces and metrics, when the ``otel`` extra is installed; nothing otherwise.

midvary reports through the OpenTelemetry *API* only: an application that configured an SDK
(a tracer and a meter provider) gets the spans and metrics below; one that did not pays for
the API's no-op objects; without ``opentelemetry-api`` installed every call here is a no-op
of our own. Names follow the GenAI semantic conventions where they fit, ``midvary.*`` where
they do not.

Spans:

* a submission: ``generate_content midjourney``, kind CLIENT, with ``gen_ai.operation.name``,
  ``gen_ai.provider.name`` (``kie``, ``midapi`` or the API host), ``gen_ai.request.model``,
  ``gen_ai.output.type`` (``image`` or ``video``), ``gen_ai.response.id`` (the new task),
  ``midvary.request.kind``, ``midvary.submission`` (accepted, refused, uncertain, reattached,
  recovered), ``midvary.submission.attempts``, and ``error.type`` (the envelope code of a
  refusal: its HTTP status is 200, so an HTTP span alone looks fine);
* a wait: ``fetch_response midjourney``, with ``gen_ai.response.id``, ``midvary.polls``,
  ``midvary.wait.outcome`` (succeeded, failed, timed_out, error) and
  ``midvary.wait.callback`` (a callback woke it);
* a fan-out (or a bulk run): ``midvary.fan_out``, the parent of its jobs' spans.

Metrics (``midvary.*``): ``submissions`` {kind, outcome}, ``throttled`` {code: 429 or 455},
``polls``, ``tasks.in_flight`` (up-down), ``task.duration`` (s, the provider's own times,
buckets up to 30 minutes), ``result.delay`` (s, from the task's completion to the record
seen), ``limiter.wait`` (s), ``credits.spent``.

Nothing secret is recorded: no key, no callback URL or token, no store URL. Prompts and
water marks are content, recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` (the conventions' switch).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import yarl

from ._errors import APIError, SubmitUncertainError, TaskFailedError, TaskTimeoutError
from ._version import VERSION

if TYPE_CHECKING:
    from ._models import SubmitRequest, TaskRecord

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
except ImportError:  # the otel extra is not installed: every call below is a no-op
    AVAILABLE = False
else:
    AVAILABLE = True

SCOPE: Final = "midvary"
MODEL: Final = "midjourney"
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

#: Bucket bounds of the task duration and result delay histograms, in seconds: these tasks
#: take from seconds to many minutes (the GenAI duration buckets stop at 82 s).
DURATION_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800)
#: Bucket bounds of the limiter wait histogram, in seconds.
WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

_KINDS: Final = {
    "VaryRequest": "vary",
    "GenerateRequest": "generate",
    "UpscaleRequest": "upscale",
    "ExtendRequest": "extend",
}


@functools.lru_cache(maxsize=16)
def provider_name(base_url: str | yarl.URL) -> str:
    """``gen_ai.provider.name`` for an API base URL: ``kie``, ``midapi``, else the host."""
    host = yarl.URL(str(base_url)).host or ""
    for known in ("kie", "midapi"):
        if host == f"{known}.ai" or host.endswith(f".{known}.ai"):
            return known
    return host


def request_kind(request: object) -> str:
    """``midvary.request.kind`` of a request: generate, vary, upscale or extend."""
    return _KINDS.get(type(request).__name__, type(request).__name__)


def _output_type(request: object) -> str:
    if request_kind(request) == "extend":
        return "video"
    task_type = getattr(request, "task_type", None)
    return "video" if isinstance(task_type, str) and "video" in task_type else "image"


def _capture_content() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


class _Instruments:
    """The tracer and the metric instruments, made once per process."""

    def __init__(self) -> None:
        # Proxies: they follow a provider the application sets after midvary was imported.
        self.tracer = otel_trace.get_tracer(SCOPE, VERSION)
        meter = otel_metrics.get_meter(SCOPE, VERSION)
        self.submissions = meter.create_counter(
            "midvary.submissions", unit="{submission}", description="Submissions by outcome"
        )
        self.throttled = meter.create_counter(
            "midvary.throttled", unit="{answer}", description="429 and 455 answers"
        )
        self.polls = meter.create_counter(
            "midvary.polls", unit="{request}", description="record-info requests"
        )
        self.in_flight = meter.create_up_down_counter(
            "midvary.tasks.in_flight", unit="{task}", description="Accepted tasks not seen final"
        )
        self.duration = meter.create_histogram(
            "midvary.task.duration",
            unit="s",
            description="Task duration by the provider's own times",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.result_delay = meter.create_histogram(
            "midvary.result.delay",
            unit="s",
            description="From a task's completion (provider time) to its final record seen",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.limiter_wait = meter.create_histogram(
            "midvary.limiter.wait",
            unit="s",
            description="Time a submission waited for the rate limiter",
            explicit_bucket_boundaries_advisory=list(WAIT_BUCKETS),
        )
        self.credits_spent = meter.create_counter(
            "midvary.credits.spent", unit="{credit}", description="Credits spent, where known"
        )


_instruments: _Instruments | None = None


#: What the API hands out until an application sets a provider of an SDK (the meter one's
#: class is private to the API, hence its name).
_UNSET_METER_PROVIDERS: Final = ("_ProxyMeterProvider", "NoOpMeterProvider")


def _configured() -> bool:
    """Whether the application has set a tracer or a meter provider (an SDK's)."""
    tracer_provider = otel_trace.get_tracer_provider()
    if not isinstance(
        tracer_provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider
    ):
        return True
    return type(otel_metrics.get_meter_provider()).__name__ not in _UNSET_METER_PROVIDERS


def _get() -> _Instruments | None:
    """The instruments, or ``None`` when nothing would receive what they record.

    Without an SDK the API's objects do nothing, but making spans and attributes still costs
    a good share of a request's CPU: skipped until a provider is set (checked on each call,
    so one set later is used from then on).
    """
    global _instruments  # noqa: PLW0603 - one set of instruments per process, made lazily
    if not AVAILABLE or not _configured():
        return None
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


class Submission:
    """What the submitter tells the span of one submission (a no-op without OpenTelemetry)."""

    __slots__ = ("_instruments", "_kind", "_outcome", "_span", "attempts")

    def __init__(self, span: Any, kind: str, instruments: _Instruments | None = None) -> None:
        self._span = span
        self._kind = kind
        # What records its metrics, looked up once per submission (None: nothing would).
        self._instruments = instruments
        self._outcome: str | None = None
        self.attempts = 0

    def attempt(self) -> None:
        """A POST is about to be sent."""
        self.attempts += 1

    def accepted(self, task_id: str, outcome: str = "accepted") -> None:
        """The submission names ``task_id``: ``accepted``, ``reattached`` or ``recovered``."""
        self._outcome = outcome
        if self._span is not None:
            self._span.set_attribute("gen_ai.response.id", task_id)
        instruments = self._instruments
        if instruments is not None and outcome != "reattached":
            instruments.in_flight.add(1, {"midvary.request.kind": self._kind})

    def end(self, exc: BaseException | None) -> None:
        """The submission ended, with ``exc`` or without."""
        outcome = self._outcome
        error_type: str | None = None
        if outcome is None:
            if isinstance(exc, SubmitUncertainError):
                outcome = "uncertain"
                error_type = "uncertain"
            elif exc is not None:
                outcome = "refused"
                error_type = str(exc.code) if isinstance(exc, APIError) else type(exc).__name__
        instruments = self._instruments
        if instruments is None:
            return
        instruments.submissions.add(
            1, {"midvary.request.kind": self._kind, "midvary.submission": outcome or "none"}
        )
        span = self._span
        if outcome is not None:
            span.set_attribute("midvary.submission", outcome)
        span.set_attribute("midvary.submission.attempts", self.attempts)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))


@contextlib.contextmanager
def submission(request: SubmitRequest, base_url: yarl.URL) -> Iterator[Submission]:
    """The span of one submission of ``request`` (the current span's child)."""
    kind = request_kind(request)
    instruments = _get()
    if instruments is None:
        yield Submission(None, kind)
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "generate_content",
        "gen_ai.provider.name": provider_name(base_url),
        "gen_ai.request.model": MODEL,
        "gen_ai.output.type": _output_type(request),
        "midvary.request.kind": kind,
    }
    parent = getattr(request, "task_id", None)
    if isinstance(parent, str):
        attributes["midvary.parent_task_id"] = parent
    if _capture_content():
        for field in ("prompt", "water_mark"):
            value = getattr(request, field, None)
            if isinstance(value, str):
                attributes[f"midvary.request.{field}"] = value
    with instruments.tracer.start_as_current_span(
        f"generate_content {MODEL}",
        kind=otel_trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        state = Submission(span, kind, instruments)
        try:
            yield state
        except BaseException as exc:
            state.end(exc)
            raise
        state.end(None)


class Wait:
    """What a handle's wait tells its span (a no-op without OpenTelemetry)."""

    __slots__ = ("_instruments", "_span", "callback", "polls")

    def __init__(self, span: Any, instruments: _Instruments | None = None) -> None:
        self._span = span
        # What records its metrics, looked up once per wait (None: nothing would).
        self._instruments = instruments
        self.polls = 0
        self.callback = False

    def polled(self) -> None:
        """One record-info GET of this wait was answered or failed."""
        self.polls += 1
        if self._instruments is not None:
            self._instruments.polls.add(1)

    def seen_final(self, record: TaskRecord, kind: str | None) -> None:
        """The wait saw its task final first: see :func:`seen_final`."""
        _record_final(self._instruments, record, kind)


@contextlib.contextmanager
def wait(task_id: str, base_url: yarl.URL) -> Iterator[Wait]:
    """The span of one wait for ``task_id`` (the current span's child)."""
    instruments = _get()
    if instruments is None:
        yield Wait(None)
        return
    with instruments.tracer.start_as_current_span(
        f"fetch_response {MODEL}",
        kind=otel_trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "fetch_response",
            "gen_ai.provider.name": provider_name(base_url),
            "gen_ai.response.id": task_id,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        state = Wait(span, instruments)
        outcome = "succeeded"
        try:
            yield state
        except TaskFailedError:
            outcome = "failed"
            raise
        except TaskTimeoutError:
            outcome = "timed_out"
            raise
        except BaseException as exc:
            outcome = "error"
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            span.set_attribute("midvary.wait.outcome", outcome)
            span.set_attribute("midvary.polls", state.polls)
            span.set_attribute("midvary.wait.callback", state.callback)
            if outcome != "succeeded":
                span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))


class FanOutSpan:
    """The parent span of one fan-out's jobs (a no-op without OpenTelemetry).

    A fan-out's jobs run in tasks of their own, started by its driver task; each is started
    in :meth:`task_context`, so their submission and wait spans are this span's children.
    """

    __slots__ = ("_context", "_span")

    def __init__(self, span: Any, context: Any) -> None:
        self._span = span
        self._context = context

    def task_context(self) -> contextvars.Context | None:
        """The context to start a job's task in (``None``: the current one, as usual)."""
        if self._span is None:
            return None
        context = contextvars.copy_context()
        context.run(otel_context.attach, self._context)
        return context

    def end(self, *, jobs: int, billable: int, stopped_by: APIError | None) -> None:
        """The fan-out closed: what it ran, and the account refusal that stopped it."""
        span = self._span
        if span is None:
            return
        span.set_attribute("midvary.fan_out.jobs", jobs)
        span.set_attribute("midvary.fan_out.billable", billable)
        if stopped_by is not None:
            span.set_attribute("error.type", str(stopped_by.code))
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))
        span.end()


def fan_out() -> FanOutSpan:
    """Start the span of a fan-out, the current span's child; end it with ``end()``."""
    instruments = _get()
    if instruments is None:
        return FanOutSpan(None, None)
    span = instruments.tracer.start_span("midvary.fan_out", kind=otel_trace.SpanKind.INTERNAL)
    return FanOutSpan(span, otel_trace.set_span_in_context(span))


def polled() -> None:
    """One record-info GET was answered or failed."""
    instruments = _get()
    if instruments is not None:
        instruments.polls.add(1)


def throttled(code: int) -> None:
    """The provider answered 429 (rate limited) or 455 (maintenance)."""
    instruments = _get()
    if instruments is not None:
        instruments.throttled.add(1, {"midvary.code": code})


def seen_final(record: TaskRecord, kind: str | None) -> None:
    """A task was first seen final: its duration, the delay to seeing it, one less in flight."""
    _record_final(_get(), record, kind)


def _record_final(instruments: _Instruments | None, record: TaskRecord, kind: str | None) -> None:
    if instruments is None:
        return
    attributes = {"midvary.request.kind": kind or "unknown", "midvary.status": str(record.status)}
    if kind is not None:
        instruments.in_flight.add(-1, {"midvary.request.kind": kind})
    created, completed = record.created_at, record.completed_at
    if created is not None and completed is not None and completed >= created:
        instruments.duration.record((completed - created).total_seconds(), attributes)
    if completed is not None:
        delay = (datetime.now(UTC) - completed).total_seconds()
        if delay >= 0:
            instruments.result_delay.record(delay, attributes)


def limiter_waited(seconds: float) -> None:
    """A submission waited ``seconds`` for the rate limiter."""
    instruments = _get()
    if instruments is not None:
        instruments.limiter_wait.record(seconds)


def credits_spent(credits: int) -> None:
    """A run spent ``credits`` (the balance before minus after, when both are known)."""
    instruments = _get()
    if instruments is not None and credits > 0:
        instruments.credits_spent.add(credits)
