"""The outbox relay: publishes recorded replies and dead letters, confirmed by the broker."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel

from worker import tracing
from worker.crashpoints import CrashPoint, FaultPoint, maybe_crash, maybe_fail
from worker.metrics import Metrics
from worker.store.ports import OutboxStore
from worker.store.records import ClaimedOutbox, OutboxMessage

log = structlog.get_logger("worker.relay.publish")


@dataclass(frozen=True, slots=True)
class PassOutcome:
    """What a pass did: rows published, rows that failed, and the class of the first failure
    (set also when the pass failed as a whole, the database away, say)."""

    published: int = 0
    failed: int = 0
    error: str | None = None

    @property
    def failing(self) -> bool:
        return self.error is not None


class OutboxRelay:
    """Moves outbox rows to RabbitMQ. A row is marked published only after the broker confirms;
    a crash in between publishes it again, with the same message_id, on the next pass.

    While publishing fails (the broker is away) passes back off, up to `max_interval_s`, and
    the log says when publishing starts failing and when it works again, not once a row."""

    def __init__(
        self,
        store: OutboxStore,
        channel: AbstractChannel,
        interval_s: float,
        metrics: Metrics,
        batch: int = 100,
        max_interval_s: float = 30.0,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._channel = channel
        self._interval_s = interval_s
        self._max_interval_s = max(max_interval_s, interval_s)
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._failed_passes = 0
        self._failing_since = 0.0

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
            self._note(await self._pass())
            if last:
                return
            await self._pause(self._next_interval_s())

    async def _pass(self) -> PassOutcome:
        """Publishes batch after batch until the backlog is empty or a row fails."""
        published = 0
        try:
            while True:
                outcome = await self.publish_pending()
                published += outcome.published
                if outcome.failing or outcome.published < self._batch:
                    return PassOutcome(published, outcome.failed, outcome.error)
        except Exception as exc:  # noqa: BLE001 - broker or database blip; next pass retries
            return PassOutcome(published, error=type(exc).__name__)

    def _note(self, outcome: PassOutcome) -> None:
        """Logs the changes of state: publishing starts failing, or works again."""
        if outcome.failing:
            if not self._failed_passes:
                self._failing_since = time.monotonic()
                log.warning("outbox_publishing_failed", failed=outcome.failed, error=outcome.error)
            self._failed_passes += 1
            return
        if self._failed_passes:
            log.info(
                "outbox_publishing_recovered",
                published=outcome.published,
                failed_passes=self._failed_passes,
                outage_s=round(time.monotonic() - self._failing_since, 1),
            )
        self._failed_passes = 0

    def _next_interval_s(self) -> float:
        backoff = self._interval_s * 2.0 ** min(self._failed_passes, 32)
        return min(backoff, self._max_interval_s)

    async def _pause(self, interval_s: float) -> None:
        """Waits out the interval; a wake cuts it short, except while backing off, when only
        stop() does (each recorded reply wakes the relay, which would undo the backoff)."""
        deadline = time.monotonic() + interval_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                break
            if self._stopping or not self._failed_passes:
                break
            self._wake.clear()
        self._wake.clear()

    async def publish_pending(self) -> PassOutcome:
        """One batch: claims up to `batch` rows, publishes them, marks each as it went."""
        async with self._store.claim_outbox(self._batch) as (claimed, ack):
            if not claimed:
                return PassOutcome()
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
            errors = [type(r).__name__ for r in results if isinstance(r, BaseException)]
            return PassOutcome(len(done), len(failed), errors[0] if errors else None)

    async def _publish(self, claimed: ClaimedOutbox) -> None:
        """Publishes one row and returns once the broker confirms it.

        Through the channel's aiormq layer, not aio-pika's `Exchange.publish`, for one
        argument: `wait=False`. With it, a publish holds the channel's lock only to queue its
        frames, not until the socket has drained them; a batch's publishes then go out
        together instead of one loop turn apart each (a busy worker took a second for a
        batch of 100). The confirm is still awaited, and the frame queue is bounded.
        """
        maybe_fail(FaultPoint.PUBLISH)
        m = claimed.message
        # The span continues the context the row carries (the batch's, or intake's), and the
        # message carries the span's: the helpdesk's consumer joins the event's trace.
        with tracing.producing(f"publish {m.exchange}", m.headers, _span_attributes(m)) as headers:
            message = aio_pika.Message(
                m.body,
                headers=headers,
                message_id=m.message_id,
                content_type=m.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            # aio-pika's channels are aiormq's Channel, whose basic_publish takes `wait`; the
            # abstract type it is annotated with does not declare it.
            channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            await channel.basic_publish(
                message.body,
                exchange=m.exchange,
                routing_key=m.routing_key,
                properties=message.properties,
                mandatory=True,
                wait=False,
            )


def _span_attributes(m: OutboxMessage) -> dict[str, str]:
    return {
        **tracing.publish_attributes(m.exchange, m.routing_key, m.message_id),
        "aw.outbox.kind": m.kind.value,
    }
