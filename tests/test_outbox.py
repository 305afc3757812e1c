"""The outbox relay's promises: whatever was recorded before stop() goes out, and a broker
outage costs backed-off passes and two log lines, not a line per row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import aiormq
import asyncpg
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError
from structlog.testing import capture_logs

from tests.support import drain
from worker.metrics import Metrics
from worker.relay.publish import OutboxRelay
from worker.settings import Topology
from worker.store.postgres import PostgresOutboxAck, PostgresStore, create_pool
from worker.store.records import ClaimedOutbox, OutboxKind, OutboxMessage


class FirstPassHeld(PostgresStore):
    """Its first outbox pass finds nothing, then waits for `go`: a pass that began before the
    last reply was recorded and ends after stop() was called (a CPU-starved process)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    @asynccontextmanager
    async def claim_outbox(
        self, limit: int
    ) -> AsyncIterator[tuple[list[ClaimedOutbox], PostgresOutboxAck]]:
        async with super().claim_outbox(limit) as (claimed, ack):
            if not self.holding.is_set():
                self.holding.set()
                await self.go.wait()
            yield claimed, ack


class CountedPasses(PostgresStore):
    """Counts how often the relay claims rows: one claim a batch, so passes are visible."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.claims = 0

    @asynccontextmanager
    async def claim_outbox(
        self, limit: int
    ) -> AsyncIterator[tuple[list[ClaimedOutbox], PostgresOutboxAck]]:
        self.claims += 1
        async with super().claim_outbox(limit) as (claimed, ack):
            yield claimed, ack


class BrokerAway:
    """A channel and the aiormq channel under it; publishing fails while `down`, as on a
    channel whose connection is gone."""

    def __init__(self) -> None:
        self.down = True
        self.published: list[str] = []

    async def get_underlay_channel(self) -> BrokerAway:
        return self

    async def basic_publish(
        self, body: bytes, *, properties: aiormq.spec.Basic.Properties, **_: Any
    ) -> None:
        if self.down:
            raise ChannelInvalidStateError("writer is None")
        self.published.append(properties.message_id or "")


def _reply(n: int) -> OutboxMessage:
    return OutboxMessage(
        dedupe_key=f"reply:r-{n}",
        kind=OutboxKind.REPLY,
        message_id=f"r-{n}",
        exchange="outbound",
        routing_key="assistant_reply.v1",
        headers={},
        body=json.dumps({"event_id": f"r-{n}"}).encode(),
    )


async def _keep_waking(relay: OutboxRelay) -> None:
    # Every recorded reply wakes the relay; in an outage that must not undo the backoff.
    while True:
        relay.wake()
        await asyncio.sleep(0.01)


async def test_a_broker_outage_backs_off_and_logs_the_change_of_state_not_every_row(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, max_size=3)
    broker = BrokerAway()
    store = CountedPasses(pool)
    relay = OutboxRelay(store, cast(AbstractChannel, broker), interval_s=0.05, metrics=Metrics())
    # More than a batch: a failing full batch must not be claimed again at once, and again.
    for n in range(150):
        await store.add_to_outbox(_reply(n))
    with capture_logs() as logs:
        running = asyncio.create_task(relay.run_forever())
        waker = asyncio.create_task(_keep_waking(relay))
        try:
            await asyncio.sleep(1.5)
            # Backing off 0.1, 0.2, 0.4, 0.8 s: five passes at most, not thousands.
            assert store.claims <= 6, f"{store.claims} passes in 1.5 s of outage"
            broker.down = False
            async with asyncio.timeout(5):
                while await store.outbox_backlog():  # noqa: ASYNC110 - polling the table
                    await asyncio.sleep(0.05)
        finally:
            waker.cancel()
            await relay.stop()
            await running
            await pool.close()

    events = [e for e in logs if e["event"].startswith(("outbox_", "publish_"))]
    assert [e["event"] for e in events] == [
        "outbox_publishing_failed",
        "outbox_publishing_recovered",
    ]
    failed, recovered = events
    assert failed["failed"] == 100
    assert failed["error"] == "ChannelInvalidStateError"
    assert recovered["published"] == 150
    assert sorted(broker.published) == sorted(f"r-{n}" for n in range(150))


async def test_stop_publishes_what_was_recorded_while_a_pass_was_under_way(
    database_url: str, channel: AbstractChannel, topology: Topology
) -> None:
    pool = await create_pool(database_url, max_size=3)
    try:
        store = FirstPassHeld(pool)
        relay = OutboxRelay(store, channel, interval_s=60, metrics=Metrics())
        running = asyncio.create_task(relay.run_forever())
        await store.holding.wait()

        await store.add_to_outbox(
            OutboxMessage(
                dedupe_key="reply:r-1",
                kind=OutboxKind.REPLY,
                message_id="r-1",
                exchange=topology.outbound_exchange,
                routing_key=topology.reply_routing_key,
                headers={},
                body=json.dumps({"event_id": "r-1"}).encode(),
            )
        )
        relay.wake()
        stopping = asyncio.create_task(relay.stop())
        await asyncio.sleep(0.05)  # stop() is waiting for the loop
        store.go.set()
        await asyncio.wait_for(stopping, timeout=10)
        await running

        published = await drain(channel, topology.reply_queue)
        assert [m.message_id for m in published] == ["r-1"]
        assert await store.outbox_backlog() == 0
    finally:
        await pool.close()
