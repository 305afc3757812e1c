"""The metrics an alert can rely on: every label value from zero, no `_created` clutter, the
process and runtime collectors, readiness as a gauge, lease sweeps counted, and the model API's
requests by operation and a closed set of statuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import httpx2
import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningWorker
from worker.backends.base import RunStatus
from worker.backends.response_wire import read_snapshot
from worker.backends.sdk_errors import translate
from worker.errors import ApiError, ReasonCode, ThreadBusy
from worker.health import Health, HealthServer
from worker.metrics import Metrics
from worker.relay.operations import ApiStatus, OpenAIOperation, api_status
from worker.relay.ownership import Ownership
from worker.relay.retry import RetryPolicy
from worker.settings import BackendName
from worker.store.postgres import PostgresStore, create_pool
from worker.store.records import IncomingEvent, IntakeResult, Lease
from worker.webhooks.receiver import OUTCOMES, WebhookMetrics

# The collectors' names, as every Python exporter has them.
RUNTIME_SAMPLES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_collections_total",
)
REQUESTS = "assistant_worker_openai_requests_total"
RETRIES = "assistant_worker_openai_retries_total"


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def page(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


# --- every label value from zero ---------------------------------------------------------


def test_every_dead_letter_reason_is_exported_at_zero_before_the_first() -> None:
    registry = Metrics().registry
    for reason in ReasonCode:
        counted = value(registry, "assistant_worker_events_dead_lettered_total", reason=reason)
        assert counted == 0.0, f"dead letters with reason {reason} are not exported at 0"


def test_every_intake_outcome_is_exported_at_zero() -> None:
    registry = Metrics().registry
    for outcome in [*IntakeResult, "invalid"]:
        counted = value(registry, "assistant_worker_events_received_total", outcome=outcome)
        assert counted == 0.0, f"intake outcome {outcome} is not exported at 0"


def test_every_final_run_status_is_exported_at_zero_for_each_backend() -> None:
    registry = Metrics().registry
    final = [status for status in RunStatus if status.is_terminal]
    assert RunStatus.FAILED in final
    assert RunStatus.COMPLETED in final
    for backend in BackendName:
        for status in final:
            counted = value(
                registry, "assistant_worker_runs_finished_total", backend=backend, status=status
            )
            assert counted == 0.0, f"{backend} runs ended {status} are not exported at 0"
    # Runs are counted when they end: a status on the way is never a label value.
    going = value(
        registry, "assistant_worker_runs_finished_total", backend="responses", status="queued"
    )
    assert going is None


def test_a_counted_event_moves_its_own_series_only() -> None:
    metrics = Metrics()
    metrics.events_dead_lettered.labels(ReasonCode.SCHEMA_INVALID.value).inc()
    registry = metrics.registry
    name = "assistant_worker_events_dead_lettered_total"
    assert value(registry, name, reason="schema_invalid") == 1.0
    assert value(registry, name, reason="malformed_json") == 0.0


def test_the_receivers_outcomes_are_exported_at_zero() -> None:
    registry = WebhookMetrics().registry
    for outcome in OUTCOMES:
        counted = value(registry, "assistant_worker_webhook_deliveries_total", outcome=outcome)
        assert counted == 0.0, f"deliveries {outcome} are not exported at 0"


def test_every_api_operation_and_status_is_exported_at_zero() -> None:
    registry = Metrics().registry
    for operation in OpenAIOperation:
        retried = value(registry, RETRIES, operation=operation)
        assert retried == 0.0, f"retries of {operation} are not exported at 0"
        for status in ApiStatus:
            counted = value(registry, REQUESTS, operation=operation, status=status)
            assert counted == 0.0, f"{operation} answered {status} is not exported at 0"


# --- the model API's statuses: a closed set -----------------------------------------------


def _status_error(status: int) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://x/v1/responses")
    response = httpx2.Response(status, request=request)
    return openai.APIStatusError("boom", response=response, body=None)


def _unreadable_body() -> ApiError:
    with pytest.raises(ApiError) as raised:
        read_snapshot(b"[]")
    return raised.value


_REQUEST = httpx2.Request("POST", "http://x/v1/responses")
FAILURES: list[tuple[str, BaseException, ApiStatus]] = [
    ("400", translate(_status_error(400)), ApiStatus.BAD_REQUEST),
    ("401", translate(_status_error(401)), ApiStatus.UNAUTHORIZED),
    ("403", translate(_status_error(403)), ApiStatus.FORBIDDEN),
    ("404", translate(_status_error(404)), ApiStatus.NOT_FOUND),
    ("429", translate(_status_error(429)), ApiStatus.RATE_LIMITED),
    # Retried, and rare: their class says enough.
    ("408", translate(_status_error(408)), ApiStatus.OTHER_4XX),
    ("409", translate(_status_error(409)), ApiStatus.OTHER_4XX),
    ("422", translate(_status_error(422)), ApiStatus.OTHER_4XX),
    ("500", translate(_status_error(500)), ApiStatus.SERVER_ERROR),
    ("503", translate(_status_error(503)), ApiStatus.SERVER_ERROR),
    ("599", translate(_status_error(599)), ApiStatus.SERVER_ERROR),
    ("302", translate(_status_error(302)), ApiStatus.OTHER),
    ("timeout", translate(openai.APITimeoutError(request=_REQUEST)), ApiStatus.TIMEOUT),
    ("refused", translate(openai.APIConnectionError(request=_REQUEST)), ApiStatus.CONNECTION_ERROR),
    ("thread-busy", ThreadBusy("run_1"), ApiStatus.BAD_REQUEST),
    ("unreadable-body", _unreadable_body(), ApiStatus.MALFORMED_RESPONSE),
    (
        "sdk-unreadable-body",
        translate(
            openai.APIResponseValidationError(
                response=httpx2.Response(200, request=_REQUEST), body=[]
            )
        ),
        ApiStatus.MALFORMED_RESPONSE,
    ),
    ("sdk-unknown", translate(openai.OpenAIError("could not read")), ApiStatus.OTHER),
    ("worker-bug", KeyError("thread_id"), ApiStatus.OTHER),
]


@pytest.mark.parametrize(
    ("failure", "status"), [case[1:] for case in FAILURES], ids=[case[0] for case in FAILURES]
)
def test_each_failure_is_counted_under_a_known_status(
    failure: BaseException, status: ApiStatus
) -> None:
    assert api_status(failure) is status


async def test_a_retried_call_moves_only_its_own_series() -> None:
    metrics = Metrics()
    policy = RetryPolicy(attempts=4, base_s=0.001, cap_s=0.001, metrics=metrics)
    failures: list[BaseException] = [translate(_status_error(503)), translate(_status_error(418))]

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    with pytest.raises(ApiError):  # 418: permanent, not retried
        await policy.call(OpenAIOperation.START_RUN, call)
    assert await policy.call(OpenAIOperation.START_RUN, call) == "done"

    got = samples(metrics.exposition().decode())
    moved = {labels: n for (name, labels), n in got.items() if name == REQUESTS and n}
    start_run = ("operation", "start_run")
    assert moved == {
        frozenset({start_run, ("status", "5xx")}): 1.0,
        frozenset({start_run, ("status", "4xx")}): 1.0,
        frozenset({start_run, ("status", "ok")}): 1.0,
    }
    retried = {labels: n for (name, labels), n in got.items() if name == RETRIES and n}
    assert retried == {frozenset({start_run}): 1.0}
    # A status nobody listed (418) added no series of its own.
    statuses = {dict(labels)["status"] for name, labels in got if name == REQUESTS}
    assert statuses == set(ApiStatus)


# --- no _created, and the runtime collectors ---------------------------------------------


@pytest.mark.parametrize("exporter", [Metrics, WebhookMetrics])
def test_no_created_series_and_the_runtime_collectors(
    exporter: type[Metrics] | type[WebhookMetrics],
) -> None:
    metrics = exporter()
    names = {name for name, _labels in samples(metrics.exposition().decode())}
    assert not [n for n in names if n.endswith("_created")], "a _created series is exported"
    missing = [n for n in RUNTIME_SAMPLES if n not in names]
    assert not missing, f"{exporter.__name__} lacks the runtime collectors' {missing}"


# --- readiness as a gauge -----------------------------------------------------------------


def test_the_ready_gauge_says_what_readyz_would() -> None:
    metrics = Metrics()
    health = Health()
    HealthServer(health, metrics)
    ready = "assistant_worker_ready"
    assert value(metrics.registry, ready) == 0.0, "not connected yet: not ready"
    health.broker_connected = lambda: True
    health.database_ok = True
    health.consuming = True
    assert health.ready
    assert value(metrics.registry, ready) == 1.0
    health.draining = True
    assert value(metrics.registry, ready) == 0.0


# --- a live worker's page -------------------------------------------------------------------


async def test_a_live_workers_page_has_every_series_an_alert_needs(worker: RunningWorker) -> None:
    got = samples(await page(f"http://127.0.0.1:{worker.service.health_port}/metrics"))
    names = {name for name, _labels in got}

    for reason in ReasonCode:
        key = ("assistant_worker_events_dead_lettered_total", frozenset({("reason", reason)}))
        assert got.get(key) == 0.0, f"{reason} is not on the page at 0"
    assert got[("assistant_worker_conversations_swept_total", frozenset())] == 0.0
    for operation in OpenAIOperation:
        assert got.get((RETRIES, frozenset({("operation", operation)}))) == 0.0
        for status in ApiStatus:
            series = (REQUESTS, frozenset({("operation", operation), ("status", status)}))
            assert got.get(series) == 0.0, f"{operation} {status} is not on the page at 0"
    assert got[("assistant_worker_ready", frozenset())] == 1.0
    assert not [n for n in names if n.endswith("_created")]
    assert set(RUNTIME_SAMPLES) <= names


# --- lease sweeps ---------------------------------------------------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresStore]:
    pool = await create_pool(database_url, max_size=4)
    yield PostgresStore(pool)
    await pool.close()


async def orphan(store: PostgresStore, conversation_id: str) -> None:
    """A conversation with work whose owner died: its lease lapsed, nothing was handed back."""
    doc = {"event_id": f"evt-{conversation_id}", "conversation_id": conversation_id, "text": "hi"}
    taken = await store.intake(
        IncomingEvent(
            event_id=doc["event_id"],
            conversation_id=conversation_id,
            body=json.dumps(doc).encode(),
            headers={},
            routing_key="user_message.v1",
            replay_count=0,
            forced=False,
            occurred_at=None,
        ),
        backend=BackendName.RESPONSES,
        assistant_id=None,
        profile=None,
        owner="dead-worker",
        lease_ttl_s=0.01,
    )
    assert taken.lease is not None


async def test_a_conversation_taken_up_by_the_sweep_is_counted(store: PostgresStore) -> None:
    metrics = Metrics()
    processed: asyncio.Queue[str] = asyncio.Queue()

    async def process(lease: Lease) -> None:
        await processed.put(lease.conversation_id)

    ownership = Ownership(
        store,
        process,
        owner="survivor",
        capacity=4,
        ttl_s=5.0,
        sweep_interval_s=0.2,
        metrics=metrics,
    )
    swept = "assistant_worker_conversations_swept_total"
    await orphan(store, "c-orphaned")
    sweeping = asyncio.create_task(ownership.sweep_forever())
    try:
        assert await asyncio.wait_for(processed.get(), timeout=10) == "c-orphaned"
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
        await ownership.stop_sweeps()
    assert value(metrics.registry, swept) == 1.0
