"""assistant_activity.v1: what the assistant is doing, for a helpdesk's "typing..." indicator.

Off unless AW_ACTIVITY_ROUTING_KEY is set. Activity is a hint, not a record: it is published
straight to the outbound exchange from a bounded queue, without the outbox or publisher
confirms, and dropped when the queue is full or the broker is away, so it never delays a reply.

Traced, each is published in a PRODUCER span continuing the span that emitted it (the run's or
the batch's), and carries that span's `traceparent`: the helpdesk's "typing..." joins the
event's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from worker import tracing
from worker.events import rfc3339

ASSISTANT_ACTIVITY = "assistant_activity.v1"
log = structlog.get_logger("worker.relay.activity")


class ActivityKind(StrEnum):
    """The moments a helpdesk can show."""

    RUN_STARTED = "run_started"
    TOOL_RUNNING = "tool_running"
    RUN_ENDED = "run_ended"


@dataclass(frozen=True, slots=True)
class Activity:
    """One assistant_activity.v1."""

    conversation_id: str
    kind: ActivityKind
    in_reply_to: tuple[str, ...]
    run_id: str
    tools: tuple[str, ...] = ()
    status: str | None = None
    event_id: str = field(default_factory=lambda: f"act_{uuid.uuid4().hex}")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ASSISTANT_ACTIVITY,
            "event_id": self.event_id,
            "conversation_id": self.conversation_id,
            "activity": self.kind.value,
            "in_reply_to": list(self.in_reply_to),
            "run_id": self.run_id,
            "tools": list(self.tools),
            "status": self.status,
            "created_at": rfc3339(datetime.now(UTC)),
        }


class ActivitySink(Protocol):
    """Takes activity without waiting: the relay core calls it on its hot path."""

    def emit(self, activity: Activity) -> None: ...


class NoActivity:
    """Activity is off (the default)."""

    def emit(self, activity: Activity) -> None:
        return None


class Exchange(Protocol):
    name: str

    async def publish(self, message: Any, routing_key: str) -> Any: ...


# An activity and the context of the span that emitted it (None while tracing is off).
_Queued = tuple[Activity, dict[str, str] | None]


class ActivityPublisher:
    """Publishes activity from a bounded queue in the background; drops what does not fit."""

    def __init__(
        self, exchange: Exchange, routing_key: str, message: Any, capacity: int = 1000
    ) -> None:
        """`message` builds the broker's message from a body (aio_pika.Message)."""
        self._exchange = exchange
        self._routing_key = routing_key
        self._message = message
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(capacity)
        self.dropped = 0

    def emit(self, activity: Activity) -> None:
        try:
            # The emitter's span is current only now; the publish runs in another task.
            self._queue.put_nowait((activity, tracing.current_carrier()))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run_forever(self) -> None:
        while True:
            queued = await self._queue.get()
            await self._publish([queued, *self._take_waiting()])

    def _take_waiting(self) -> list[_Queued]:
        taken = []
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                taken.append(self._queue.get_nowait())
        return taken

    async def _publish(self, queued: Sequence[_Queued]) -> None:
        for activity, carrier in queued:
            body = json.dumps(activity.to_json(), separators=(",", ":")).encode()
            try:
                await self._publish_one(activity, body, carrier or {})
            except Exception as exc:  # noqa: BLE001 - a hint lost is not worth a retry
                self.dropped += 1
                log.debug("activity_dropped", error_class=type(exc).__name__)

    async def _publish_one(
        self, activity: Activity, body: bytes, carrier: Mapping[str, str]
    ) -> None:
        name = f"publish {self._exchange.name}"
        attributes = self._span_attributes(activity)
        with tracing.producing(name, carrier, attributes) as headers, tracing.uninstrumented():
            message = self._message(body, activity)
            message.headers.update(headers)
            await self._exchange.publish(message, self._routing_key)

    def _span_attributes(self, activity: Activity) -> dict[str, str]:
        return {
            **tracing.publish_attributes(self._exchange.name, self._routing_key, activity.event_id),
            "aw.activity.kind": activity.kind.value,
        }
