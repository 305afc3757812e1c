"""Prometheus metrics, one registry per worker (so in-process tests do not share counters)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

_PREFIX = "assistant_worker"
# Runs take seconds to minutes; replies are judged against a customer's patience.
_RUN_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_POLL_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


def _version() -> str:
    try:
        return version("assistant-worker")
    except PackageNotFoundError:
        return "unknown"


class Metrics:
    """Every metric the worker exports at /metrics, in a registry of its own so workers started
    in one process (the tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            f"{_PREFIX}_events_received",
            "Inbound deliveries by what intake made of them.",
            ["outcome"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            f"{_PREFIX}_events_dead_lettered",
            "Events sent to the dead-letter queue.",
            ["reason"],
            registry=r,
        )
        self.replies_published = Counter(
            f"{_PREFIX}_replies_published", "Replies confirmed by the broker.", registry=r
        )
        self.runs_finished = Counter(
            f"{_PREFIX}_runs_finished",
            "Runs (or responses) by final status.",
            ["backend", "status"],
            registry=r,
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
        self.openai_requests = Counter(
            f"{_PREFIX}_openai_requests",
            "Model API calls by operation and result.",
            ["operation", "status"],
            registry=r,
        )
        self.openai_retries = Counter(
            f"{_PREFIX}_openai_retries",
            "Model API calls retried after a transient failure.",
            ["operation"],
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
        Info(f"{_PREFIX}_build", "The running version.", registry=r).info({"version": _version()})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
