"""The RabbitMQ objects the worker relies on, declared as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

from worker.settings import Topology


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange the worker declares at start (and `delete` removes), durable."""

    name: str
    type: aio_pika.ExchangeType


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue with its bindings and `x-` arguments (queue type, delivery limit,
    dead-letter exchange): what `declare` asks RabbitMQ for."""

    name: str
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)
    arguments: dict[str, Any] = field(default_factory=dict)


def exchanges(t: Topology) -> tuple[ExchangeSpec, ...]:
    return (
        ExchangeSpec(t.inbound_exchange, aio_pika.ExchangeType.TOPIC),
        ExchangeSpec(t.outbound_exchange, aio_pika.ExchangeType.TOPIC),
        # Fanout: the worker's own dead letters and RabbitMQ's (delivery limit) land in one queue.
        ExchangeSpec(t.dead_letter_exchange, aio_pika.ExchangeType.FANOUT),
    )


def queues(t: Topology) -> tuple[QueueSpec, ...]:
    return (
        QueueSpec(
            t.inbound_queue,
            (
                (t.inbound_exchange, t.inbound_routing_key),
                (t.inbound_exchange, t.control_routing_key),
            ),
            {
                # Quorum: replicated, and it counts deliveries, so a message that keeps killing
                # workers is dead-lettered by the broker instead of looping forever.
                "x-queue-type": "quorum",
                "x-delivery-limit": t.delivery_limit,
                "x-dead-letter-exchange": t.dead_letter_exchange,
            },
        ),
        QueueSpec(
            t.reply_queue, ((t.outbound_exchange, t.reply_routing_key),), {"x-queue-type": "quorum"}
        ),
        QueueSpec(
            t.handoff_queue,
            ((t.outbound_exchange, t.handoff_routing_key),),
            {"x-queue-type": "quorum"},
        ),
        # Classic, not quorum: it puts messages handed back unacknowledged in their old places,
        # which lets operators read the queue without reordering it (`dlq list`).
        QueueSpec(
            t.dead_letter_queue, ((t.dead_letter_exchange, ""),), {"x-queue-type": "classic"}
        ),
    )


async def declare(channel: AbstractChannel, t: Topology) -> None:
    declared = {}
    for spec in exchanges(t):
        declared[spec.name] = await channel.declare_exchange(spec.name, spec.type, durable=True)
    for qspec in queues(t):
        queue = await channel.declare_queue(qspec.name, durable=True, arguments=qspec.arguments)
        for exchange, routing_key in qspec.bindings:
            await queue.bind(declared[exchange], routing_key)


async def delete(channel: AbstractChannel, t: Topology) -> None:
    """Removes everything `declare` made (tests and `make clean`)."""
    for qspec in queues(t):
        await channel.queue_delete(qspec.name)
    for spec in exchanges(t):
        await channel.exchange_delete(spec.name)
