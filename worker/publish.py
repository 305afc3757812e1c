"""The outbox relay: publishes recorded replies and dead letters, confirmed by the broker."""

from __future__ import annotations

import asyncio

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange

from worker.crashpoints import CrashPoint, maybe_crash
from worker.metrics import Metrics
from worker.store import ClaimedOutbox, Store

log = structlog.get_logger("worker.publish")


class OutboxRelay:
    """Moves outbox rows to RabbitMQ. A row is marked published only after the broker confirms;
    a crash in between publishes it again, with the same message_id, on the next pass."""

    def __init__(
        self,
        store: Store,
        channel: AbstractChannel,
        interval_s: float,
        metrics: Metrics,
        batch: int = 100,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._channel = channel
        self._interval_s = interval_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._exchanges: dict[str, AbstractExchange] = {}

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Makes a last pass and returns once the loop is out.

        Cancelling a pass instead could roll back the "published" mark of a message the broker
        already has, and the next worker would publish it a second time.
        """
        self._stopping = True
        self._wake.set()
        await self._stopped.wait()

    async def run_forever(self) -> None:
        try:
            await self._loop()
        finally:
            self._stopped.set()

    async def _loop(self) -> None:
        while True:
            # Read before the pass: a pass under way when stop() came may have looked before
            # the last replies were recorded, so the last pass is one that starts after it.
            last = self._stopping
            try:
                while await self.publish_pending() == self._batch:
                    pass
            except Exception as exc:  # noqa: BLE001 - broker or database blip; next pass retries
                log.warning("outbox_pass_failed", error=repr(exc))
            if last:
                return
            try:
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def publish_pending(self) -> int:
        async with self._store.claim_outbox(self._batch) as (claimed, ack):
            if not claimed:
                return 0
            results = await asyncio.gather(
                *(self._publish(c) for c in claimed), return_exceptions=True
            )
            maybe_crash(CrashPoint.AFTER_PUBLISH_CONFIRMED)
            done = [c.outbox_id for c, r in zip(claimed, results, strict=True) if r is None]
            failed = [c.outbox_id for c, r in zip(claimed, results, strict=True) if r is not None]
            await ack.published(done)
            await ack.failed(failed)
            self._metrics.replies_published.inc(
                sum(1 for c, r in zip(claimed, results, strict=True) if r is None and c.is_reply)
            )
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("publish_failed", error=repr(result))
            return len(claimed)

    async def _publish(self, claimed: ClaimedOutbox) -> None:
        m = claimed.message
        exchange = await self._exchange(m.exchange)
        await exchange.publish(
            aio_pika.Message(
                m.body,
                headers=m.headers,
                message_id=m.message_id,
                content_type=m.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=m.routing_key,
            mandatory=True,
        )

    async def _exchange(self, name: str) -> AbstractExchange:
        if name not in self._exchanges:
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]
