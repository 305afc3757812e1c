"""Fixtures on the real servers: a fresh database and fresh RabbitMQ names for every test."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aio_pika
import asyncpg
import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from pydantic import SecretStr

from tests.harness import ReplyCollector
from tests.support import AMQP_URL, API_KEY, admin_sql, dsn_for, tagged_topology
from worker import crashpoints
from worker import topology as topo
from worker.profiles.config import profiles_of
from worker.service import WorkerService
from worker.settings import BackendName, Settings, Topology
from worker.store.migrate import migrate

if TYPE_CHECKING:
    from standin import StandIn

TEMPLATE_DB = f"aw_test_template_{os.getpid()}"


def pytest_configure(config: pytest.Config) -> None:
    # The behaviour suite's runs on Postgres; `make test-fast` deselects them.
    config.addinivalue_line("markers", "postgres: runs against a fresh Postgres database")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A command run in-process (typer's CliRunner) points logging at its own output, which
    is closed when it returns: later tests in the process must not log into it."""
    config = structlog.get_config()
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.configure(**config)
    logging.getLogger().handlers[:] = handlers


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """Migrated once per run; every test copies it (CREATE DATABASE ... TEMPLATE is fast)."""
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"'))
    asyncio.run(admin_sql(f'CREATE DATABASE "{TEMPLATE_DB}"'))
    asyncio.run(migrate(dsn_for(TEMPLATE_DB)))
    yield TEMPLATE_DB
    asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    name = f"aw_test_{uuid.uuid4().hex[:12]}"
    await admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield dsn_for(name)
    await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def topology() -> Topology:
    return tagged_topology(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def amqp(request: pytest.FixtureRequest) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(
        AMQP_URL, client_properties={"connection_name": f"test {request.node.name}"}
    )
    yield connection
    await connection.close()


@pytest.fixture
async def channel(
    amqp: AbstractRobustConnection, topology: Topology
) -> AsyncIterator[AbstractChannel]:
    """A confirming channel with the test's topology declared; deleted after the test."""
    ch = await amqp.channel(publisher_confirms=True)
    await topo.declare(ch, topology)
    yield ch
    await topo.delete(ch, topology)
    await ch.close()


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    from standin import StandIn, StandInConfig

    server = StandIn(StandInConfig(run_duration_ms=100, queue_ms=10, poll_after_ms=None))
    await server.start(host="127.0.0.1", port=0)
    yield server
    await server.stop()


@pytest.fixture
def backend() -> str:
    """The backend new conversations use; test modules override this to cover both."""
    return "responses"


@pytest.fixture
def settings(
    database_url: str,
    topology: Topology,
    standin: StandIn,
    channel: AbstractChannel,
    backend: str,
) -> Settings:
    return Settings(
        backend=BackendName(backend),
        amqp_url=SecretStr(AMQP_URL),
        database_url=SecretStr(database_url),
        openai_base_url=standin.base_url,
        openai_api_key=SecretStr(API_KEY),
        topology=topology,
        concurrency=8,
        debounce_ms=0,  # tests that debounce say so; the rest answer at once
        poll_initial_ms=30,
        poll_max_ms=300,
        api_attempts=4,
        api_backoff_base_s=0.05,
        api_backoff_cap_s=1.0,
        lease_ttl_s=3.0,
        sweep_interval_s=1.0,
        outbox_interval_s=0.2,
        shutdown_grace_s=5.0,
        worker_name=f"test-worker-{uuid.uuid4().hex[:6]}",
        health_host="127.0.0.1",
        health_port=0,
    )


@pytest.fixture
async def collector(channel: AbstractChannel, topology: Topology) -> ReplyCollector:
    """Every reply published during the test, as it arrives."""
    replies = ReplyCollector()
    await replies.start(channel, topology)
    return replies


@dataclass
class RunningWorker:
    service: WorkerService
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=30)


async def start_worker(settings: Settings) -> RunningWorker:
    service = WorkerService(settings, profiles_of(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({ready, task}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert service.ready.is_set(), "worker did not become ready within 20 s"
    return RunningWorker(service, stop, task)


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[RunningWorker]:
    running = await start_worker(settings)
    yield running
    await running.shutdown()


# Internal failures a batch may have before it is dead-lettered, for `bounded_worker`.
INTERNAL_ATTEMPTS = 3


@pytest.fixture
async def bounded_worker(settings: Settings) -> AsyncIterator[RunningWorker]:
    """A worker that dead-letters a batch after INTERNAL_ATTEMPTS internal failures, quickly."""
    running = await start_worker(
        settings.model_copy(
            update={
                "internal_attempts": INTERNAL_ATTEMPTS,
                "internal_backoff_base_s": 0.05,
                "internal_backoff_cap_s": 0.2,
            }
        )
    )
    yield running
    await running.shutdown()


@pytest.fixture
def disarmed() -> Iterator[None]:
    """Faults a test arms (crashpoints.arm_faults) end with it."""
    yield
    crashpoints.arm_faults("")
