"""Function tools through the relay, on both backends: an entry-point tool and an HTTP tool
served in one turn (signed, with only the granted context), tools that fail (a timeout, an
HTTP 500) without failing the run or leaking what the server said, and a Python handler's
context exactly as its grants allow. The stand-in's model calls the tools that `[[call:...]]`
markers name and echoes each output in its reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.fixtures.relay_tools import handlers
from tests.fixtures.relay_tools.api_view import function_calls
from tests.fixtures.relay_tools.tool_server import ToolServer
from tests.fixtures.relay_tools.workers import worker_with_profiles
from tests.support import drain, publish, replies_for
from worker.settings import Settings, Topology
from worker.toolkit import ToolAuthor, TurnEvent

Json = dict[str, Any]

SECRET_ENV = "AW_TEST_ORDER_TOOL_SECRET"
SECRET = "order-tool-s3cret-0042"
HANDLERS = "tests.fixtures.relay_tools.handlers"
ORDER_PARAMETERS = (
    '{ type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }'
)
NO_PARAMETERS = '{ type = "object", properties = {} }'
AUTHOR = {"id": "cust-7", "name": "Zoë"}
METADATA = {"inbox": "care", "ticket": "T-42"}


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP tool's signing secret, where its profile's secret_env says (read at start)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
async def orders() -> AsyncIterator[ToolServer]:
    async with ToolServer(SECRET, body=b'{"output": "order A1 shipped"}') as server:
        yield server


# What a failing tool server answers: it must reach neither the model nor the reply.
CANARY = "canary-body-7f3e9d: internal stack trace with a customer's card 4111"


@pytest.fixture
async def failing() -> AsyncIterator[ToolServer]:
    async with ToolServer(SECRET, status=500, body=CANARY.encode()) as server:
        yield server


def http_tool(server: ToolServer, *extra: str) -> str:
    """The order_status tool, served by `server`, with extra keys (TOML lines)."""
    lines = [
        "[profiles.support.tools.order_status]",
        'description = "Look up one of the customer\'s orders."',
        f"parameters = {ORDER_PARAMETERS}",
        f'url = "{server.url}"',
        f'secret_env = "{SECRET_ENV}"',
        *extra,
    ]
    return "\n".join(lines) + "\n"


def profiles(*tools: str) -> str:
    head = '[profiles.support]\nmodel = "gpt-4o-mini"\ninstructions = "You are Acme\'s helpdesk."\n'
    return head + "".join(tools)


def python_tool(name: str, handler: str, *extra: str) -> str:
    lines = [
        f"[profiles.support.tools.{name}]",
        f'description = "The {name} tool."',
        f"parameters = {NO_PARAMETERS}",
        f'handler = "{HANDLERS}:{handler}"',
        *extra,
    ]
    return "\n".join(lines) + "\n"


async def only_reply(channel: AbstractChannel, topology: Topology, event: Json) -> Json:
    """The event's reply, answering it alone, and no other reply after it."""
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert await drain(channel, topology.reply_queue, quiet_s=0.3) == []
    assert reply["in_reply_to"] == [event["event_id"]]
    assert reply["status"] == "completed"
    return reply


def by_name(reply: Json) -> dict[str, Json]:
    """The reply's tool_calls by function name (parallel calls have no order of their own)."""
    calls = {call["name"]: call for call in reply["tool_calls"]}
    assert len(calls) == len(reply["tool_calls"])
    return calls


@pytest.mark.usefixtures("secret")
async def test_an_entry_point_and_an_http_tool_in_one_turn(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    tmp_path: Path,
    backend: str,
    orders: ToolServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    toml = profiles(
        '[profiles.support.tools.current_time]\nentry_point = "current_time"\n',
        http_tool(orders, 'grants = ["metadata", "author"]', "show_arguments = true"),
    )
    text = 'hi [[call:current_time]] [[call:order_status {"order_id": "A1"}]]'
    async with worker_with_profiles(settings, tmp_path, toml):
        event = await publish(
            channel,
            topology,
            conversation_id="c-two-tools",
            text=text,
            author=AUTHOR,
            metadata=METADATA,
        )
        reply = await only_reply(channel, topology, event)

    [request] = orders.received
    assert request.verified
    body = request.json()
    call_id = function_calls(standin, backend, reply)["order_status"]
    assert (body["type"], body["tool"], body["call_id"]) == ("tool_call", "order_status", call_id)
    assert body["arguments"] == {"order_id": "A1"}
    assert body["context"] == {
        "conversation_id": "c-two-tools",
        "profile": "support",
        "call_id": call_id,
        "tool": "order_status",
        "author": AUTHOR,
        "metadata": METADATA,
    }
    assert "events" not in body["context"]

    assert "| tool order_status said: order A1 shipped" in reply["text"]
    said = "tool current_time said: "
    [clock] = [part for part in reply["text"].split(" | ") if part.startswith(said)]
    utc = json.loads(clock.removeprefix(said))["utc"]
    assert abs(datetime.fromisoformat(utc) - datetime.now(UTC)) < timedelta(minutes=1)

    calls = by_name(reply)
    assert set(calls) == {"current_time", "order_status"}
    for call in calls.values():
        assert (call["type"], call["status"]) == ("function", "ok")
        assert isinstance(call["duration_ms"], int)
        assert call["duration_ms"] >= 0
    assert "arguments" not in calls["current_time"]
    assert json.loads(calls["order_status"]["arguments"]) == {"order_id": "A1"}
    logged = capfd.readouterr()
    assert "tool_called" in logged.out + logged.err  # the worker's log is the one read here
    assert SECRET not in logged.out + logged.err


@pytest.mark.usefixtures("secret")
async def test_a_timed_out_tool_and_an_http_500_are_errors_the_run_goes_on_with(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    tmp_path: Path,
    failing: ToolServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    handlers.CANCELLED.clear()
    toml = profiles(python_tool("slow", "slow", "timeout_s = 0.2"), http_tool(failing))
    text = 'check [[call:slow]] [[call:order_status {"order_id": "A1"}]]'
    async with worker_with_profiles(settings, tmp_path, toml):
        event = await publish(channel, topology, conversation_id="c-failing", text=text)
        reply = await only_reply(channel, topology, event)

    calls = by_name(reply)
    assert {name: call["status"] for name, call in calls.items()} == {
        "slow": "error",
        "order_status": "error",
    }
    # Cut off at its timeout, not left to answer later.
    assert len(handlers.CANCELLED) == 1
    assert calls["slow"]["duration_ms"] >= 200
    said = reply["text"]
    assert '| tool slow said: {"error": "tool \'slow\' timed out"}' in said
    assert '| tool order_status said: {"error": "HTTP tool \'order_status\': status 500"}' in said
    # Not idempotent: tried once.
    assert len(failing.received) == 1
    assert "canary" not in json.dumps(reply)
    logged = capfd.readouterr()
    assert "tool_failed" in logged.out + logged.err  # the worker's log is the one read here
    assert "canary" not in logged.out + logged.err


async def test_a_python_handler_sees_exactly_what_its_grants_allow(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    tmp_path: Path,
    backend: str,
) -> None:
    handlers.PROBED.clear()
    toml = profiles(
        python_tool("probe_all", "probe", 'grants = ["events", "author", "metadata"]'),
        python_tool("probe_metadata", "probe", 'grants = ["metadata"]'),
        python_tool("probe_none", "probe"),
    )
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    text = "who am I? [[call:probe_all]] [[call:probe_metadata]] [[call:probe_none]]"
    async with worker_with_profiles(settings, tmp_path, toml):
        event = await publish(
            channel,
            topology,
            conversation_id="c-grants",
            text=text,
            author=AUTHOR,
            metadata=METADATA,
            occurred_at=occurred.isoformat().replace("+00:00", "Z"),
        )
        reply = await only_reply(channel, topology, event)

    seen = {context.tool: context for context in handlers.PROBED}
    assert sorted(seen) == ["probe_all", "probe_metadata", "probe_none"]
    assert len(handlers.PROBED) == 3
    call_ids = function_calls(standin, backend, reply)
    for name, context in seen.items():
        assert (context.conversation_id, context.profile) == ("c-grants", "support")
        assert context.call_id == call_ids[name]
    everything = seen["probe_all"]
    assert everything.events == (TurnEvent(event["event_id"], text, occurred),)
    assert everything.author == ToolAuthor(AUTHOR["id"], AUTHOR["name"])
    assert everything.metadata == METADATA
    only_metadata = seen["probe_metadata"]
    assert (only_metadata.events, only_metadata.author) == (None, None)
    assert only_metadata.metadata == METADATA
    nothing = seen["probe_none"]
    assert (nothing.events, nothing.author, nothing.metadata) == (None, None, None)
    assert {call["status"] for call in reply["tool_calls"]} == {"ok"}
    for name in seen:
        assert f"| tool {name} said: probed {name}" in reply["text"]
