"""assistant_activity.v1: off unless configured; when on, a run's start, its tool calls and its
end, in that order, validated against the schema, beside an unchanged reply."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from tests.conftest import RunningWorker
from tests.support import drain, publish, replies_for
from worker.events import validator
from worker.settings import Settings, Topology

KEY = "assistant_activity.v1"


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    if request.node.get_closest_marker("activity_off"):
        return settings
    return settings.model_copy(update={"activity_routing_key": KEY})


@pytest.fixture
async def activity_queue(
    channel: AbstractChannel, topology: Topology
) -> AsyncIterator[AbstractQueue]:
    """The helpdesk's own queue for activity, bound before the worker starts."""
    queue = await channel.declare_queue(f"activity-{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(topology.outbound_exchange, KEY)
    yield queue
    await queue.delete(if_unused=False, if_empty=False)


async def activities(channel: AbstractChannel, queue: AbstractQueue) -> list[dict[str, Any]]:
    return [m.json() for m in await drain(channel, queue.name, quiet_s=0.5)]


async def test_a_run_with_a_tool_call_is_seen_starting_calling_and_ending(
    activity_queue: AbstractQueue,
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    asked = await publish(
        channel, topology, conversation_id="c-busy", text="[[outcome:requires_action:current_time]]"
    )
    [reply] = await replies_for(channel, topology, {asked["event_id"]})

    seen = await activities(channel, activity_queue)
    for doc in seen:
        validator("assistant_activity.v1").validate(doc)
    assert [(a["activity"], a["tools"], a["status"]) for a in seen] == [
        ("run_started", [], None),
        ("tool_running", ["current_time"], None),
        ("run_ended", [], "completed"),
    ]
    assert {tuple(a["in_reply_to"]) for a in seen} == {(asked["event_id"],)}
    assert seen[-1]["run_id"] == reply["run_id"]


@pytest.mark.activity_off
async def test_activity_is_off_unless_configured(
    activity_queue: AbstractQueue,
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    quiet = await publish(channel, topology, conversation_id="c-quiet", text="hello")
    await replies_for(channel, topology, {quiet["event_id"]})
    assert await activities(channel, activity_queue) == []
