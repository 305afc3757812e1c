"""An HTTP tool's call under kill -9: a worker process killed after the tool ran and before its
outcome was recorded (`after_tool_ran`) leaves the call to the next owner, who never calls a
tool that is not idempotent again (it tells the model the outcome is unknown) and calls an
idempotent one again with the same webhook-id. Either way the turn ends in one reply.

One real worker process per test (a Supervisor), the crash point armed at probability 1 until
the first death (crash_once); the restart runs without it. Responses only: the recovery is the
relay's, the same on both backends, and each test waits out a lease.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.fixtures.relay_tools.tool_server import ToolServer
from tests.fixtures.relay_tools.workers import write_profiles
from tests.harness import ReplyCollector, Supervisor, chaos_env, check
from tests.support import publish, worker_env
from tests.test_control_kills import answering, killed, logged, replies_to
from worker.crashpoints import CrashPoint
from worker.settings import Settings, Topology

Json = dict[str, Any]

pytestmark = pytest.mark.timeout(60)

SECRET_ENV = "AW_TEST_ORDER_TOOL_SECRET"
SECRET = "order-tool-s3cret-0042"
TEXT = 'cancel it [[call:order_status {"order_id": "A1"}]]'


def profiles(server: ToolServer, *, idempotent: bool) -> str:
    return f"""
[profiles.support]
model = "gpt-4o-mini"
instructions = "You are Acme's helpdesk."

[profiles.support.tools.order_status]
description = "Cancel one of the customer's orders."
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }} }}
url = "{server.url}"
secret_env = "{SECRET_ENV}"
idempotent = {str(idempotent).lower()}
"""


def violations(event: Json, collector: ReplyCollector, standin: StandIn) -> dict[str, object]:
    """What `check` finds wrong, but for second runs: a tool turn's follow-up response (the one
    carrying the outputs) has the batch and attempt of the response that called, which check
    takes for a second run of the attempt (tests/harness.py, _second_runs). The turn's
    responses are checked by turn_at_the_api instead."""
    found = check([event], collector, standin).violations
    return {name: what for name, what in found.items() if name != "second_runs_not_cancelled"}


# One call and one output in the Conversation; the response that called, and the follow-up.
ONE_CALL_ANSWERED_ONCE = (
    ["message", "function_call", "function_call_output", "message"],
    ["completed", "completed"],
)


def turn_at_the_api(standin: StandIn, reply: Json) -> tuple[list[str], list[str]]:
    """The types of the Conversation's items, and the statuses of every response made."""
    items = [item["type"] for item in standin.conversation_items(reply["thread_id"])]
    return items, [record["status"] for record in standin.run_records()]


@pytest.fixture
async def orders() -> AsyncIterator[ToolServer]:
    async with ToolServer(SECRET, body=b'{"output": "order A1 cancelled"}') as server:
        yield server


async def killed_after_the_tool_ran(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    collector: ReplyCollector,
    tmp_path: Path,
    *,
    toml: str,
) -> tuple[Json, Json, Supervisor]:
    """Publishes the event whose turn calls the tool under a worker that dies right after
    it; returns the event, its one reply (from the restarted worker) and the supervisor."""
    path = write_profiles(tmp_path, toml)
    env = chaos_env(worker_env(settings, AW_PROFILES_FILE=str(path), **{SECRET_ENV: SECRET}))
    point = f"{CrashPoint.AFTER_TOOL_RAN}=1"
    supervisor = Supervisor(env, 1, tmp_path, crash_points=point, crash_once=True)
    await supervisor.start()
    try:
        event = await publish(channel, topology, conversation_id="c-tool-killed", text=TEXT)
        await killed(supervisor)
        await replies_to(collector, supervisor, event["event_id"])
        await asyncio.sleep(1.0)  # for a second reply, which must not come
        [reply] = answering(collector, event["event_id"])
    finally:
        await supervisor.stop()
    return event, reply, supervisor


@pytest.mark.parametrize("backend", ["responses"])
async def test_a_call_killed_after_it_ran_is_not_run_again_and_its_outcome_is_unknown(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
    orders: ToolServer,
) -> None:
    event, reply, supervisor = await killed_after_the_tool_ran(
        settings, channel, topology, collector, tmp_path, toml=profiles(orders, idempotent=False)
    )

    [request] = orders.received  # the restarted worker did not call it again
    assert request.verified
    assert reply["in_reply_to"] == [event["event_id"]]
    assert reply["status"] == "completed"
    said = "| tool order_status said: "
    output = json.loads(reply["text"].split(said, 1)[1])
    assert output["error"] == "outcome_unknown"
    assert "order A1 cancelled" not in reply["text"]
    assert logged(tmp_path, "tool_outcome_unknown") == ["tool_outcome_unknown"]
    assert violations(event, collector, standin) == {}
    assert turn_at_the_api(standin, reply) == ONE_CALL_ANSWERED_ONCE
    assert supervisor.kills == 1
    [call] = reply["tool_calls"]
    assert (call["name"], call["type"]) == ("order_status", "function")
    # schemas/assistant_reply.v1.json: "unknown: a worker died while the tool ran and it was
    # not run again (not idempotent)".
    assert call["status"] == "unknown"


@pytest.mark.parametrize("backend", ["responses"])
async def test_an_idempotent_call_killed_after_it_ran_is_run_again_with_the_same_webhook_id(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
    tmp_path: Path,
    orders: ToolServer,
) -> None:
    event, reply, supervisor = await killed_after_the_tool_ran(
        settings, channel, topology, collector, tmp_path, toml=profiles(orders, idempotent=True)
    )

    first, again = orders.received
    assert first.verified
    assert again.verified
    assert first.webhook_id == again.webhook_id
    assert first.json() == again.json()
    assert reply["in_reply_to"] == [event["event_id"]]
    assert reply["status"] == "completed"
    assert reply["text"].endswith("| tool order_status said: order A1 cancelled")
    [call] = reply["tool_calls"]
    assert (call["name"], call["status"]) == ("order_status", "ok")
    assert logged(tmp_path, "tool_outcome_unknown") == []
    assert violations(event, collector, standin) == {}
    assert turn_at_the_api(standin, reply) == ONE_CALL_ANSWERED_ONCE
    assert supervisor.kills == 1
    # How long the handler took (schemas/assistant_reply.v1.json): milliseconds against a local
    # server, each time; not the seconds from the dead worker's try to the takeover's end.
    assert call["duration_ms"] < 1000
