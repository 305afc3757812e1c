"""The relay's core objects wired to a store and the stand-in, without RabbitMQ.

Deliveries go straight to Intake (as the consumer hands them over) and what would be published
is taken from the store's outbox by the real OutboxRelay, through a channel that only records.
Intake answers a conversation it can take before it returns, so after `deliver` the outcome is
in the outbox and can be checked at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiormq
import openai
from aio_pika.abc import AbstractChannel

from worker.backends.files import Files
from worker.metrics import Metrics
from worker.profiles.config import profiles_of
from worker.relay.conversation import ConversationProcessor
from worker.relay.delivery import Delivery
from worker.relay.intake import Intake, Settlement
from worker.relay.ownership import Ownership
from worker.relay.pacing import Pacer
from worker.relay.polling import PollSchedule
from worker.relay.publish import OutboxRelay, PassOutcome
from worker.relay.retry import RetryPolicy
from worker.relay.runner import Runner
from worker.service import make_backends
from worker.settings import Settings
from worker.store.ports import Store
from worker.store.records import Lease


@dataclass(frozen=True)
class Published:
    """One message as the broker would have been handed it."""

    exchange: str
    routing_key: str
    message_id: str | None
    headers: dict[str, Any]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingChannel:
    """Stands where the publishing channel would, and the aiormq channel under it (the outbox
    publishes through that layer): every publish is confirmed and recorded."""

    published: list[Published] = field(default_factory=list)

    async def get_underlay_channel(self) -> RecordingChannel:
        return self

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: aiormq.spec.Basic.Properties,
        **_: Any,
    ) -> None:
        headers = dict(properties.headers or {})
        self.published.append(
            Published(exchange, routing_key, properties.message_id, headers, body)
        )


def control(conversation_id: str, action: str, **fields: Any) -> dict[str, Any]:
    """A conversation_control.v1 with a fresh event_id."""
    return {
        "event_id": f"ctl-{uuid.uuid4().hex[:12]}",
        "conversation_id": conversation_id,
        "action": action,
        **fields,
    }


def event(conversation_id: str, text: str, **fields: Any) -> dict[str, Any]:
    """A user_message.v1 with a fresh event_id."""
    return {
        "event_id": f"evt-{uuid.uuid4().hex[:12]}",
        "conversation_id": conversation_id,
        "text": text,
        **fields,
    }


class Relay:
    """One worker's core: Intake, Ownership (the lease manager), ConversationProcessor and the
    runners, on the given store and the stand-in."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: openai.AsyncOpenAI,
        *,
        process: Callable[[Lease], Any] | None = None,
    ) -> None:
        """`process` replaces answering (a worker that takes conversations and does nothing)."""
        s = settings
        self.settings = settings
        self.store = store
        self.metrics = Metrics()
        self.channel = RecordingChannel()
        self.outbox = OutboxRelay(
            store, cast(AbstractChannel, self.channel), s.outbox_interval_s, self.metrics
        )
        pacer = Pacer(ceiling=s.concurrency, lag_limit_s=s.loop_lag_limit_ms / 1000)
        api_retry = RetryPolicy(s.api_attempts, s.api_backoff_base_s, s.api_backoff_cap_s)
        schedule = PollSchedule(s.poll_initial_ms, s.poll_max_ms, s.poll_growth)
        runners = {
            name: Runner(backend, api_retry, schedule, s.run_deadline_s, pacer)
            for name, backend in make_backends(s, client).items()
        }
        profiles = profiles_of(s)
        self.processor = ConversationProcessor(
            s,
            store,
            runners,
            profiles,
            Files(client),
            api_retry,
            self.outbox.wake,
            self.metrics,
            pacer,
        )
        self.ownership = Ownership(
            store,
            process or self.processor.process,
            owner=s.worker_name,
            capacity=s.concurrency,
            ttl_s=s.lease_ttl_s,
            sweep_interval_s=s.sweep_interval_s,
        )
        self.intake = Intake(
            s, profiles, store, self.ownership, self.outbox.wake, self.metrics, pacer
        )

    async def deliver(
        self,
        doc: dict[str, Any] | bytes,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> Settlement:
        """Hands intake a delivery of `doc` (an event, or raw bytes) as the consumer would."""
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        if message_id is None and isinstance(doc, dict):
            message_id = doc["event_id"]
        topology = self.settings.topology
        routing_key = topology.inbound_routing_key
        if isinstance(doc, dict) and "action" in doc:
            routing_key = topology.control_routing_key
        delivery = Delivery(body, headers or {}, message_id, topology.inbound_exchange, routing_key)
        return await self.intake.handle(delivery)

    async def publish(self) -> list[Published]:
        """Publishes what the outbox holds, as the relay's next pass would; returns it."""
        before = len(self.channel.published)
        outcome = PassOutcome(published=1)
        while outcome.published:
            outcome = await self.outbox.publish_pending()
        return self.channel.published[before:]

    async def dead_letters(self) -> list[Published]:
        """The dead letters published by this pass (handoffs and replies left out)."""
        exchange = self.settings.topology.dead_letter_exchange
        return [m for m in await self.publish() if m.exchange == exchange]

    async def replies(self) -> list[dict[str, Any]]:
        """The replies published by this pass (assistant_reply.v1 bodies)."""
        reply_key = self.settings.topology.reply_routing_key
        return [m.json() for m in await self.publish() if m.routing_key == reply_key]


class Parked:
    """A worker that takes conversations and sits on them: events delivered meanwhile wait,
    so a test decides what is pending when the conversation is answered."""

    def __init__(self, settings: Settings, store: Store, client: openai.AsyncOpenAI) -> None:
        self.leases: list[Lease] = []
        self.store = store
        self.relay = Relay(
            settings.model_copy(update={"worker_name": "parked"}),
            store,
            client,
            process=self._sit,
        )

    async def _sit(self, lease: Lease) -> None:
        self.leases.append(lease)

    async def deliver(self, doc: dict[str, Any]) -> Settlement:
        return await self.relay.deliver(doc)

    async def leave(self) -> None:
        """Hands back every lease it took: the conversations are free at once."""
        for lease in self.leases:
            await self.store.hand_back_lease(lease)
        self.leases.clear()
