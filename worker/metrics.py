"""Prometheus metrics, one registry per worker (so in-process tests do not share counters).

Alerts need two things from a counter: a sample before its first event, and no clutter. So
every labelled counter starts at zero for each value its label can take, read from the enums
that define them (a series born at 1 has no earlier sample to rise from, and `rate()` or
`increase()` misses that first event), and the `_created` series are switched off.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from worker.backends.base import RunStatus
from worker.errors import ReasonCode
from worker.relay.operations import ApiStatus, OpenAIOperation
from worker.settings import BackendName
from worker.store.records import IntakeResult

# Process-wide in prometheus_client: one `<name>_created` gauge per counter and histogram
# series, which no query here reads (Prometheus sees resets without it).
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

_PREFIX = "assistant_worker"
# Runs take seconds to minutes; replies are judged against a customer's patience.
_RUN_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_POLL_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)

# Intake counts what it made of a delivery (IntakeResult), or this for an invalid one.
INVALID_OUTCOME = "invalid"
RECEIVED_OUTCOMES = (*(result.value for result in IntakeResult), INVALID_OUTCOME)
FINAL_STATUSES = tuple(status.value for status in RunStatus if status.is_terminal)


def _version() -> str:
    try:
        return version("assistant-worker")
    except PackageNotFoundError:
        return "unknown"


def add_runtime_collectors(registry: CollectorRegistry) -> None:
    """The process's CPU, memory, open files and start time (`process_*`), the interpreter and
    its garbage collector (`python_*`): the names every Python exporter uses, so the usual
    dashboards and alerts apply."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def start_at_zero(counter: Counter, label_sets: Iterable[tuple[str, ...]]) -> None:
    """Creates the counter's series for each label set, at 0."""
    for values in label_sets:
        counter.labels(*values)


class Metrics:
    """Every metric the worker exports at /metrics, in a registry of its own so workers started
    in one process (the tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        add_runtime_collectors(r)
        self.events_received = Counter(
            f"{_PREFIX}_events_received",
            "Inbound deliveries by what intake made of them.",
            ["outcome"],
            registry=r,
        )
        start_at_zero(self.events_received, ((outcome,) for outcome in RECEIVED_OUTCOMES))
        self.events_dead_lettered = Counter(
            f"{_PREFIX}_events_dead_lettered",
            "Events sent to the dead-letter queue.",
            ["reason"],
            registry=r,
        )
        start_at_zero(self.events_dead_lettered, ((reason.value,) for reason in ReasonCode))
        self.replies_published = Counter(
            f"{_PREFIX}_replies_published", "Replies confirmed by the broker.", registry=r
        )
        self.runs_finished = Counter(
            f"{_PREFIX}_runs_finished",
            "Runs (or responses) by final status.",
            ["backend", "status"],
            registry=r,
        )
        start_at_zero(
            self.runs_finished,
            ((backend.value, status) for backend in BackendName for status in FINAL_STATUSES),
        )
        self.run_duration = Histogram(
            f"{_PREFIX}_run_duration_seconds",
            "From starting (or resuming) a run to its end.",
            buckets=_RUN_BUCKETS_S,
            registry=r,
        )
        self.reply_latency = Histogram(
            f"{_PREFIX}_reply_latency_seconds",
            "From an event's arrival to its reply recorded.",
            buckets=_RUN_BUCKETS_S,
            registry=r,
        )
        self.polls_per_run = Histogram(
            f"{_PREFIX}_polls_per_run",
            "Status polls each run needed.",
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        # Every operation by every status: some 170 series, most at 0 for a worker's life, so
        # that increase() sees the first 401 or 5xx of any operation.
        self.openai_requests = Counter(
            f"{_PREFIX}_openai_requests",
            "Model API calls by operation and result.",
            ["operation", "status"],
            registry=r,
        )
        start_at_zero(
            self.openai_requests,
            (
                (operation.value, status.value)
                for operation in OpenAIOperation
                for status in ApiStatus
            ),
        )
        self.openai_retries = Counter(
            f"{_PREFIX}_openai_retries",
            "Model API calls retried after a transient failure.",
            ["operation"],
            registry=r,
        )
        start_at_zero(self.openai_retries, ((operation.value,) for operation in OpenAIOperation))
        self.conversations_swept = Counter(
            f"{_PREFIX}_conversations_swept",
            "Conversations the lease sweep took up: work waiting and no living owner (a worker "
            "died, lost Postgres past its lease, or gave a lease back after a failure).",
            registry=r,
        )
        self.in_flight = Gauge(
            f"{_PREFIX}_conversations_in_flight",
            "Conversations this process owns now.",
            registry=r,
        )
        self.pacing_limit = Gauge(
            f"{_PREFIX}_pacing_limit",
            "How many starting steps and polls may run at once: the concurrency while the event "
            "loop keeps up, less while this process is short of CPU.",
            registry=r,
        )
        self.webhook_wait_oldest = Gauge(
            f"{_PREFIX}_webhook_wait_oldest_seconds",
            "How long the run that has waited longest for its webhook has been waiting (0 when "
            "none waits, or webhooks are off); the sweep (AW_WEBHOOK_SWEEP_S) bounds a lost one.",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            f"{_PREFIX}_outbox_backlog",
            "Replies and dead letters recorded, not yet published.",
            registry=r,
        )
        self.ready = Gauge(
            f"{_PREFIX}_ready",
            "1 while /readyz answers 200 (Postgres and RabbitMQ reachable, consuming); 0 while "
            "starting, waiting for a server or draining.",
            registry=r,
        )
        Info(f"{_PREFIX}_build", "The running version.", registry=r).info({"version": _version()})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
