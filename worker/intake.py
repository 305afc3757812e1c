"""Decides what to do with one inbound delivery. No broker code: the consumer settles."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import structlog

from worker.errors import InvalidEvent
from worker.events import parse_user_message
from worker.metrics import Metrics
from worker.outbound import Delivery, Failure, dead_letter_outbox
from worker.ownership import Ownership
from worker.pacing import Pacer
from worker.settings import Settings
from worker.store import IncomingEvent, Store

log = structlog.get_logger("worker.intake")


class Settlement(StrEnum):
    ACK = "ack"
    REQUEUE = "requeue"


class Intake:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ownership: Ownership,
        on_outbox: Callable[[], None],
        metrics: Metrics,
        pacer: Pacer,
    ) -> None:
        """`pacer` paces storing new events, a starting step like those of the conversation."""
        self._settings = settings
        self._store = store
        self._ownership = ownership
        self._on_outbox = on_outbox
        self._metrics = metrics
        self._pacer = pacer

    async def handle(self, delivery: Delivery) -> Settlement:
        """Stores the event, then answers it if this worker can own the conversation.

        The delivery is settled only after that, so while a worker is busy with a conversation
        its message counts against the prefetch and the backlog stays visible in the queue.
        """
        try:
            event = parse_user_message(delivery.body, delivery.message_id)
        except InvalidEvent as exc:
            await self._dead_letter_invalid(delivery, exc)
            return Settlement.ACK
        with structlog.contextvars.bound_contextvars(
            event_id=event.event_id, conversation_id=event.conversation_id
        ):
            incoming = IncomingEvent(
                event_id=event.event_id,
                conversation_id=event.conversation_id,
                body=delivery.body,
                headers=delivery.headers,
                routing_key=delivery.routing_key,
                replay_count=delivery.replay_count,
                forced=delivery.forced,
                occurred_at=event.occurred_at,
            )
            async with self._ownership.slot():
                async with self._pacer.slot():
                    stored = await self._store.intake(
                        incoming,
                        backend=self._settings.backend.value,
                        assistant_id=self._settings.assistant_id,
                        owner=self._ownership.owner,
                        lease_ttl_s=self._ownership.ttl_s,
                    )
                log.info("event_received", intake=stored.result.value)
                self._metrics.events_received.labels(stored.result.value).inc()
                # Without the lease, whoever holds it answers the event before giving it up.
                if stored.lease is not None:
                    await self._ownership.process_leased(stored.lease)
            return Settlement.ACK

    async def _dead_letter_invalid(self, delivery: Delivery, exc: InvalidEvent) -> None:
        """Straight to the dead-letter queue (through the outbox): retrying cannot fix it."""
        log.warning("event_invalid", reason=str(exc.reason), error=exc.detail)
        self._metrics.events_received.labels("invalid").inc()
        self._metrics.events_dead_lettered.labels(str(exc.reason)).inc()
        failure = Failure(exc.reason, exc.detail)
        await self._store.add_to_outbox(
            dead_letter_outbox(delivery, failure, self._settings.topology)
        )
        self._on_outbox()
