"""An inbound message, as the consumer hands it to intake: what the worker keeps of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.relay.outbound import H_FORCE, H_REPLAY_COUNT


@dataclass(frozen=True, slots=True)
class Delivery:
    """An inbound AMQP message, reduced to what the worker keeps of it (the body as received,
    byte for byte, so a dead letter can carry it unchanged)."""

    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    exchange: str
    routing_key: str

    @property
    def replay_count(self) -> int:
        value = self.headers.get(H_REPLAY_COUNT, 0)
        return value if isinstance(value, int) else 0

    @property
    def forced(self) -> bool:
        return str(self.headers.get(H_FORCE, "")).lower() in ("1", "true", "yes")
