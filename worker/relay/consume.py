"""The RabbitMQ side of intake: deliveries in, and the one place where messages are settled."""

from __future__ import annotations

import asyncio
import datetime
import itertools

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from worker.errors import error_class, is_dependency_failure, origin
from worker.headers import json_safe, storable
from worker.relay.delivery import Delivery
from worker.relay.intake import Intake, Settlement
from worker.relay.retry import Backoff

log = structlog.get_logger("worker.relay.consume")
DEPENDENCY_BACKOFF_CAP_S = 10.0


class Consumer:
    """Hands each delivery to intake and settles it: the one place messages are acked."""

    def __init__(self, queue: AbstractQueue, intake: Intake, failures: Backoff) -> None:
        """`failures` bounds failures no class covers: tries, and the waits between them."""
        self._queue = queue
        self._intake = intake
        self._failures = failures
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
        except Exception as exc:  # noqa: BLE001 - even the dead letter failed: never leave it unsettled
            # Back to the queue; the delivery limit is the last resort for such a message.
            log.error("delivery_abandoned", error_class=error_class(exc), origin=origin(exc))
            settlement = Settlement.REQUEUE
        await _settle(message, settlement)

    async def _handle_until_settled(
        self, message: AbstractIncomingMessage, delivery: Delivery
    ) -> Settlement:
        """Waits out an unreachable Postgres while holding the message; bounds anything else.

        Holding it, rather than requeueing, keeps the quorum queue's delivery count (and so its
        delivery limit) for processes that die on a message. A failure no class covers is tried
        `failures.attempts` times, then dead-lettered with the worker's own verdict.
        """
        failures: list[datetime.datetime] = []
        for attempt in itertools.count(1):
            try:
                return await self._intake.handle(delivery)
            except Exception as exc:  # noqa: BLE001 - every failure ends in a verdict here
                if _channel_gone(message):
                    # Nobody can settle it now; the broker redelivers it after reconnecting.
                    log.warning("delivery_abandoned", reason="channel closed", error=repr(exc))
                    return Settlement.REQUEUE
                if is_dependency_failure(exc):
                    delay = min(DEPENDENCY_BACKOFF_CAP_S, 0.25 * 2**attempt)
                    log.warning("dependency_unavailable", error=repr(exc), retry_in_s=delay)
                    await asyncio.sleep(delay)
                    continue
                failures.append(datetime.datetime.now(datetime.UTC))
                if await self._gave_up(delivery, exc, failures):
                    return Settlement.ACK
        raise AssertionError("unreachable")

    async def _gave_up(
        self, delivery: Delivery, exc: Exception, failures: list[datetime.datetime]
    ) -> bool:
        """Logs the failure; after the last try dead-letters the delivery (True), else waits."""
        tries = len(failures)
        log.error(
            "delivery_failed",
            error_class=error_class(exc),
            origin=origin(exc),
            failure=tries,
            attempts=self._failures.attempts,
        )
        if tries < self._failures.attempts:
            await asyncio.sleep(self._failures.delay_s(tries))
            return False
        await self._intake.dead_letter_failed(delivery, exc, tries, failures[0])
        return True


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    # A channel the broker closed can raise on being asked instead of answering.
    try:
        return bool(message.channel.is_closed)
    except Exception:  # noqa: BLE001 - whatever it raises, it is gone
        return True


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
            json_safe(str(k)): json_safe(v)
            for k, v in (message.headers or {}).items()
            if k not in _BROKER_HEADERS
        },
        # Stored with a dead letter: a NUL here must not make the verdict unstorable.
        message_id=None if message.message_id is None else storable(message.message_id),
        exchange=message.exchange or "",
        routing_key=message.routing_key or "",
    )
