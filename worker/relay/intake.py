"""Decides what to do with one inbound delivery. No broker code: the consumer settles."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum

import structlog

from worker import tracing
from worker.crashpoints import FaultPoint, maybe_fail
from worker.errors import InvalidEvent, ReasonCode, error_class
from worker.events import (
    CONVERSATION_CONTROL,
    USER_MESSAGE,
    ConversationControl,
    SalvagedIds,
    UserMessage,
    parse_control,
    parse_user_message,
    salvage_ids,
)
from worker.metrics import Metrics
from worker.profiles.model import Profiles
from worker.profiles.routing import choose_profile, unknown_profile_error
from worker.relay import attachments
from worker.relay.delivery import Delivery
from worker.relay.outbound import Failure, dead_letter_outbox, handoff_outbox, refused_handoff
from worker.relay.ownership import Ownership
from worker.relay.pacing import Pacer
from worker.settings import BackendName, Settings
from worker.store.ports import IntakeStore
from worker.store.records import IncomingEvent, IntakeResult, Lease

log = structlog.get_logger("worker.relay.intake")


class Settlement(StrEnum):
    """What the consumer is to do with the delivery once intake is done with it."""

    ACK = "ack"
    REQUEUE = "requeue"


class Intake:
    """Turns one delivery into stored work: refuses what can never be answered, dedupes, and
    answers the conversation when this worker can take it.

    Storing comes before answering, and the delivery is settled only after both, so a worker
    that dies at any point leaves either the message in the queue or the event in the store:
    never neither. Duplicates are recognised by event_id in the same transaction that stores,
    so redeliveries cost one statement and are never answered twice.
    """

    def __init__(
        self,
        settings: Settings,
        profiles: Profiles,
        store: IntakeStore,
        ownership: Ownership,
        on_outbox: Callable[[], None],
        metrics: Metrics,
        pacer: Pacer,
    ) -> None:
        """`pacer` paces storing new events, a starting step like those of the conversation."""
        self._settings = settings
        self._profiles = profiles
        self._store = store
        self._ownership = ownership
        self._on_outbox = on_outbox
        self._metrics = metrics
        self._pacer = pacer
        self._limits = attachments.Limits(
            settings.attachment_max_bytes, settings.event_attachments_max_bytes
        )

    async def handle(self, delivery: Delivery) -> Settlement:
        """Stores the event, then answers it if this worker can own the conversation.

        The delivery is settled only after that, so while a worker is busy with a conversation
        its message counts against the prefetch and the backlog stays visible in the queue.
        """
        maybe_fail(FaultPoint.INTAKE)
        try:
            event = self._parse(delivery)
        except InvalidEvent as exc:
            with tracing.span("intake", {_RESULT: "invalid"}):
                await self._dead_letter_invalid(delivery, exc)
            return Settlement.ACK
        async with self._ownership.slot():
            # The event's IDs tag intake's lines only: the owner's loop that may follow answers
            # other events too and tags its own lines. So does its span: the batch that answers
            # it continues the span's context, stored with the event.
            with (
                structlog.contextvars.bound_contextvars(
                    event_id=event.event_id, conversation_id=event.conversation_id
                ),
                tracing.span("intake", _span_attributes(event)),
            ):
                lease = await self._take_in(event, delivery)
            # Without the lease, whoever holds it answers the event before giving it up.
            if lease is not None:
                await self._ownership.process_leased(lease)
        return Settlement.ACK

    async def _take_in(
        self, event: UserMessage | ConversationControl, delivery: Delivery
    ) -> Lease | None:
        """Stores the event; the conversation's lease if this worker took it with the event."""
        profile = self._first_contact_profile(event)
        async with self._pacer.slot():
            stored = await self._store.intake(
                _incoming(event, delivery),
                backend=self._settings.backend,
                # The assistant and profile chosen on first contact stick to the conversation.
                assistant_id=_assistant_id(event)
                or (profile and self._profiles[profile].assistant_id)
                or self._settings.assistant_id,
                profile=profile,
                owner=self._ownership.owner,
                lease_ttl_s=self._ownership.ttl_s,
            )
        log.info("event_received", intake=stored.result.value)
        tracing.annotate({_RESULT: stored.result.value})
        self._metrics.events_received.labels(stored.result.value).inc()
        if stored.result is IntakeResult.IGNORED:
            # Nothing to steer: no thread, no run, nothing pending. Documented no-op.
            log.info("control_ignored", reason="unknown_conversation")
        elif stored.result is IntakeResult.REFUSED:
            assert isinstance(event, UserMessage)  # only its fields can be refused
            await self._dead_letter_unsupported(delivery, event, stored.backend)
        return stored.lease

    def _first_contact_profile(self, event: UserMessage | ConversationControl) -> str | None:
        """The profile a new conversation gets (a known one keeps its own); None for control
        events, which never create a conversation."""
        if isinstance(event, ConversationControl):
            return None
        return choose_profile(self._profiles, event, conversation_profile=None)

    def _parse(self, delivery: Delivery) -> UserMessage | ConversationControl:
        """The event the routing key says it is, checked as far as intake can check it."""
        if self._is_control(delivery):
            return parse_control(delivery.body, delivery.message_id)
        event = parse_user_message(delivery.body, delivery.message_id)
        attachments.check(event, self._limits)
        if event.profile is not None and event.profile not in self._profiles.profiles:
            problem = unknown_profile_error(self._profiles, event.profile)
            raise InvalidEvent(ReasonCode.FIELD_UNSUPPORTED, f"{problem} (at /profile)")
        return event

    def _is_control(self, delivery: Delivery) -> bool:
        return delivery.routing_key == self._settings.topology.control_routing_key

    async def dead_letter_failed(
        self, delivery: Delivery, exc: Exception, attempts: int, first_failure_at: datetime
    ) -> None:
        """A delivery that kept failing in a way no class covers: its verdict, not the broker's."""
        failure = Failure(
            ReasonCode.INTERNAL_ERROR,
            f"{error_class(exc)} while taking the event in, {attempts} times",
            attempts,
            first_failure_at,
            error_class=f"{error_class(exc)} (intake)",
        )
        await self._dead_letter(delivery, failure)

    async def _dead_letter_unsupported(
        self, delivery: Delivery, event: UserMessage, backend: BackendName
    ) -> None:
        log.warning("event_refused", reason=str(ReasonCode.FIELD_UNSUPPORTED), backend=backend)
        failure = Failure(
            ReasonCode.FIELD_UNSUPPORTED,
            f"assistant_id names an Assistants API assistant, but this conversation is on the "
            f"{backend} backend, which has none (at /assistant_id)",
        )
        await self._dead_letter(delivery, failure, event)

    async def _dead_letter_invalid(self, delivery: Delivery, exc: InvalidEvent) -> None:
        """Straight to the dead-letter queue (through the outbox): retrying cannot fix it."""
        log.warning("event_invalid", reason=str(exc.reason), error=exc.detail)
        self._metrics.events_received.labels("invalid").inc()
        await self._dead_letter(delivery, Failure(exc.reason, exc.detail))

    async def _dead_letter(
        self, delivery: Delivery, failure: Failure, event: UserMessage | None = None
    ) -> None:
        """The dead letter, with the IDs the event validly carries (even an invalid one), and
        for a customer message whose conversation is known, its handoff: stored together."""
        self._metrics.events_dead_lettered.labels(str(failure.reason)).inc()
        ids = self._ids(delivery, event)
        topology = self._settings.topology
        outbox = [
            dead_letter_outbox(
                delivery,
                failure,
                topology,
                event_id=ids.event_id,
                conversation_id=ids.conversation_id,
            )
        ]
        if ids.event_id and ids.conversation_id and not self._is_control(delivery):
            # A control event is no customer waiting for an answer: its dead letter says enough.
            handoff = refused_handoff(
                ids.event_id, ids.conversation_id, ids.metadata, failure, delivery.replay_count
            )
            outbox.append(handoff_outbox(handoff, topology))
        await self._store.add_to_outbox(*outbox)
        self._on_outbox()

    def _ids(self, delivery: Delivery, event: UserMessage | None) -> SalvagedIds:
        if event is not None:
            return SalvagedIds(event.event_id, event.conversation_id, event.metadata)
        schema = CONVERSATION_CONTROL if self._is_control(delivery) else USER_MESSAGE
        return salvage_ids(schema, delivery.body)


_RESULT = "aw.intake.result"


def _span_attributes(event: UserMessage | ConversationControl) -> dict[str, str]:
    # IDs only: the helpdesk's, as the log lines carry them.
    return {
        "messaging.message.id": event.event_id,
        "aw.event.id": event.event_id,
        "aw.conversation.id": event.conversation_id,
        "aw.event.kind": "control" if isinstance(event, ConversationControl) else "user_message",
    }


def _assistant_id(event: UserMessage | ConversationControl) -> str | None:
    return event.assistant_id if isinstance(event, UserMessage) else None


def _incoming(event: UserMessage | ConversationControl, delivery: Delivery) -> IncomingEvent:
    if isinstance(event, ConversationControl):
        return IncomingEvent(
            event_id=event.event_id,
            conversation_id=event.conversation_id,
            body=delivery.body,
            headers=delivery.headers,
            routing_key=delivery.routing_key,
            replay_count=delivery.replay_count,
            forced=delivery.forced,
            occurred_at=event.occurred_at,
            batch_key=event.batch_key,
            control=event.action,
            trace_context=tracing.current_carrier(),
        )
    return IncomingEvent(
        event_id=event.event_id,
        conversation_id=event.conversation_id,
        body=delivery.body,
        headers=delivery.headers,
        routing_key=delivery.routing_key,
        replay_count=delivery.replay_count,
        forced=delivery.forced,
        occurred_at=event.occurred_at,
        batch_key=event.batch_key,
        # Only the Assistants API has assistants to name.
        needs_backend=BackendName.ASSISTANTS if event.assistant_id else None,
        trace_context=tracing.current_carrier(),
    )
