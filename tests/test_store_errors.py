"""The Postgres store's boundary: a server that goes away comes out as StoreUnavailable."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.support import admin_sql
from worker.errors import StoreUnavailable, is_dependency_failure
from worker.store.postgres import open_store


def terminate_sessions_sql(database_url: str, *, sparing: int) -> str:
    # pg_terminate_backend is what a restart or a failover does to every open session.
    database = database_url.rsplit("/", 1)[1]
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid NOT IN (pg_backend_pid(), {sparing})"
    )


async def test_a_session_terminated_mid_statement_is_store_unavailable(database_url: str) -> None:
    locker = await asyncpg.connect(database_url)
    try:
        async with open_store(database_url, max_size=1) as store:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
            waiting = asyncio.create_task(store.outbox_backlog())
            await asyncio.sleep(0.3)  # the count now waits for the lock
            assert not waiting.done()
            pid = await locker.fetchval("SELECT pg_backend_pid()")
            await admin_sql(terminate_sessions_sql(database_url, sparing=pid))
            with pytest.raises(StoreUnavailable) as lost:
                await waiting
            await transaction.rollback()
    finally:
        await locker.close()
    # The driver's error stays as the cause, for the log; the relay sees only the worker's.
    assert isinstance(lost.value.__cause__, asyncpg.PostgresConnectionError)
    assert is_dependency_failure(lost.value)
