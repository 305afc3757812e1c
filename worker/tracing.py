"""OpenTelemetry tracing: configured by the standard OTEL_* variables alone, and off by default.

Off (no exporter configured: OTEL_TRACES_EXPORTER unset or `none`, and no OTLP endpoint), nothing
is installed: no SDK, no instrumentation, and every helper below returns after one flag test.

On, `setup` installs an SDK TracerProvider whose sampler, resource, batch processor and OTLP
exporter read their own OTEL_* variables; the aio-pika instrumentation (a CONSUMER span per
delivery, which reads the inbound `traceparent` and `tracestate`, or starts a trace without
them); the aiohttp-client one on the HTTP tools' session alone (`http_trace_configs`: an
OpenAI request's span is its GenAI one, and a second span per request would double the cost of
the commonest span); and the worker's own spans, made by the helpers here: intake, batch, run,
each OpenAI request (GenAI semantic conventions, worker/backends/genai.py), each tool call the
worker serves, each store operation, each outbox publish and each activity publish.

Under a trace the sampler left out, the helpers make no span at all (`left_out`): the SDK's
samplers leave out every span of such a trace, and making each one only to drop it was most of
what a sampled-out event cost.

A trace outlives the process that started it: intake stores its span's context with the event
(`inbound_events.trace_context`), the batch span continues the first event's and links the
others', and replies and dead letters carry the context in their outbox headers, which the
publish span continues and re-injects. Spans name IDs, never content: no bodies, texts, SQL
parameters, URLs' queries or exception messages (the exporter strips the latter, whoever
recorded them).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, cast

import structlog
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = structlog.get_logger("worker.tracing")

SERVICE_NAME = "assistant-worker"
TRACER_NAME = "assistant_worker"
# What OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names them (their entry points' names).
AIO_PIKA = "aio-pika"
AIOHTTP_CLIENT = "aiohttp-client"

# Carrier keys of the W3C propagator (the default OTEL_PROPAGATORS has it first).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_NOTHING: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)
_UNSUPPRESSED: AbstractContextManager[None] = nullcontext()


class _State:
    """What `setup` installed; `tracer` is None while tracing is off."""

    tracer: trace.Tracer | None = None
    # Whether the sampler leaves out each child of a span it left out: true of the SDK's own
    # (they follow the parent's decision, or decide by the trace ID alone), not known of others.
    children_follow: bool = False
    # The aiohttp TraceConfig for HTTP tools' requests, while that instrumentation is on.
    http_trace_config: Any = None


_state = _State()


def enabled() -> bool:
    return _state.tracer is not None


# -- setup ----------------------------------------------------------------------------------


def exporters_requested(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the OTEL_* variables ask for; none means tracing stays off.

    An explicit OTEL_TRACES_EXPORTER wins (`none`: off); unset, an OTLP endpoint asks for
    `otlp`. OTEL_SDK_DISABLED=true turns everything off, as in the SDK.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [n for n in named if n]
    if named:
        return [n for n in named if n != "none"]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return ["otlp"] if endpoint else []


class Tracing:
    """Tracing as `setup` installed it, until `shutdown` flushes what is left and removes it."""

    def __init__(self, provider: TracerProvider, instrumentors: Sequence[Any]) -> None:
        self._provider = provider
        self._instrumentors = instrumentors

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Exports what is still queued, within `timeout_s` (an exporter that is down costs no
        more than that), and removes the instrumentation."""
        _uninstall()
        for instrumentor in self._instrumentors:
            instrumentor.uninstrument()
        # The SDK's shutdown waits for its export to give up: a daemon thread bounds it.
        done = threading.Thread(target=self._provider.shutdown, daemon=True)
        done.start()
        done.join(timeout_s)
        if done.is_alive():
            log.warning("tracing_flush_timed_out", timeout_s=timeout_s)


def setup(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Installs tracing if the OTEL_* variables configure an exporter; else nothing (None)."""
    env = os.environ if environ is None else environ
    names = exporters_requested(env)
    if not names:
        return None
    exporters = [e for e in (_exporter(name, env) for name in names) if e is not None]
    if not exporters:
        return None
    provider = _provider(exporters)
    instrumentors = _instrument(provider, env)
    _install(provider)
    log.info("tracing_enabled", exporters=names, instrumentations=len(instrumentors))
    return Tracing(provider, instrumentors)


def _provider(exporters: Sequence[SpanExporter]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name it when they are set.
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # The sampler is the SDK's from OTEL_TRACES_SAMPLER; the processor reads OTEL_BSP_*.
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        # Duck-typed: subclassing the SDK's SpanExporter would import the SDK with this module.
        scrubbing = cast("SpanExporter", _ContentFree(exporter))
        provider.add_span_processor(BatchSpanProcessor(scrubbing))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # Set once per process (the API refuses a second); the worker's own spans and the
        # instrumentations use `provider` directly, so a later setup (tests) works as well.
        trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stdout carries the JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr)
    if name != "otlp":
        log.warning("tracing_exporter_unsupported", exporter=name, supported=["otlp", "console"])
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() != "http/protobuf":
        log.warning("tracing_protocol_unsupported", protocol=protocol, supported="http/protobuf")
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers, timeout and compression: its own OTEL_EXPORTER_OTLP_* variables.
    return OTLPSpanExporter()


def _install(provider: TracerProvider) -> None:
    """The worker's helpers make spans of `provider` from now on."""
    _state.tracer = provider.get_tracer(TRACER_NAME)
    _state.children_follow = _children_follow(provider)


def _uninstall() -> None:
    _state.tracer = None
    _state.children_follow = False
    _state.http_trace_config = None


def _children_follow(provider: TracerProvider) -> bool:
    from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler, TraceIdRatioBased

    return isinstance(provider.sampler, ParentBased | StaticSampler | TraceIdRatioBased)


def _instrument(provider: TracerProvider, env: Mapping[str, str]) -> list[Any]:
    """The maintained instrumentations that fit, less those OTEL_PYTHON_DISABLED_INSTRUMENTATIONS
    names. asyncpg's does not fit: it records Postgres' error DETAIL, which can quote a row.
    aiohttp-client's is a TraceConfig for the HTTP tools' session, not a patch of every session:
    the OpenAI client's requests have their GenAI spans."""
    disabled = {n.strip() for n in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    instrumentors: list[Any] = []
    if AIO_PIKA not in disabled:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor

        pika = AioPikaInstrumentor()
        pika.instrument(tracer_provider=provider)
        instrumentors.append(pika)
    if AIOHTTP_CLIENT not in disabled:
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        _state.http_trace_config = create_trace_config(
            url_filter=_without_query, tracer_provider=provider
        )
    return instrumentors


def http_trace_configs() -> list[Any]:
    """The aiohttp TraceConfigs for a session of HTTP tools: a CLIENT span per request while
    tracing is on, none while it is off."""
    config = _state.http_trace_config
    return [] if config is None else [config]


def _without_query(url: Any) -> str:
    # An HTTP tool's URL may carry a token in its query; OpenAI's carry only paging cursors.
    return str(url.with_query(None).with_fragment(None).with_user(None))


class _ContentFree:
    """Exports spans with each exception event cut to its type: an exception's message and
    stack can quote what the worker never puts in a span (a Postgres DETAIL, a URL's token)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([_scrubbed(s) for s in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


_KEPT_EXCEPTION_ATTRIBUTES = ("exception.type", "exception.escaped")


def _scrubbed(span: ReadableSpan) -> ReadableSpan:
    if not any(event.name == "exception" for event in span.events):
        return span
    from opentelemetry.sdk.trace import Event, ReadableSpan

    events = [
        Event(
            event.name,
            {k: v for k, v in (event.attributes or {}).items() if k in _KEPT_EXCEPTION_ATTRIBUTES},
            event.timestamp,
        )
        if event.name == "exception"
        else event
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# -- propagation ----------------------------------------------------------------------------


def current_carrier() -> dict[str, str] | None:
    """The current span's context as propagation headers (W3C `traceparent`, `tracestate`),
    for storing with an event; None while tracing is off."""
    if _state.tracer is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def with_current_context(headers: Mapping[str, Any]) -> dict[str, Any]:
    """`headers` carrying the current span's context instead of whatever context they had
    (a dead letter's copied inbound headers); unchanged while tracing is off."""
    carrier = current_carrier()
    if carrier is None:
        return dict(headers)
    kept = {k: v for k, v in headers.items() if k not in (TRACEPARENT, TRACESTATE)}
    return {**kept, **carrier}


def _context_of(carrier: Mapping[str, Any] | None) -> Context | None:
    """The context a stored or received carrier holds; None without a valid one."""
    if not carrier:
        return None
    from opentelemetry import propagate

    text = {k: v for k, v in carrier.items() if isinstance(v, str)}
    context = propagate.extract(text)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


# -- spans ----------------------------------------------------------------------------------


def left_out(context: Context | None = None) -> bool:
    """Whether the current span (or `context`'s) is of a trace the sampler left out, so that
    every span made under it would be left out too: then the helpers make none."""
    if not _state.children_follow:
        return False
    found = trace.get_current_span(context).get_span_context()
    return found.is_valid and not found.trace_flags.sampled


def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractContextManager[Span]:
    """A child of the current span, current for the block."""
    tracer = _state.tracer
    if tracer is None or left_out():
        return _NOTHING
    return _current(tracer.start_span(name, kind=kind, attributes=attributes))


def child_span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.CLIENT
) -> AbstractContextManager[Span]:
    """As `span`, but only under a span being recorded: a store operation of a background loop
    (lease renewal, sweeps, probes) would otherwise start a trace of its own every few seconds."""
    tracer = _state.tracer
    if tracer is None or not trace.get_current_span().is_recording():
        return _NOTHING
    return _current(tracer.start_span(name, kind=kind, attributes=attributes))


def continued_span(
    name: str,
    carriers: Sequence[Mapping[str, Any] | None],
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """A span continuing the first valid stored context of `carriers`, linked to the others'.

    One run answers several events: its batch joins the trace of the first, and each other
    event's trace can find it by the link. With no stored context it is a child of the
    current span (or starts a trace).
    """
    tracer = _state.tracer
    if tracer is None:
        return _NOTHING
    contexts = (c for c in (_context_of(carrier) for carrier in carriers) if c is not None)
    parent = next(contexts, None)
    if parent is not None and left_out(parent):
        # Current still, for the trace's ID to reach the reply's headers; the other carriers
        # are not read (links of a span nobody records).
        return trace.use_span(trace.get_current_span(parent), end_on_exit=False)
    links = [Link(trace.get_current_span(c).get_span_context()) for c in contexts]
    return _current(tracer.start_span(name, context=parent, attributes=attributes, links=links))


def producing(
    name: str, headers: Mapping[str, Any], attributes: Mapping[str, Any]
) -> AbstractContextManager[dict[str, Any]]:
    """A PRODUCER span continuing the context `headers` carry; yields the headers to publish,
    which carry the span's own context (a consumer's span becomes its child)."""
    tracer = _state.tracer
    if tracer is None:
        return nullcontext(dict(headers))
    return _producing(tracer, name, headers, attributes)


def publish_attributes(exchange: str, routing_key: str, message_id: str) -> dict[str, str]:
    """A PRODUCER span's messaging attributes (semantic conventions) for one AMQP publish."""
    return {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": message_id,
    }


def uninstrumented() -> AbstractContextManager[None]:
    """The instrumentations make no span in the block: around a publish through aio-pika's
    `Exchange.publish`, whose PRODUCER span would duplicate the worker's own and replace the
    context the message carries with its own."""
    if _state.tracer is None:
        return _UNSUPPRESSED
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


@contextlib.contextmanager
def _producing(
    tracer: trace.Tracer, name: str, headers: Mapping[str, Any], attributes: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    from opentelemetry import propagate

    parent = _context_of(headers)
    if parent is not None and left_out(parent):
        # `headers` carry the trace already: the consumer's spans are left out with it.
        yield dict(headers)
        return
    started = tracer.start_span(name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes)
    with _current(started):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        kept = {k: v for k, v in headers.items() if k not in (TRACEPARENT, TRACESTATE)}
        yield {**kept, **carrier}


@contextlib.contextmanager
def _current(started: Span) -> Iterator[Span]:
    """Makes `started` current for the block and ends it; a failure sets its status to the
    exception's class alone (the SDK's own would add the message, and record the stack)."""
    with trace.use_span(
        started, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield started
        except BaseException as exc:
            failed(started, exc)
            raise


def failed(target: Span, cause: BaseException | str) -> None:
    """Marks the span failed, naming the exception's `label` (the worker's ApiErrors carry one:
    a status code, `timeout`, ...) or else its class, never its message; or naming `cause`
    itself, a kind of failure without an exception (a tool's output too large)."""
    if target.is_recording():
        label = cause if isinstance(cause, str) else getattr(cause, "label", None)
        name = label if isinstance(label, str) else type(cause).__name__
        target.set_attribute("error.type", name)
        target.set_status(Status(StatusCode.ERROR, name))


def annotate(attributes: Mapping[str, Any]) -> None:
    """Adds `attributes` (those not None) to the current span; nothing while tracing is off."""
    if _state.tracer is not None:
        set_attributes(trace.get_current_span(), attributes)


def set_attributes(target: Span, attributes: Mapping[str, Any]) -> None:
    if target.is_recording():
        target.set_attributes({k: v for k, v in attributes.items() if v is not None})
