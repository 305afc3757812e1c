"""The outbox relay's promise at shutdown: whatever was recorded before stop() goes out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from aio_pika.abc import AbstractChannel

from tests.support import drain
from worker.metrics import Metrics
from worker.publish import OutboxRelay
from worker.settings import Topology
from worker.store import ClaimedOutbox, OutboxAck, OutboxMessage, Store, create_pool


class FirstPassHeld(Store):
    """Its first outbox pass finds nothing, then waits for `go`: a pass that began before the
    last reply was recorded and ends after stop() was called (a CPU-starved process)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    @asynccontextmanager
    async def claim_outbox(
        self, limit: int
    ) -> AsyncIterator[tuple[list[ClaimedOutbox], OutboxAck]]:
        async with super().claim_outbox(limit) as (claimed, ack):
            if not self.holding.is_set():
                self.holding.set()
                await self.go.wait()
            yield claimed, ack


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
                kind="reply",
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
