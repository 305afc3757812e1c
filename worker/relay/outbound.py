"""What the worker sends: replies and dead letters, as outbox rows ready to publish."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from worker import tracing
from worker.errors import ReasonCode
from worker.events import (
    REPLY_ID_NAMESPACE,
    AssistantHandoff,
    AssistantReply,
    HandoffReason,
    rfc3339,
)
from worker.settings import Topology
from worker.store.records import OutboxKind, OutboxMessage

if TYPE_CHECKING:
    # Only a type here: a delivery reads these module's replay headers.
    from worker.relay.delivery import Delivery

# Headers on a dead letter; the body is the original delivery, byte for byte.
H_REASON = "x-aw-reason"
H_ERROR = "x-aw-error"
H_ERROR_CLASS = "x-aw-error-class"
H_ATTEMPTS = "x-aw-attempts"
H_FIRST_FAILURE = "x-aw-first-failure-at"
H_LAST_FAILURE = "x-aw-last-failure-at"
H_ORIGINAL_EXCHANGE = "x-aw-original-exchange"
H_ORIGINAL_ROUTING_KEY = "x-aw-original-routing-key"
H_EVENT_ID = "x-aw-event-id"
H_CONVERSATION_ID = "x-aw-conversation-id"
# Set by operators' replays: a replayed event is new work, a forced one even if answered.
H_REPLAY_COUNT = "x-aw-replay-count"
H_FORCE = "x-aw-force"


# Every x-aw-* header the worker writes stays within this many UTF-8 bytes.
HEADER_MAX_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """Why events are dead-lettered: the reason code and a readable, content-free error."""

    reason: ReasonCode
    error: str
    attempts: int = 1
    first_failure_at: datetime | None = None
    # For internal errors: the exception class and the stage it failed in.
    error_class: str | None = None


def bounded(text: str, limit: int = HEADER_MAX_BYTES) -> str:
    """`text` cut to `limit` UTF-8 bytes (marked), never inside a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def reply_outbox(reply: AssistantReply, topology: Topology) -> OutboxMessage:
    """The reply, carrying the current (batch) span's context, which publishing continues."""
    return OutboxMessage(
        dedupe_key=f"reply:{reply.event_id}",
        kind=OutboxKind.REPLY,
        message_id=reply.event_id,
        exchange=topology.outbound_exchange,
        routing_key=topology.reply_routing_key,
        headers=tracing.with_current_context({H_CONVERSATION_ID: reply.conversation_id}),
        body=reply.encode(),
        conversation_id=reply.conversation_id,
        sequence=reply.sequence,
    )


def handoff_outbox(handoff: AssistantHandoff, topology: Topology) -> OutboxMessage:
    return OutboxMessage(
        dedupe_key=f"handoff:{handoff.event_id}",
        kind=OutboxKind.REPLY,
        message_id=handoff.event_id,
        exchange=topology.outbound_exchange,
        routing_key=topology.handoff_routing_key,
        headers=tracing.with_current_context({H_CONVERSATION_ID: handoff.conversation_id}),
        body=handoff.encode(),
        conversation_id=handoff.conversation_id,
    )


def refused_handoff(
    event_id: str,
    conversation_id: str,
    metadata: Mapping[str, str],
    failure: Failure,
    replay_count: int,
) -> AssistantHandoff:
    """The handoff for a customer message refused before it joined a batch: one per event and
    replay round, like its dead letter, so a redelivery does not hand it off twice."""
    return AssistantHandoff(
        batch_id=uuid.uuid5(REPLY_ID_NAMESPACE, f"refused\0{event_id}\0{replay_count}"),
        conversation_id=conversation_id,
        in_reply_to=(event_id,),
        reason=HandoffReason.DEAD_LETTERED,
        detail=f"{failure.reason}: {failure.error}",
        thread_id=None,
        run_id=None,
        metadata=metadata,
    )


def dead_letter_outbox(
    delivery: Delivery,
    failure: Failure,
    topology: Topology,
    *,
    event_id: str | None = None,
    conversation_id: str | None = None,
) -> OutboxMessage:
    """A dead letter: the original body untouched, the verdict in headers.

    Its dedupe key ties it to these bytes and replay round, so a redelivery of the same input
    is not dead-lettered twice while a later replay that fails again is. (Bytes, not event_id:
    an invalid event's event_id is only what it claims, and two different bodies may claim one.)
    With tracing on, its trace context is the current span's, so a replay joins the trace of
    the verdict rather than the original delivery's.
    """
    now = datetime.now(UTC)
    identity = hashlib.sha256(delivery.body).hexdigest()
    headers = {
        **delivery.headers,
        H_REASON: str(failure.reason),
        H_ERROR: bounded(failure.error),
        H_ATTEMPTS: failure.attempts,
        H_FIRST_FAILURE: rfc3339(failure.first_failure_at or now),
        H_LAST_FAILURE: rfc3339(now),
        H_ORIGINAL_EXCHANGE: delivery.exchange,
        H_ORIGINAL_ROUTING_KEY: delivery.routing_key,
    }
    if failure.error_class is not None:
        headers[H_ERROR_CLASS] = bounded(failure.error_class)
    if event_id is not None:
        headers[H_EVENT_ID] = event_id
    if conversation_id is not None:
        headers[H_CONVERSATION_ID] = conversation_id
    headers = tracing.with_current_context(headers)
    return OutboxMessage(
        dedupe_key=f"dead:{identity}:{delivery.replay_count}",
        kind=OutboxKind.DEAD_LETTER,
        message_id=delivery.message_id or identity,
        exchange=topology.dead_letter_exchange,
        routing_key=delivery.routing_key,
        headers=headers,
        body=delivery.body,
        # So that an erase forgets it with the conversation's other content.
        conversation_id=conversation_id,
    )
