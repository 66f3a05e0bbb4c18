"""OpenTelemetry: spans and metrics as an application with an SDK sees them (in-memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import midvary
from midvary._telemetry import CAPTURE_CONTENT_ENV, provider_name
from midvary.testing import FakeProvider

_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def _sdk() -> None:
    """An application's SDK, set once per process (OpenTelemetry's providers are global)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The span exporter, emptied for this test."""
    _EXPORTER.clear()
    return _EXPORTER


def metric_points() -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    """Every data point the SDK holds now: (name, attributes) -> sum, count or value."""
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    data = _READER.get_metrics_data()
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "midvary":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted(dict(point.attributes or {}).items())))
                    points[key] = getattr(point, "count", None) or getattr(point, "value", None)
    return points


def grown(before: dict[Any, Any], after: dict[Any, Any], name: str) -> dict[Any, Any]:
    """How each point of metric ``name`` grew between two readings."""
    return {
        attributes: value - before.get((metric, attributes), 0)
        for (metric, attributes), value in after.items()
        if metric == name and value != before.get((metric, attributes), 0)
    }


def by_name(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans called ``name``, in the order they ended."""
    return [span for span in spans.get_finished_spans() if span.name == name]


async def test_a_chain_makes_submission_and_wait_spans_under_the_callers_span(
    midvary_session: midvary.Session, spans: InMemorySpanExporter
) -> None:
    """Generate -> vary -> upscale: a CLIENT span per submission and per wait, as children."""
    before = metric_points()
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("request") as app:
        grid = await midvary_session.run(midvary.GenerateRequest(prompt="a red fox"))
        varied = await midvary_session.run(midvary.VaryRequest(task_id=grid.task_id, image_index=1))
        big = await midvary_session.run(midvary.UpscaleRequest(task_id=grid.task_id, image_index=2))
    submits = by_name(spans, "generate_content midjourney")
    waits = by_name(spans, "fetch_response midjourney")
    assert [span.attributes["midvary.request.kind"] for span in submits] == [
        "generate",
        "vary",
        "upscale",
    ]
    assert [span.attributes["gen_ai.response.id"] for span in submits] == [
        grid.task_id,
        varied.task_id,
        big.task_id,
    ]
    assert [span.attributes["gen_ai.response.id"] for span in waits] == [
        grid.task_id,
        varied.task_id,
        big.task_id,
    ]
    app_id = app.get_span_context().span_id
    for span in [*submits, *waits]:
        assert span.parent is not None
        assert span.parent.span_id == app_id
        assert span.kind is trace.SpanKind.CLIENT
    for span in submits:
        attributes = span.attributes or {}
        assert attributes["gen_ai.operation.name"] == "generate_content"
        assert attributes["gen_ai.provider.name"] == "127.0.0.1"
        assert attributes["gen_ai.output.type"] == "image"
        assert attributes["midvary.submission"] == "accepted"
        assert attributes["midvary.submission.attempts"] == 1
        assert "midvary.request.prompt" not in attributes  # content is opt-in
    for span in waits:
        attributes = span.attributes or {}
        assert attributes["midvary.wait.outcome"] == "succeeded"
        assert attributes["midvary.polls"] >= 1
        assert attributes["midvary.wait.callback"] is False
    after = metric_points()
    assert grown(before, after, "midvary.submissions") == {
        (("midvary.request.kind", kind), ("midvary.submission", "accepted")): 1
        for kind in ("generate", "vary", "upscale")
    }
    durations = grown(before, after, "midvary.task.duration")
    assert sum(durations.values()) == 3
    polls = grown(before, after, "midvary.polls")
    assert sum(polls.values()) == sum(span.attributes["midvary.polls"] for span in waits)  # type: ignore[index, misc]
    in_flight = {
        attributes: value
        for (name, attributes), value in after.items()
        if name == "midvary.tasks.in_flight"
    }
    assert set(in_flight.values()) == {0}  # each accepted task was seen final


async def test_a_refused_submission_says_the_envelope_code(
    midvary_session: midvary.Session, fake_provider: FakeProvider, spans: InMemorySpanExporter
) -> None:
    """Credits at 0: code 402 inside HTTP 200; the span says refused, error.type 402."""
    fake_provider.update(credits=0)
    with pytest.raises(midvary.InsufficientCreditsError):
        await midvary_session.vary("parent-1", 0)
    (span,) = by_name(spans, "generate_content midjourney")
    assert span.attributes is not None
    assert span.attributes["midvary.submission"] == "refused"
    assert span.attributes["error.type"] == "402"
    assert span.status.status_code is trace.StatusCode.ERROR


async def test_a_lost_answer_is_an_uncertain_submission(
    midvary_session: midvary.Session, fake_provider: FakeProvider, spans: InMemorySpanExporter
) -> None:
    """The answer is lost after the task was made: uncertain, one attempt, an error span."""
    fake_provider.update(drop_submit_answer_rate=1.0)
    with pytest.raises(midvary.SubmitUncertainError):
        await midvary_session.vary("parent-1", 0)
    (span,) = by_name(spans, "generate_content midjourney")
    assert span.attributes is not None
    assert span.attributes["midvary.submission"] == "uncertain"
    assert span.attributes["midvary.submission.attempts"] == 1
    assert span.status.status_code is trace.StatusCode.ERROR


async def test_a_fan_out_is_the_parent_of_its_jobs_spans(
    midvary_session: midvary.Session, spans: InMemorySpanExporter
) -> None:
    """submit_all: one fan-out span under the caller's, every job's spans under it."""
    requests = [midvary.VaryRequest(task_id="parent-1", image_index=i) for i in range(3)]
    with trace.get_tracer("app").start_as_current_span("batch") as app:
        outcomes = await midvary_session.submit_all(requests)
    assert all(outcome.ok for outcome in outcomes)
    (fan_out,) = by_name(spans, "midvary.fan_out")
    assert fan_out.parent is not None
    assert fan_out.parent.span_id == app.get_span_context().span_id
    assert fan_out.attributes is not None
    assert fan_out.attributes["midvary.fan_out.jobs"] == 3
    jobs = [
        *by_name(spans, "generate_content midjourney"),
        *by_name(spans, "fetch_response midjourney"),
    ]
    assert len(jobs) == 6
    fan_out_id = fan_out.get_span_context().span_id
    assert all(span.parent is not None and span.parent.span_id == fan_out_id for span in jobs)


async def test_prompts_are_recorded_only_when_content_capture_is_on(
    midvary_session: midvary.Session, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conventions' content switch: off, no prompt; on, the prompt on the span."""
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
    await midvary_session.generate("a blue owl")
    (span,) = by_name(spans, "generate_content midjourney")
    assert span.attributes is not None
    assert span.attributes["midvary.request.prompt"] == "a blue owl"


async def test_no_secret_in_any_span_or_metric(
    fake_provider: FakeProvider, spans: InMemorySpanExporter
) -> None:
    """Key, callback URL and token appear in no exported span or metric."""
    before = metric_points()
    async with midvary.CallbackReceiver(safety_poll=midvary.testing.FAST_POLL) as receiver:
        await receiver.start()
        hook = str(receiver.public_url)
        async with midvary.Session(
            api_key=fake_provider.api_key,
            base_url=fake_provider.base_url,
            callbacks=receiver,
            poll=midvary.testing.FAST_POLL,
            retry=midvary.testing.FAST_RETRY,
        ) as session:
            await session.run(midvary.VaryRequest(task_id="parent-1", image_index=0))
            fake_provider.update(credits=0)
            with pytest.raises(midvary.InsufficientCreditsError):
                await session.vary("parent-1", 1)
    (task,) = fake_provider.tasks.values()
    assert task.callback_url is not None
    token = task.callback_url.rsplit("/", 1)[1]
    exported = json.dumps([json.loads(span.to_json()) for span in spans.get_finished_spans()])
    exported += str(grown(before, metric_points(), "midvary.submissions"))
    assert len(spans.get_finished_spans()) == 3
    assert fake_provider.api_key not in exported
    assert hook not in exported
    assert token not in exported


def test_the_provider_name_comes_from_the_api_host() -> None:
    """kie.ai and midapi.ai by name; any other host as it is."""
    assert provider_name("https://api.kie.ai") == "kie"
    assert provider_name("https://api.midapi.ai/") == "midapi"
    assert provider_name("http://127.0.0.1:8000") == "127.0.0.1"


def test_without_opentelemetry_installed_nothing_changes() -> None:
    """With the API missing, the instrumentation is a no-op and a submission still works."""
    script = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import midvary, midvary.testing
from midvary import _telemetry
assert not _telemetry.AVAILABLE

async def main():
    settings = midvary.testing.FakeSettings(task_duration=(0.05, 0.1))
    async with midvary.testing.FakeProvider(settings=settings) as fake, midvary.Session(
        api_key=fake.api_key, base_url=fake.base_url
    ) as session:
        record = await session.run(midvary.VaryRequest(task_id="parent-1", image_index=0))
        request = midvary.VaryRequest(task_id="parent-1", image_index=1)
        outcomes = await session.submit_all([request])
        print(record.status, outcomes[0].ok)

asyncio.run(main())
"""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["success", "True"]


async def test_waits_for_the_rate_limiter_are_measured(fake_provider: FakeProvider) -> None:
    """Submissions held back by the session's limiter record their waits, in seconds."""
    before = metric_points()
    async with midvary.Session(
        api_key=fake_provider.api_key,
        base_url=fake_provider.base_url,
        submit_rate=(1, 0.2),
        poll=midvary.testing.FAST_POLL,
        retry=midvary.testing.FAST_RETRY,
    ) as session:
        for index in range(3):
            await session.vary("parent-1", index)
    waits = grown(before, metric_points(), "midvary.limiter.wait")
    assert sum(waits.values()) >= 2  # the second and third submissions waited


def test_without_an_sdk_nothing_is_made_until_a_provider_is_set() -> None:
    """API installed, no SDK: no instruments, no spans; a provider set later is then used."""
    script = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from midvary import _telemetry
assert _telemetry.AVAILABLE and _telemetry._get() is None
trace.set_tracer_provider(TracerProvider())
assert _telemetry._get() is not None
print("ok")
"""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
