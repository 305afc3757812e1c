"""The receiver's side of Postgres: each delivery recorded once, each response's ending once, and
the workers woken at commit. Driver errors leave as StoreUnavailable, as from PostgresStore."""

from __future__ import annotations

import asyncio

import asyncpg

from worker.store.postgres import store_boundary
from worker.store.queries import q

# A Postgres that hangs (or a pool that is all taken) is answered 503 soon, so OpenAI retries
# later, instead of holding its connection open; a commit cut short is retried as a duplicate.
RECORD_TIMEOUT_S = 5.0


class DeliveryStore:
    """Records verified deliveries; one short transaction each."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @store_boundary
    async def record(self, webhook_id: str, event_type: str, response_id: str) -> bool:
        """True for a new delivery, recorded with the workers notified at commit; False for a
        duplicate, which changes nothing."""
        async with (
            asyncio.timeout(RECORD_TIMEOUT_S),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            new: bool = await conn.fetchval(
                q("record_webhook"), webhook_id, event_type, response_id
            )
            if new:
                await conn.execute(q("notify_response_ended"), response_id)
        return new
