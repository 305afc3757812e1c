"""Tracing: one connected trace from the inbound event to the published reply, exported over
OTLP/HTTP to a receiver the test serves; and nothing installed while no exporter is configured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.fixtures.relay_tools.tool_server import ToolServer
from tests.fixtures.relay_tools.workers import write_profiles
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import API_KEY, take_messages, worker_env
from worker import tracing
from worker.backends.base import ToolCall, ToolOutput
from worker.events import HandoffRequest, UserMessage
from worker.profiles.model import FunctionTool, Profile
from worker.relay.activity import Activity, ActivityKind, ActivityPublisher
from worker.relay.tools import TurnTools, serve_calls
from worker.settings import BackendName, Settings, Topology
from worker.store.memory import MemoryStore
from worker.store.ports import Store
from worker.store.postgres import PostgresStore, create_pool
from worker.store.records import (
    EventStatus,
    IncomingEvent,
    IntakeResult,
    ToolCallRecord,
    ToolCallState,
)
from worker.toolkit import ToolContext

REPO = Path(__file__).resolve().parent.parent
# aio-pika's consumer span: "<exchange> receive".
RECEIVE = "receive"


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def ids_of(header: str) -> tuple[str, str]:
    """(trace ID, span ID) of a W3C traceparent."""
    version, trace_id, span_id, _flags = header.split("-")
    assert version == "00"
    return trace_id, span_id


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = OtlpReceiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def traced_worker(
    settings: Settings, receiver: OtlpReceiver
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`assistant-worker run` exporting to the receiver; a burst waits 400 ms for company."""
    async with traced_process(settings, receiver) as proc:
        yield proc


@contextlib.asynccontextmanager
async def traced_process(
    settings: Settings, receiver: OtlpReceiver, **extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`assistant-worker run` exporting to the receiver, with `extra` in its environment."""
    env = worker_env(
        settings,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        AW_DEBOUNCE_MS="400",
        AW_SWEEP_INTERVAL_S="0.5",
        **extra,
    )
    env.pop("OTEL_SERVICE_NAME", None)
    env.pop("OTEL_TRACES_EXPORTER", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        async for line in proc.stderr:
            if b'"worker_started"' in line:
                break
        else:
            raise AssertionError("the worker exited before it started")
    # Keep reading, so a chatty worker never blocks on a full pipe.
    drain = asyncio.create_task(_read_all(proc))
    try:
        yield proc
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
        await drain


async def _read_all(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    async for _ in proc.stderr:
        pass


async def send(
    channel: AbstractChannel, topology: Topology, event: dict[str, Any], headers: dict[str, str]
) -> None:
    exchange = await channel.get_exchange(topology.inbound_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            json.dumps(event).encode(),
            message_id=event.get("event_id"),
            content_type="application/json",
            headers=dict(headers),
        ),
        routing_key=topology.inbound_routing_key,
    )


def connected_to(spans: list[ReceivedSpan], leaf: ReceivedSpan) -> list[str]:
    """The names from `leaf` up to the trace's root, failing at a parent that was not exported."""
    by_id = {s.span_id: s for s in spans}
    path, span = [leaf.name], leaf
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        path.append(span.name)
    return path


def named(spans: list[ReceivedSpan], word: str) -> list[ReceivedSpan]:
    """The spans whose name starts with `word`: `chat` finds `chat gpt-4o-mini`."""
    return [s for s in spans if s.name.split()[0] == word]


def received(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """aio-pika's consumer spans: `<exchange> receive`."""
    return [s for s in spans if s.name.endswith(f" {RECEIVE}")]


async def test_one_connected_trace_runs_from_the_inbound_event_to_the_published_reply(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    receiver: OtlpReceiver,
    traced_worker: asyncio.subprocess.Process,
) -> None:
    secret = f"customer-says-{uuid.uuid4().hex}"
    inbound_trace, inbound_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    event = {"event_id": f"evt-{uuid.uuid4().hex[:8]}", "conversation_id": "c-traced"}
    await send(
        channel,
        topology,
        {**event, "text": secret},
        {"traceparent": traceparent(inbound_trace, inbound_span), "tracestate": "helpdesk=1"},
    )

    [reply] = await take_messages(channel, topology.reply_queue, 1, timeout_s=20)
    assert reply.json()["in_reply_to"] == [event["event_id"]]
    reply_trace, reply_parent = ids_of(reply.headers["traceparent"])
    assert reply_trace == inbound_trace

    spans = await receiver.wait_for(
        inbound_trace, {RECEIVE, "intake", "batch", "run", "chat", "postgres", "publish"}
    )
    # The trace hangs from the helpdesk's span: one root, whose parent is the inbound span.
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_span_id not in by_id]
    assert [(r.name, r.parent_span_id) for r in roots] == [
        (f"{topology.inbound_exchange} {RECEIVE}", inbound_span)
    ]
    # The reply's traceparent names the publish span, which leads back up to that root.
    [publish] = [s for s in spans if s.span_id == reply_parent]
    assert publish.name == f"publish {topology.outbound_exchange}"
    assert connected_to(spans, publish) == [
        publish.name,
        "batch",
        "intake",
        f"{topology.inbound_exchange} {RECEIVE}",
    ]
    # The model's answer: a run span under the batch, and GenAI request spans under the run.
    [run] = named(spans, "run")
    assert by_id[run.parent_span_id].name == "batch"
    assert run.attributes["aw.run.polls"] >= 1
    assert run.attributes["aw.run.tool_calls"] == 0
    assert run.attributes["aw.run.status"] == "completed"
    [create] = named(spans, "chat")
    assert create.parent_span_id == run.span_id
    assert create.attributes["gen_ai.provider.name"] == "openai"
    assert create.attributes["gen_ai.operation.name"] == "chat"
    assert create.name == f"chat {create.attributes['gen_ai.request.model']}"
    polls = named(spans, "retrieve_run")
    assert len(polls) == run.attributes["aw.run.polls"]
    assert {p.parent_span_id for p in polls} == {run.span_id}
    # An OpenAI request is its GenAI span alone: no HTTP span doubles it.
    assert not [s for s in spans if {"http.request.method", "http.method"} & set(s.attributes)]
    # Store operations under the spans that made them.
    assert {by_id[s.parent_span_id].name for s in named(spans, "postgres")} >= {"intake", "batch"}
    assert {s.service_name for s in spans} == {"assistant-worker"}

    # Nothing the customer wrote, and no key, in any span of the run.
    everything = json.dumps([(s.name, s.attributes, s.events) for s in receiver.spans])
    assert secret not in everything
    assert API_KEY not in everything


async def test_a_batch_of_several_events_continues_the_first_ones_trace_and_links_the_others(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    receiver: OtlpReceiver,
    traced_worker: asyncio.subprocess.Process,
) -> None:
    # No traceparent: the worker starts a trace for each event.
    first, second = (
        {"event_id": f"evt-{n}-{uuid.uuid4().hex[:8]}", "conversation_id": "c-burst", "text": n}
        for n in ("one", "two")
    )
    await send(channel, topology, first, {})
    await send(channel, topology, second, {})

    [reply] = await take_messages(channel, topology.reply_queue, 1, timeout_s=20)
    # In arrival order (README), which two deliveries taken in at once may swap.
    answered = reply.json()["in_reply_to"]
    assert sorted(answered) == sorted([first["event_id"], second["event_id"]])
    first_in, second_in = answered
    reply_trace, _ = ids_of(reply.headers["traceparent"])
    spans = await receiver.wait_for(reply_trace, {RECEIVE, "intake", "batch", "publish"})
    [receive_span] = received(spans)
    assert receive_span.parent_span_id == ""  # a trace of its own, started by the worker
    [intake] = named(spans, "intake")
    assert intake.attributes["aw.event.id"] == first_in
    [batch] = named(spans, "batch")
    assert batch.parent_span_id == intake.span_id
    assert batch.attributes["aw.batch.events"] == 2
    # The second event's trace is another, and the batch links its intake span.
    [(linked_trace, linked_span)] = batch.links
    assert linked_trace != reply_trace
    others = await receiver.wait_for(linked_trace, {"intake"})
    [other_intake] = named(others, "intake")
    assert other_intake.span_id == linked_span
    assert other_intake.attributes["aw.event.id"] == second_in


async def test_a_dead_letter_carries_the_trace_of_the_event_it_refuses(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    receiver: OtlpReceiver,
    traced_worker: asyncio.subprocess.Process,
) -> None:
    inbound_trace, inbound_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    invalid = {"event_id": f"evt-{uuid.uuid4().hex[:8]}", "conversation_id": "c-bad"}  # no text
    await send(
        channel, topology, invalid, {"traceparent": traceparent(inbound_trace, inbound_span)}
    )

    [dead] = await take_messages(channel, topology.dead_letter_queue, 1, timeout_s=20)
    assert dead.headers["x-aw-reason"] == "schema_invalid"
    dead_trace, dead_parent = ids_of(dead.headers["traceparent"])
    assert dead_trace == inbound_trace
    assert dead_parent != inbound_span  # the worker's own span, not the copied inbound header
    # Two publishes: the dead letter, and the handoff telling the helpdesk (either may be
    # exported first).
    spans = await receiver.wait_for(
        inbound_trace,
        {RECEIVE, "intake", topology.dead_letter_exchange, topology.outbound_exchange},
    )
    [publish] = [s for s in spans if s.span_id == dead_parent]
    [handoff] = [s for s in spans if s.name == f"publish {topology.outbound_exchange}"]
    assert handoff.parent_span_id == publish.parent_span_id
    assert publish.attributes["aw.outbox.kind"] == "dead_letter"
    [intake] = named(spans, "intake")
    assert intake.attributes["aw.intake.result"] == "invalid"
    assert connected_to(spans, publish)[1:] == ["intake", f"{topology.inbound_exchange} {RECEIVE}"]


async def test_a_batch_answered_by_another_process_continues_the_stored_context(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    receiver: OtlpReceiver,
    traced_worker: asyncio.subprocess.Process,
) -> None:
    # Taken in by a worker that died holding the lease: its span's context is in Postgres only.
    taken_trace, taken_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=1)
    try:
        stored = await PostgresStore(pool).intake(
            _incoming("evt-orphan", {"traceparent": traceparent(taken_trace, taken_span)}),
            backend=BackendName.RESPONSES,
            assistant_id=None,
            profile=None,
            owner="a-worker-that-died",
            lease_ttl_s=0.2,
        )
    finally:
        await pool.close()
    assert stored.lease is not None

    # The living worker's sweep takes the conversation over and answers it.
    [reply] = await take_messages(channel, topology.reply_queue, 1, timeout_s=20)
    assert reply.json()["in_reply_to"] == ["evt-orphan"]
    assert ids_of(reply.headers["traceparent"])[0] == taken_trace
    spans = await receiver.wait_for(taken_trace, {"batch", "run", "publish"})
    [batch] = named(spans, "batch")
    assert batch.parent_span_id == taken_span
    assert batch.attributes["aw.batch.resumed"] is False  # opened by the sweeper, not resumed


# -- tool calls and activity ----------------------------------------------------------------

ACTIVITY_KEY = "assistant_activity.v1"
TOOL_SECRET_ENV = "AW_TEST_TRACED_TOOL_SECRET"
TOOL_SECRET = "traced-tool-s3cret-0042"
# What the tools answer: neither may reach a span.
ORDER_ANSWER = "order-answer-5d1c: shipped to 12 Elm Street"
CANARY = "canary-body-9b2e: internal stack trace with a customer's card 4111"
ORDER_PARAMETERS = (
    '{ type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }'
)
# OTLP's span kinds.
INTERNAL, PRODUCER = 1, 4
STATUS_UNSET, STATUS_ERROR = 0, 2


def tool_profiles(orders: ToolServer, refunds: ToolServer) -> str:
    """A profile with two HTTP tools: order_status (answers) and refund (answers 500)."""
    lines = ['[profiles.support]\nmodel = "gpt-4o-mini"\ninstructions = "You help."\n']
    for name, server in (("order_status", orders), ("refund", refunds)):
        lines += [
            f"[profiles.support.tools.{name}]",
            f'description = "The {name} tool."',
            f"parameters = {ORDER_PARAMETERS}",
            f'url = "{server.url}"',
            f'secret_env = "{TOOL_SECRET_ENV}"\n',
        ]
    return "\n".join(lines)


async def with_spans(
    receiver: OtlpReceiver, trace_id: str, span_ids: set[str], timeout_s: float = 15
) -> list[ReceivedSpan]:
    """The trace's spans once those of `span_ids` are among them; fails naming what came."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = receiver.trace(trace_id)
        if span_ids <= {s.span_id for s in spans}:
            return spans
        if time.monotonic() > deadline:
            got = sorted(s.name for s in spans)
            raise AssertionError(f"trace {trace_id} lacks spans {sorted(span_ids)}; has {got}")
        await asyncio.sleep(0.05)


async def test_tool_calls_and_activity_are_spans_of_the_events_trace(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    activity = await channel.declare_queue(f"activity-{uuid.uuid4().hex[:8]}", exclusive=True)
    await activity.bind(topology.outbound_exchange, ACTIVITY_KEY)
    inbound_trace, inbound_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    event = {
        "event_id": f"evt-{uuid.uuid4().hex[:8]}",
        "conversation_id": "c-tools",
        "text": '[[call:order_status {"order_id": "A1"}]] [[call:refund {"order_id": "A1"}]]',
    }
    async with (
        ToolServer(TOOL_SECRET, body=json.dumps({"output": ORDER_ANSWER}).encode()) as orders,
        ToolServer(TOOL_SECRET, status=500, body=CANARY.encode()) as refunds,
    ):
        profiles = write_profiles(tmp_path, tool_profiles(orders, refunds))
        async with traced_process(
            settings,
            receiver,
            AW_ACTIVITY_ROUTING_KEY=ACTIVITY_KEY,
            AW_PROFILES_FILE=str(profiles),
            **{TOOL_SECRET_ENV: TOOL_SECRET},
        ):
            await send(
                channel, topology, event, {"traceparent": traceparent(inbound_trace, inbound_span)}
            )
            [reply] = await take_messages(channel, topology.reply_queue, 1, timeout_s=20)
            seen = await take_messages(channel, activity.name, 3, timeout_s=10)
            # Each activity message names its publish span; the reply, the outbox's.
            parents = [ids_of(a.headers["traceparent"]) for a in [reply, *seen]]
            assert {trace_id for trace_id, _ in parents} == {inbound_trace}
            spans = await with_spans(receiver, inbound_trace, {span for _, span in parents})
    assert {call["name"]: call["status"] for call in reply.json()["tool_calls"]} == {
        "order_status": "ok",
        "refund": "error",
    }
    by_id = {s.span_id: s for s in spans}
    [batch] = named(spans, "batch")
    [run] = named(spans, "run")
    assert run.attributes["aw.run.tool_calls"] == 2

    # Each activity: a PRODUCER span of the worker's own, under the span that emitted it.
    receive = f"{topology.inbound_exchange} {RECEIVE}"
    emitted_by = {"run_started": run, "tool_running": run, "run_ended": batch}
    for message, (_, span_id) in zip(seen, parents[1:], strict=True):
        publish = by_id[span_id]
        kind = message.json()["activity"]
        assert (publish.name, publish.kind) == (f"publish {topology.outbound_exchange}", PRODUCER)
        assert publish.attributes["aw.activity.kind"] == kind
        assert publish.attributes["messaging.message.id"] == message.message_id
        assert publish.parent_span_id == emitted_by[kind].span_id
        assert connected_to(spans, publish)[-1] == receive
    assert sorted(m.json()["activity"] for m in seen) == sorted(emitted_by)
    # aio-pika's own publish span would duplicate it (and name itself in the header).
    assert [s.name for s in spans if s.name.endswith(" send")] == []

    # Each tool call: an INTERNAL execute_tool span under the run, its HTTP request under it.
    tools = {s.attributes.get("gen_ai.tool.name"): s for s in named(spans, "execute_tool")}
    assert set(tools) == {"order_status", "refund"}
    for name, server in (("order_status", orders), ("refund", refunds)):
        tool = tools[name]
        assert (tool.name, tool.kind, tool.parent_span_id) == (
            f"execute_tool {name}",
            INTERNAL,
            run.span_id,
        )
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.type"] == "function"
        [request] = server.received
        assert tool.attributes["gen_ai.tool.call.id"] == request.json()["call_id"]
        children = [s for s in spans if s.parent_span_id == tool.span_id]
        # The call's HTTP request (the aiohttp instrumentation's), and its journal's records.
        http = [s for s in children if {"http.request.method", "http.method"} & set(s.attributes)]
        assert len(http) == 1
        assert {s.name for s in children} - {http[0].name} == {
            "postgres begin_tool_call",
            "postgres end_tool_call",
        }
    assert tools["order_status"].attributes["aw.tool.state"] == "ok"
    assert tools["order_status"].status_code == STATUS_UNSET
    assert tools["refund"].attributes["aw.tool.state"] == "error"
    assert tools["refund"].attributes["error.type"] == "ToolFailed"
    assert tools["refund"].status_code == STATUS_ERROR

    # Neither the tools' arguments nor what they answered, in any span.
    everything = json.dumps([(s.name, s.attributes, s.events) for s in receiver.spans])
    for content in (ORDER_ANSWER, CANARY, '"order_id"', TOOL_SECRET):
        assert content not in everything


# -- off by default -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        # Metrics and logs exporters say nothing about traces.
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "otlp"}, []),
    ],
)
def test_only_an_exporter_for_traces_turns_tracing_on(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert tracing.exporters_requested(environ) == expected


_PROBE = """
import json, sys
import aiohttp, aio_pika
from opentelemetry import trace
from worker import tracing
installed = tracing.setup()
print(json.dumps({
    "installed": installed is not None,
    "enabled": tracing.enabled(),
    "provider": type(trace.get_tracer_provider()).__name__,
    "sdk_imported": any(m.startswith("opentelemetry.sdk") for m in sys.modules),
    "instrumentation_imported": any(
        m.startswith("opentelemetry.instrumentation") for m in sys.modules
    ),
    "aiohttp_wrapped": hasattr(aiohttp.ClientSession.__init__, "__wrapped__"),
    "http_trace_configs": len(tracing.http_trace_configs()),
    "consume_wrapped": hasattr(aio_pika.Queue.consume, "__wrapped__"),
    "carrier": tracing.current_carrier(),
}))
"""


@pytest.mark.parametrize(
    "otel",
    [{}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}],
)
async def test_without_an_exporter_nothing_is_installed(otel: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE,
        env={**env, **otel},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert json.loads(out.splitlines()[-1]) == {
        "installed": False,
        "enabled": False,
        "provider": "ProxyTracerProvider",
        "sdk_imported": False,
        "instrumentation_imported": False,
        "aiohttp_wrapped": False,
        "http_trace_configs": 0,
        "consume_wrapped": False,
        "carrier": None,
    }


async def test_with_an_exporter_the_sdk_and_instrumentations_are_installed(
    receiver: OtlpReceiver,
) -> None:
    # The probe's counterpart, so the test above cannot pass by never looking.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE,
        env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    found = json.loads(out.splitlines()[-1])  # after the worker's log line saying so
    assert found["installed"]
    assert found["enabled"]
    assert found["sdk_imported"]
    assert found["provider"] == "TracerProvider"
    # HTTP tools' requests get client spans from their session's TraceConfig; the OpenAI
    # client's sessions are left as they are (its requests have GenAI spans).
    assert found["http_trace_configs"] == 1
    assert not found["aiohttp_wrapped"]
    assert found["consume_wrapped"]


# -- activity and tool calls, in-process ----------------------------------------------------


@pytest.fixture
def in_memory_tracing() -> Iterator[InMemorySpanExporter]:
    """The worker's helpers tracing into memory, as `setup` would with an exporter."""
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracing._install(provider)
    try:
        yield kept
    finally:
        tracing._uninstall()
        provider.shutdown()


class RecordingExchange:
    """An exchange that keeps what is published to it."""

    name = "helpdesk.outbound"

    def __init__(self) -> None:
        self.published: list[aio_pika.Message] = []
        self.arrived = asyncio.Event()

    async def publish(self, message: aio_pika.Message, routing_key: str) -> None:
        self.published.append(message)
        self.arrived.set()


def activity_message(body: bytes, activity: Activity) -> aio_pika.Message:
    # As the worker's service builds it.
    headers: dict[str, Any] = {"x-aw-conversation-id": activity.conversation_id}
    return aio_pika.Message(body, message_id=activity.event_id, headers=headers)


async def published_activity(emitting: AbstractContextManager[Any]) -> aio_pika.Message:
    """The message of one activity emitted inside `emitting`, once published."""
    exchange = RecordingExchange()
    publisher = ActivityPublisher(exchange, ACTIVITY_KEY, activity_message)
    with emitting:
        publisher.emit(Activity("c-1", ActivityKind.RUN_STARTED, ("evt-1",), "run-1"))
    publishing = asyncio.create_task(publisher.run_forever())
    try:
        async with asyncio.timeout(5):
            await exchange.arrived.wait()
    finally:
        publishing.cancel()
    [message] = exchange.published
    return message


async def test_with_tracing_off_an_activity_message_carries_no_trace_context() -> None:
    assert not tracing.enabled()
    message = await published_activity(tracing.span("run"))
    assert message.headers == {"x-aw-conversation-id": "c-1"}


async def test_a_traced_activity_is_published_in_a_span_continuing_its_emitters(
    in_memory_tracing: InMemorySpanExporter,
) -> None:
    # The counterpart of the test above, so that one cannot pass by never looking.
    message = await published_activity(tracing.span("run"))
    run, publish = sorted(in_memory_tracing.get_finished_spans(), key=lambda s: s.name != "run")
    assert run.context is not None
    assert publish.context is not None
    assert publish.name == "publish helpdesk.outbound"
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == run.context.span_id
    assert dict(publish.attributes or {})["aw.activity.kind"] == "run_started"
    assert message.headers["x-aw-conversation-id"] == "c-1"
    trace_id, span_id = ids_of(str(message.headers["traceparent"]))
    assert (trace_id, span_id) == (
        f"{publish.context.trace_id:032x}",
        f"{publish.context.span_id:016x}",
    )


class Journal:
    """A tool journal in memory: each call begins once, unless `ended` says it already ran."""

    def __init__(self, ended: dict[str, ToolCallRecord] | None = None) -> None:
        self.ended = ended or {}

    async def begin(self, call: ToolCall) -> ToolCallRecord:
        before = self.ended.get(call.call_id)
        if before is not None:
            return before
        return ToolCallRecord(
            call.call_id, call.name, call.arguments, ToolCallState.STARTED, None, None, began=True
        )

    async def end(
        self, call_id: str, state: ToolCallState, output: str, duration_ms: int | None
    ) -> None:
        return None


async def quoting(_arguments: dict[str, Any], _context: ToolContext) -> str:
    raise ValueError("the customer wrote: my card is 4111")


def tool_turn(journal: Journal) -> TurnTools:
    tool = FunctionTool("quoting", "Fails quoting the customer.", {"type": "object"}, quoting)
    profile = Profile("support", "gpt-4o-mini", "You help.", tools=(tool,))

    async def request_handoff(_request: HandoffRequest) -> None:
        return None

    messages = (UserMessage("evt-1", "c-1", "hello"),)
    return TurnTools("c-1", profile, messages, journal, request_handoff)


async def test_a_failing_an_unknown_and_a_replayed_tool_call_each_have_a_span(
    in_memory_tracing: InMemorySpanExporter,
) -> None:
    done = ToolCallRecord("call-3", "quoting", "{}", ToolCallState.OK, '"earlier"', 5)
    turn = tool_turn(Journal({"call-3": done}))
    invented = "lookup_the_customers_card_4111"  # the model's own text: no span shows it
    calls = (
        ToolCall("call-1", "quoting", "{}"),
        ToolCall("call-2", invented, "{}"),
        ToolCall("call-3", "quoting", "{}"),
    )
    outputs = await serve_calls(calls, turn)
    assert outputs[2] == ToolOutput("call-3", '"earlier"')

    spans = {
        dict(s.attributes or {})["gen_ai.tool.call.id"]: s
        for s in in_memory_tracing.get_finished_spans()
    }
    failing, unknown, replayed = spans["call-1"], spans["call-2"], spans["call-3"]
    assert failing.name == "execute_tool quoting"
    assert failing.kind is SpanKind.INTERNAL
    assert dict(failing.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": "call-1",
        "gen_ai.tool.name": "quoting",
        "aw.tool.state": "error",
        "error.type": "ValueError",
    }
    assert failing.status.status_code is StatusCode.ERROR
    assert failing.status.description == "ValueError"
    assert unknown.name == "execute_tool"
    assert "gen_ai.tool.name" not in (unknown.attributes or {})
    assert dict(unknown.attributes or {})["error.type"] == "unknown_tool"
    assert dict(replayed.attributes or {})["aw.tool.replayed"] is True
    assert dict(replayed.attributes or {})["aw.tool.state"] == "ok"
    assert replayed.status.status_code is StatusCode.UNSET
    everything = repr([(s.name, s.attributes, s.events, s.status) for s in spans.values()])
    assert "4111" not in everything


# -- what spans may carry -------------------------------------------------------------------


def test_exported_exceptions_keep_their_type_and_lose_their_message() -> None:
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(tracing._ContentFree(kept)))  # type: ignore[arg-type]
    with provider.get_tracer("test").start_as_current_span("failing") as span:
        try:
            raise ValueError("DETAIL: Failing row contains (what the customer wrote)")
        except ValueError as exc:
            span.record_exception(exc)
        span.add_event("note", {"n": 1})
    [exported] = kept.get_finished_spans()
    events = {e.name: dict(e.attributes or {}) for e in exported.events}
    assert events["exception"]["exception.type"] == "ValueError"
    assert not {"exception.message", "exception.stacktrace"} & set(events["exception"])
    assert events["note"] == {"n": 1}


# -- the stored context ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
async def any_store(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    pool: asyncpg.Pool = await create_pool(database_url, max_size=2)
    try:
        yield PostgresStore(pool)
    finally:
        await pool.close()


def _incoming(event_id: str, carrier: dict[str, str], replay_count: int = 0) -> IncomingEvent:
    body = {"event_id": event_id, "conversation_id": "c-stored", "text": "hi"}
    return IncomingEvent(
        event_id=event_id,
        conversation_id="c-stored",
        body=json.dumps(body).encode(),
        headers={},
        routing_key="user_message.v1",
        replay_count=replay_count,
        forced=False,
        occurred_at=None,
        trace_context=carrier,
    )


async def test_the_intake_context_is_stored_with_the_event_and_renewed_by_a_replay(
    any_store: Store,
) -> None:
    taken = {"traceparent": traceparent(uuid.uuid4().hex, uuid.uuid4().hex[:16])}
    options: dict[str, Any] = {
        "backend": BackendName.RESPONSES,
        "assistant_id": None,
        "profile": None,
        "owner": "me",
        "lease_ttl_s": 5.0,
    }
    stored = await any_store.intake(_incoming("evt-s", taken), **options)
    assert stored.lease is not None
    found = await any_store.next_batch(stored.lease)
    assert found is not None
    assert [e.trace_context for e in found.events] == [taken]
    await any_store.finish_batch(
        stored.lease, found.batch.batch_id, event_status=EventStatus.DEAD_LETTERED, outbox=[]
    )

    replayed = {"traceparent": traceparent(uuid.uuid4().hex, uuid.uuid4().hex[:16])}
    again = await any_store.intake(_incoming("evt-s", replayed, replay_count=1), **options)
    assert again.result is IntakeResult.REOPENED
    assert again.lease is not None
    found = await any_store.next_batch(again.lease)
    assert found is not None
    assert [e.trace_context for e in found.events] == [replayed]
