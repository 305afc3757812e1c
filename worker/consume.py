"""The RabbitMQ side of intake: deliveries in, and the one place where messages are settled."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import itertools
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from worker.errors import is_dependency_failure
from worker.intake import Intake, Settlement
from worker.outbound import Delivery

log = structlog.get_logger("worker.consume")
REQUEUE_DELAY_S = 1.0
DEPENDENCY_BACKOFF_CAP_S = 10.0


class Consumer:
    def __init__(self, queue: AbstractQueue, intake: Intake) -> None:
        self._queue = queue
        self._intake = intake
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def stop_consuming(self) -> None:
        if self._tag is not None:
            await self._queue.cancel(self._tag)
            self._tag = None

    async def drain(self, grace_s: float) -> None:
        """Waits for in-flight deliveries; after `grace_s` cancels them (they go back unacked)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Deliveries run concurrently (prefetch bounds them); this callback only hands off.
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            settlement = await self._handle_until_settled(message, to_delivery(message))
        except asyncio.CancelledError:
            await asyncio.shield(_settle(message, Settlement.REQUEUE))
            raise
        await _settle(message, settlement)

    async def _handle_until_settled(
        self, message: AbstractIncomingMessage, delivery: Delivery
    ) -> Settlement:
        """Waits out an unreachable Postgres while holding the message.

        Holding it, rather than requeueing, keeps the quorum queue's delivery count (and so its
        delivery limit) for messages that really are poison.
        """
        for attempt in itertools.count(1):
            try:
                return await self._intake.handle(delivery)
            except Exception as exc:
                if not is_dependency_failure(exc) or message.channel.is_closed:
                    log.exception("delivery_failed", message_id=message.message_id)
                    await asyncio.sleep(REQUEUE_DELAY_S)
                    return Settlement.REQUEUE
                delay = min(DEPENDENCY_BACKOFF_CAP_S, 0.25 * 2**attempt)
                log.warning("dependency_unavailable", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


async def _settle(message: AbstractIncomingMessage, settlement: Settlement) -> None:
    try:
        if settlement is Settlement.ACK:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except Exception as exc:  # noqa: BLE001 - whatever the client raises, the channel is gone
        # The broker redelivers the message after reconnecting, and intake is idempotent.
        log.warning("settle_failed", settlement=settlement.value, error=repr(exc))


# Kept by the broker per delivery; copying it into a dead letter would mislead.
_BROKER_HEADERS = frozenset({"x-delivery-count"})


def to_delivery(message: AbstractIncomingMessage) -> Delivery:
    return Delivery(
        body=message.body,
        headers={
            str(k): json_safe(v)
            for k, v in (message.headers or {}).items()
            if k not in _BROKER_HEADERS
        },
        message_id=message.message_id,
        exchange=message.exchange or "",
        routing_key=message.routing_key or "",
    )


def json_safe(value: Any) -> Any:
    """AMQP header values as JSON, so they can be stored and re-published unchanged in meaning."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
