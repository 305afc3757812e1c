"""Idempotent intake and its operator overrides; dead letters carry the whole verdict."""

from __future__ import annotations

import json

import aio_pika
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import RunningWorker
from tests.support import drain, publish, replies_for, wait_for_dead_letters
from worker.settings import Settings, Topology


async def _republish(
    channel: AbstractChannel, topology: Topology, event: dict[str, object], **headers: object
) -> None:
    """What `dlq replay` does: the original body again, with replay headers."""
    exchange = await channel.get_exchange(topology.inbound_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            json.dumps(event).encode(),
            message_id=str(event["event_id"]),
            headers=headers,  # type: ignore[arg-type]
        ),
        routing_key=topology.inbound_routing_key,
    )


async def test_a_replayed_answered_event_is_skipped_unless_forced(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    event = await publish(channel, topology, conversation_id="c-force", text="again?")
    [first] = await replies_for(channel, topology, {event["event_id"]})

    await _republish(channel, topology, event, **{"x-aw-replay-count": 1})
    assert await drain(channel, topology.reply_queue, quiet_s=1.5) == []

    await _republish(channel, topology, event, **{"x-aw-replay-count": 2, "x-aw-force": "true"})
    [forced] = await replies_for(channel, topology, {event["event_id"]})
    assert forced["event_id"] != first["event_id"]
    assert forced["run_id"] != first["run_id"]
    # A redelivery of that same forced replay is a duplicate again.
    await _republish(channel, topology, event, **{"x-aw-replay-count": 2, "x-aw-force": "true"})
    assert await drain(channel, topology.reply_queue, quiet_s=1.5) == []


async def test_a_dead_lettered_event_replayed_is_answered(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, standin: StandIn
) -> None:
    standin.add_faults(
        [{"kind": "status", "status": 400, "method": "POST", "path": r"/responses$", "times": 1}]
    )
    event = await publish(channel, topology, conversation_id="c-replay", text="fix me")
    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == "openai_rejected"

    await _republish(channel, topology, event, **{"x-aw-replay-count": 1})
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["status"] == "completed"


async def test_an_api_that_stays_down_dead_letters_with_attempts_and_times(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    settings: Settings,
) -> None:
    standin.add_faults([{"kind": "status", "status": 503, "path": r"/responses", "times": 1000}])
    event = await publish(channel, topology, conversation_id="c-down", text="anyone?")
    [dead] = await wait_for_dead_letters(channel, topology, 1, timeout_s=30)
    headers = dead.headers
    assert headers["x-aw-reason"] == "openai_unavailable"
    assert headers["x-aw-attempts"] == settings.api_attempts
    assert "HTTP 503" in headers["x-aw-error"]
    assert headers["x-aw-first-failure-at"] < headers["x-aw-last-failure-at"]
    assert headers["x-aw-original-routing-key"] == topology.inbound_routing_key
    assert dead.json() == event
