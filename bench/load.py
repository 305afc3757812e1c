"""The helpdesk's side of a run: publish the plan, timestamp every reply as it arrives.

Times are `time.time()` (epoch seconds), the clock the stand-in stamps runs with, so a reply's
arrival and a run's end can be compared across processes on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from worker.relay.outbound import H_EVENT_ID
from worker.settings import Topology

# Publishes in flight at once: enough to build a backlog quickly, with broker confirms.
_PUBLISH_WINDOW = 50


@dataclass(slots=True)
class Sent:
    """One published event: latency counts from `published_at`; from `confirmed_at` on, the
    event is in the queue (or taken from it), which is how events in flight are counted."""

    event_id: str
    conversation_id: str
    published_at: float
    # When the broker confirmed it: from then on it is in the queue (or taken from it).
    confirmed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Received:
    """One reply delivery and when it arrived (epoch seconds, the stand-in's clock)."""

    at: float
    reply: dict[str, Any]


async def publish_plan(
    channel: AbstractChannel, topology: Topology, plan: list[dict[str, Any]]
) -> list[Sent]:
    """Publishes the events in order, as fast as the broker confirms them (a backlog)."""
    exchange = await channel.get_exchange(topology.inbound_exchange, ensure=False)
    sent: list[Sent] = []

    async def one(event: dict[str, Any]) -> None:
        message = aio_pika.Message(
            json.dumps(event).encode(),
            message_id=event["event_id"],
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        record = Sent(event["event_id"], event["conversation_id"], time.time())
        sent.append(record)
        await exchange.publish(message, routing_key=topology.inbound_routing_key)
        record.confirmed_at = time.time()

    # Windows keep the order within a conversation's burst: a window is published in order
    # on one channel before the next starts.
    for start in range(0, len(plan), _PUBLISH_WINDOW):
        await asyncio.gather(*(one(e) for e in plan[start : start + _PUBLISH_WINDOW]))
    return sent


class ReplyCollector:
    """Consumes the reply and dead-letter queues for the whole run and keeps every reply with
    its time, and the IDs of the events dead-lettered: an event ends in one or the other."""

    def __init__(self, expected: set[str]) -> None:
        self.received: list[Received] = []
        self.dead_lettered: set[str] = set()
        self._missing = set(expected)
        self._changed = asyncio.Event()

    async def start(self, channel: AbstractChannel, topology: Topology) -> None:
        replies = await channel.get_queue(topology.reply_queue)
        await replies.consume(self._on_message, no_ack=True)
        dead_letters = await channel.get_queue(topology.dead_letter_queue)
        await dead_letters.consume(self._on_dead_letter, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        at = time.time()
        reply = json.loads(message.body)
        self.received.append(Received(at, reply))
        self._missing.difference_update(reply.get("in_reply_to", ()))
        self._changed.set()

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        # The worker names the event in a header even when its body is not valid.
        event_id = message.headers.get(H_EVENT_ID) or message.message_id
        if isinstance(event_id, str):
            self.dead_lettered.add(event_id)
            self._missing.discard(event_id)
        self._changed.set()

    @property
    def missing(self) -> set[str]:
        return set(self._missing)

    async def wait(self, quiet_s: float, settle_s: float) -> None:
        """Until every event is answered or dead-lettered (then `settle_s` more, for late
        duplicates) or nothing came for `quiet_s`."""
        while self._missing:
            self._changed.clear()
            try:
                async with asyncio.timeout(quiet_s):
                    await self._changed.wait()
            except TimeoutError:
                return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle_s):
                await asyncio.Event().wait()
