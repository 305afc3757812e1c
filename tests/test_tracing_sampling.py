"""Tracing under sampling: in a trace the sampler left out, the worker's helpers make no spans
(what a sampled-out event costs), yet the trace's ID still travels to the reply's headers; a
sampler of the operator's own is asked about every span, as the SDK would ask it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

from worker import tracing


class CountingParentBased(ParentBased):
    """The SDK's default sampler, counting how often it is asked."""

    def __init__(self) -> None:
        super().__init__(ALWAYS_ON)
        self.asked = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.asked += 1
        return super().should_sample(*args, **kwargs)


class SamplesEverything(Sampler):
    """An operator's own sampler: keeps every span, whatever its parent's decision."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "SamplesEverything"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()
    tracing._uninstall()


def install(exporter: InMemorySpanExporter, sampler: Sampler) -> None:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing._install(provider)


def carrier(sampled: bool) -> dict[str, str]:
    flags = "01" if sampled else "00"
    return {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-{flags}"}


def parent_of(headers: dict[str, str]) -> NonRecordingSpan:
    _, trace_id, span_id, flags = headers["traceparent"].split("-")
    return NonRecordingSpan(
        SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)))
    )


def trace_id_of(headers: dict[str, str] | None) -> str:
    assert headers is not None
    return headers["traceparent"].split("-")[1]


def an_event(inbound: dict[str, str], stored_by_others: dict[str, str]) -> dict[str, Any]:
    """What the relay does with one event, through the tracing helpers: intake (storing the
    context), the batch continuing it, the run and its request, the reply's publish."""
    with (
        trace.use_span(parent_of(inbound)),
        tracing.span("intake"),
        tracing.child_span("postgres intake"),
    ):
        stored = tracing.current_carrier()
    assert stored is not None
    with tracing.continued_span("batch", [stored, stored_by_others]):
        with tracing.span("run"), tracing.span("chat", kind=SpanKind.CLIENT):
            pass
        outbox = tracing.with_current_context({"x-aw-conversation-id": "c-1"})
    with tracing.producing("publish outbound", outbox, {}) as published:
        return {"stored": stored, "outbox": outbox, "published": published}


def test_a_trace_the_sampler_left_out_makes_no_span_and_keeps_its_id(
    exported: InMemorySpanExporter,
) -> None:
    sampler = CountingParentBased()
    install(exported, sampler)
    inbound = carrier(sampled=False)

    seen = an_event(inbound, stored_by_others=carrier(sampled=True))

    assert sampler.asked == 0
    assert exported.get_finished_spans() == ()
    # The helpdesk's trace reaches the reply, still marked as left out.
    assert {trace_id_of(seen[k]) for k in ("stored", "outbox", "published")} == {
        trace_id_of(inbound)
    }
    assert seen["published"]["traceparent"].endswith("-00")
    assert seen["published"]["x-aw-conversation-id"] == "c-1"


def test_a_sampled_trace_makes_every_span(exported: InMemorySpanExporter) -> None:
    # The counterpart: the same calls in a sampled trace make and export each span.
    sampler = CountingParentBased()
    install(exported, sampler)
    inbound = carrier(sampled=True)

    seen = an_event(inbound, stored_by_others=carrier(sampled=False))

    spans = exported.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(
        ["intake", "postgres intake", "batch", "run", "chat", "publish outbound"]
    )
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace_id_of(inbound)}
    assert sampler.asked == len(spans)
    assert seen["published"]["traceparent"].endswith("-01")


def test_a_sampler_of_the_operators_own_is_asked_about_every_span(
    exported: InMemorySpanExporter,
) -> None:
    # Whether it follows the parent's decision is not known, so no span is skipped.
    install(exported, SamplesEverything())
    an_event(carrier(sampled=False), stored_by_others=carrier(sampled=False))
    names = {s.name for s in exported.get_finished_spans()}
    assert {"intake", "batch", "run", "chat", "publish outbound"} <= names
