"""The helpdesk's side of the contract: publish user messages, read replies.

Used by the demo, the benchmarks and the tests, and a reference for integrators.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from worker.settings import Topology


async def publish_user_message(
    channel: AbstractChannel, topology: Topology, event: dict[str, Any]
) -> None:
    """Publishes one user_message.v1 (persistent, confirmed when the channel confirms)."""
    await _publish(channel, topology, event, topology.inbound_routing_key)


async def publish_control(
    channel: AbstractChannel, topology: Topology, event: dict[str, Any]
) -> None:
    """Publishes one conversation_control.v1, as publish_user_message does a message."""
    await _publish(channel, topology, event, topology.control_routing_key)


async def _publish(
    channel: AbstractChannel, topology: Topology, event: dict[str, Any], routing_key: str
) -> None:
    exchange = await channel.get_exchange(topology.inbound_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            json.dumps(event).encode(),
            message_id=str(event.get("event_id", "")) or None,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=routing_key,
    )


async def replies(queue: AbstractQueue, timeout_s: float) -> AsyncGenerator[dict[str, Any], None]:
    """Yields reply events as they arrive until `timeout_s` of silence.

    Each is acknowledged before it is handed out; close the generator (`aclosing`) when done.
    """
    async with queue.iterator(timeout=timeout_s) as messages:
        try:
            async for message in messages:
                await message.ack()
                yield json.loads(message.body)
        except TimeoutError:
            return


async def wait_for_replies(
    queue: AbstractQueue, event_ids: set[str], timeout_s: float
) -> list[dict[str, Any]]:
    """Collects replies until every event ID was answered or `timeout_s` passed."""
    collected: list[dict[str, Any]] = []
    missing = set(event_ids)
    async with asyncio.timeout(timeout_s), aclosing(replies(queue, timeout_s)) as stream:
        async for reply in stream:
            collected.append(reply)
            missing -= set(reply["in_reply_to"])
            if not missing:
                break
    return collected
