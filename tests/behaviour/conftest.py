"""The behaviour suite's fixtures: every test runs once on each store.

`memory` needs no server; `postgres` gets a fresh database of its own (copied from the migrated
template, tests/conftest.py). `make test-fast` deselects the postgres runs (`-m "not postgres"`),
so it runs without Postgres or RabbitMQ; the model side is always the in-process stand-in.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from pydantic import SecretStr

from standin import StandIn, StandInConfig
from tests.behaviour.relay import Parked, Relay
from tests.support import API_KEY, tagged_topology
from worker import crashpoints
from worker.service import make_client
from worker.settings import BackendName, Settings
from worker.store.memory import MemoryStore
from worker.store.ports import Store
from worker.store.postgres import PostgresStore, create_pool

# Small enough that a test can fill a batch.
BATCH_MAX_EVENTS = 3
# Bounded failures: tries before an internal error is dead-lettered.
INTERNAL_ATTEMPTS = 3


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_dsn(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """The test's own database, only for the postgres runs (memory runs touch no server)."""
    if store_kind == "memory":
        return None
    return str(request.getfixturevalue("database_url"))


@pytest.fixture
async def store(store_dsn: str | None) -> AsyncIterator[Store]:
    if store_dsn is None:
        yield MemoryStore(batch_max_events=BATCH_MAX_EVENTS)
        return
    # Two connections at least: one outbox claim may be open while another is made.
    pool = await create_pool(store_dsn, max_size=4)
    try:
        yield PostgresStore(pool, batch_max_events=BATCH_MAX_EVENTS)
    finally:
        await pool.close()


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    server = StandIn(StandInConfig(run_duration_ms=20, queue_ms=5, poll_after_ms=None))
    await server.start(host="127.0.0.1", port=0)
    yield server
    await server.stop()


@pytest.fixture
def backend() -> str:
    """The backend new conversations use; modules override this to cover both."""
    return "responses"


@pytest.fixture
def settings(standin: StandIn, backend: str) -> Settings:
    tag = f"b{uuid.uuid4().hex[:10]}"
    return Settings(
        backend=BackendName(backend),
        openai_base_url=standin.base_url,
        openai_api_key=SecretStr(API_KEY),
        topology=tagged_topology(tag),
        concurrency=8,
        batch_max_events=BATCH_MAX_EVENTS,
        debounce_ms=0,  # tests that debounce say so; the rest answer at once
        poll_initial_ms=10,
        poll_max_ms=50,
        api_attempts=3,
        api_backoff_base_s=0.01,
        api_backoff_cap_s=0.05,
        internal_attempts=INTERNAL_ATTEMPTS,
        internal_backoff_base_s=0.01,
        internal_backoff_cap_s=0.05,
        lease_ttl_s=5.0,
        worker_name=f"worker-{tag}",
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    async with make_client(settings) as sdk:
        yield sdk


@pytest.fixture
def relay(settings: Settings, store: Store, client: openai.AsyncOpenAI) -> Relay:
    return Relay(settings, store, client)


@pytest.fixture
def other(settings: Settings, store: Store, client: openai.AsyncOpenAI) -> Relay:
    """A second worker on the same store."""
    return Relay(settings.model_copy(update={"worker_name": "other-worker"}), store, client)


@pytest.fixture
def parked(settings: Settings, store: Store, client: openai.AsyncOpenAI) -> Parked:
    return Parked(settings, store, client)


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    """Faults a test arms end with it."""
    yield
    crashpoints.arm_faults("")
