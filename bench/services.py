"""The servers a run needs: a fresh database, fresh RabbitMQ names, the stand-in process.

Where the servers are, and the names that keep one run's broker state apart from another's,
come from `tests.support`, as for the tests: the bench runs against the same local servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aio_pika.abc import AbstractChannel

from tests.ports import free_port
from tests.support import PG_ADMIN_DSN, admin_sql, dsn_for
from worker import topology as topo
from worker.settings import Topology
from worker.store.migrate import migrate

REPO = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def _admin() -> AsyncIterator[asyncpg.Connection]:
    """A connection to the server's maintenance database, for what no worker database holds."""
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        yield conn
    finally:
        await conn.close()


async def postgres_version() -> str:
    async with _admin() as conn:
        return str(await conn.fetchval("SHOW server_version"))


async def commit_count(database: str) -> int:
    """Transactions committed in `database` so far (the statistics lag by up to a second)."""
    async with _admin() as conn:
        count = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
        )
        return int(count or 0)


@contextlib.asynccontextmanager
async def fresh_database(name: str, *, migrated: bool) -> AsyncIterator[str]:
    """A database for one run (the worker's is migrated), dropped afterwards."""
    await admin_sql(f'CREATE DATABASE "{name}"')
    try:
        if migrated:
            await migrate(dsn_for(name))
        yield dsn_for(name)
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def declared(channel: AbstractChannel, topology: Topology) -> AsyncIterator[None]:
    await topo.declare(channel, topology)
    try:
        yield
    finally:
        await topo.delete(channel, topology)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's depth and consumer count, read from the broker."""

    messages: int
    consumers: int


async def queue_stats(channel: AbstractChannel, queue: str) -> QueueStats:
    """Counts straight from the broker: a robust channel's `declare_queue` may hand back the
    declaration it cached when the queue was first declared."""
    underlay = await channel.get_underlay_channel()
    ok = await underlay.queue_declare(queue, passive=True)
    return QueueStats(ok.message_count or 0, ok.consumer_count or 0)


def topology_env(t: Topology) -> dict[str, str]:
    return {
        "AW_INBOUND_EXCHANGE": t.inbound_exchange,
        "AW_INBOUND_QUEUE": t.inbound_queue,
        "AW_OUTBOUND_EXCHANGE": t.outbound_exchange,
        "AW_REPLY_QUEUE": t.reply_queue,
        "AW_HANDOFF_QUEUE": t.handoff_queue,
        "AW_DEAD_LETTER_EXCHANGE": t.dead_letter_exchange,
        "AW_DEAD_LETTER_QUEUE": t.dead_letter_queue,
    }


def clean_env() -> dict[str, str]:
    """This process's environment without AW_* settings a developer may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AW_", "OPENAI_"))}


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """Where the stand-in posts its webhooks for a run, and the secret it signs them with."""

    url: str
    secret: str = field(repr=False)
    # Soon retried, as OpenAI does (a receiver that answered 503 is tried again in seconds).
    retry_base_ms: int = 100
    retry_cap_ms: int = 2000

    def config(self) -> dict[str, Any]:
        return {
            "webhook_url": self.url,
            "webhook_secret": self.secret,
            "webhook_retry_base_ms": self.retry_base_ms,
            "webhook_retry_cap_ms": self.retry_cap_ms,
        }


class StandInProcess:
    """The OpenAI stand-in in a process of its own, so its CPU never counts as the worker's
    and never competes with this process's clock readings; driven by its control API."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self.port = free_port()
        with self._log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker",
                "standin",
                "--port",
                str(self.port),
                "--poll-after-ms",
                "0",  # no openai-poll-after-ms hint: neither contender gets one (fair)
                env=clean_env(),
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        self._http = aiohttp.ClientSession(f"http://127.0.0.1:{self.port}")
        async with asyncio.timeout(30):
            while not await self._healthy():  # noqa: ASYNC110 - polling a port, nothing to await
                await asyncio.sleep(0.1)

    async def _healthy(self) -> bool:
        try:
            await self._call("GET", "/_standin/health")
        except aiohttp.ClientError:
            return False
        return True

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None
        async with self._http.request(method, path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_standin"

    async def prepare(
        self,
        run_ms: int,
        queue_ms: int,
        faults: list[dict[str, Any]],
        webhooks: WebhookTarget | None = None,
    ) -> None:
        """Forgets the previous run (state, journal, faults, webhooks) and sets this run's
        behaviour: webhooks go to `webhooks`, or nowhere."""
        await self._call("POST", "/_standin/reset")
        hooks = webhooks.config() if webhooks else {"webhook_url": None}
        await self._call(
            "POST",
            "/_standin/config",
            {"run_duration_ms": run_ms, "queue_ms": queue_ms, "poll_after_ms": None, **hooks},
        )
        if faults:
            await self._call("POST", "/_standin/faults", {"rules": faults})

    async def journal(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/_standin/journal")
        return list(body["entries"])

    async def runs(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/_standin/runs")
        return list(body["runs"])

    async def webhook_attempts(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/_standin/webhooks")
        return list(body["attempts"])

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
