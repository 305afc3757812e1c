"""What each benchmark run sends and how the stand-in behaves, and who is measured."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Scenario:
    """One load shape. `run_ms` is the stand-in's run duration (after `queue_ms` queued)."""

    key: str
    title: str
    conversations: int
    per_conversation: int
    run_ms: int
    concurrency: int
    queue_ms: int = 20
    # Each run lasts run_ms +- this fraction (uniform, seeded: the same for every contender).
    # Fixed durations would phase-lock with a fixed poll interval: 2,000 ms runs polled at
    # 0, 1 and 2 s are seen just after they end, which flatters 1 s polling.
    run_jitter: float = 0.0
    fault_rate: float = 0.0
    # Burst: a conversation's messages are published back to back. Otherwise round robin, so
    # a conversation's next message comes only after every other conversation had one.
    burst: bool = False
    # Give up waiting after this long without a new reply (faults make the tail slow).
    quiet_s: float = 10.0
    # Events (one per conversation, same run lengths, no faults) answered before the measured
    # load, unmeasured: a worker in production has its connections open and has seen runs.
    warmup: int = 50
    # A security scenario: this many forged deliveries are posted to the webhook receiver, at
    # `forged_per_s`, while the load flows (bench/forge.py). Only the webhooks worker runs it,
    # beside a control run of the same load without them.
    forged: int = 0
    forged_per_s: float = 500.0

    @property
    def events(self) -> int:
        return self.conversations * self.per_conversation

    @property
    def reference(self) -> str:
        """The contender every other is compared with in this scenario's table."""
        return CONTROL.key if self.forged else BASELINE.key

    def runs_in(self, selected: list[str]) -> list[str]:
        """Who runs in this scenario, of the contenders selected: all of them; in a security
        scenario only the webhooks worker, with its control run."""
        if not self.forged:
            return list(selected)
        return [WEBHOOKS.key, CONTROL.key] if WEBHOOKS.key in selected else []

    def plan(self, tag: str) -> list[dict[str, Any]]:
        """The user_message.v1 events in publication order; every text is unique."""
        if self.burst:
            order = [
                (c, k) for c in range(self.conversations) for k in range(self.per_conversation)
            ]
        else:
            order = [
                (c, k) for k in range(self.per_conversation) for c in range(self.conversations)
            ]
        durations = self._durations(len(order))
        return [
            {
                "event_id": f"{tag}-{c}-{k}",
                "conversation_id": f"{tag}-conv-{c}",
                "text": f"message {k} of conversation {c} ({tag}){marker}",
            }
            for (c, k), marker in zip(order, durations, strict=True)
        ]

    def warmup_plan(self, tag: str) -> list[dict[str, Any]]:
        shape = replace(self, conversations=self.warmup, per_conversation=1, burst=False)
        return shape.plan(f"{tag}-warmup")

    def _durations(self, count: int) -> list[str]:
        """The stand-in's per-run duration marker for each event, if durations vary."""
        if not self.run_jitter:
            return [""] * count
        return [f" [[delay_ms:{ms}]]" for ms in self.run_durations_ms(count)]

    def run_durations_ms(self, count: int) -> list[int]:
        rng = random.Random(f"{self.key}-durations")
        spread = self.run_ms * self.run_jitter
        return [round(self.run_ms + rng.uniform(-spread, spread)) for _ in range(count)]

    def fault_rules(self) -> list[dict[str, Any]]:
        """Half 429 (with Retry-After), half 500, on every /v1 request, `fault_rate` in all.

        The stand-in tries rules in order, so the second rate is scaled to make the total exact.
        """
        if not self.fault_rate:
            return []
        half = self.fault_rate / 2
        return [
            {"kind": "status", "status": 429, "rate": half, "retry_after_s": 0.5},
            {"kind": "status", "status": 500, "rate": half / (1 - half)},
        ]

    def describe(self) -> str:
        shape = "bursts" if self.burst else "round robin"
        faults = f", {self.fault_rate:.0%} faults" if self.fault_rate else ""
        jitter = f" +- {self.run_jitter:.0%}" if self.run_jitter else ""
        warmup = f"; after {self.warmup} warm-up events" if self.warmup else ""
        forged = (
            f"; {self.forged:,} forged webhook deliveries at {self.forged_per_s:g}/s meanwhile"
            if self.forged
            else ""
        )
        return (
            f"{self.events} events = {self.conversations} conversations x "
            f"{self.per_conversation} ({shape}); runs {self.queue_ms} ms queued + "
            f"{self.run_ms} ms{jitter}; concurrency {self.concurrency}{faults}{warmup}{forged}"
        )


FULL = (
    Scenario("a", "instant runs", 150, 10, run_ms=0, queue_ms=0, concurrency=32),
    Scenario(
        "b", "2 s runs, 1,000 in flight", 1000, 1, run_ms=2000, run_jitter=0.25, concurrency=1000
    ),
    Scenario("c", "bursts of 5", 100, 5, run_ms=500, concurrency=32, burst=True),
    Scenario("d", "10% 429/500", 600, 1, run_ms=200, concurrency=32, fault_rate=0.10),
    Scenario("e", "forged webhooks", 200, 5, run_ms=500, concurrency=32, forged=10_000),
)

QUICK = (
    Scenario("a", "instant runs", 30, 10, run_ms=0, queue_ms=0, concurrency=32, quiet_s=5),
    Scenario("b", "2 s runs, 250 in flight", 250, 1, run_ms=2000, run_jitter=0.25, concurrency=250),
    Scenario("c", "bursts of 5", 20, 5, run_ms=500, concurrency=32, burst=True, quiet_s=5),
    Scenario("d", "10% 429/500", 120, 1, run_ms=200, concurrency=32, fault_rate=0.10),
    Scenario("e", "forged webhooks", 40, 5, run_ms=500, concurrency=32, quiet_s=5, forged=2_000),
)

# The smoke test's size: a few seconds per contender.
SMOKE = Scenario(
    "a", "instant runs (smoke)", 5, 4, run_ms=0, queue_ms=0, concurrency=8, quiet_s=5, warmup=3
)
SMOKE_FORGED = replace(
    SMOKE, key="e", title="forged webhooks (smoke)", forged=120, forged_per_s=200
)


@dataclass(frozen=True, slots=True)
class Contender:
    """What is measured: the worker on one backend, or the baseline every ratio is taken against."""

    key: str
    label: str
    # The worker's AW_BACKEND; None for the baseline, the reference the ratios are taken against.
    backend: str | None
    # Runs end by webhook (AW_WEBHOOKS=true): a receiver process of its own records them.
    webhooks: bool = False
    # A security scenario's reference: the same worker and load, no forged deliveries.
    control: bool = False
    # Tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), spans exported to the bench's sink: the share of
    # traces sampled (OTEL_TRACES_SAMPLER_ARG of parentbased_traceidratio); 0: tracing off.
    traced: float = 0.0

    @property
    def is_baseline(self) -> bool:
        return self.backend is None


ASSISTANTS = Contender("assistants", "worker (assistants)", "assistants")
BASELINE = Contender("baseline", "baseline", None)
RESPONSES = Contender("responses", "worker (responses)", "responses")
WEBHOOKS = Contender("webhooks", "worker (responses, webhooks)", "responses", webhooks=True)
TRACED = Contender("traced", "worker (responses, traced)", "responses", traced=1.0)
SAMPLED = Contender("sampled", "worker (responses, 10 % traced)", "responses", traced=0.1)
CONTROL = Contender(
    "control", "webhooks, no forgeries (control)", "responses", webhooks=True, control=True
)
# What --contenders takes; the control runs only where a security scenario wants it.
CONTENDERS = {c.key: c for c in (ASSISTANTS, BASELINE, RESPONSES, WEBHOOKS, TRACED, SAMPLED)}


def contender(key: str) -> Contender:
    if key == CONTROL.key:
        return CONTROL
    if key not in CONTENDERS:
        raise ValueError(f"unknown contender {key!r}: one of {', '.join(CONTENDERS)}")
    return CONTENDERS[key]


def selected_contenders(keys: str) -> list[str]:
    """The contenders named in `keys` (comma-separated), in that order; a misspelt one fails."""
    chosen = [k.strip() for k in keys.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in CONTENDERS]
    if unknown:
        raise ValueError(f"unknown contenders {unknown}: any of {', '.join(CONTENDERS)}")
    return chosen


def select(available: tuple[Scenario, ...], keys: str) -> tuple[Scenario, ...]:
    wanted = {k.strip() for k in keys.split(",") if k.strip()}
    unknown = wanted - {s.key for s in available}
    if unknown:
        raise ValueError(f"unknown scenarios: {sorted(unknown)}")
    return tuple(s for s in available if s.key in wanted)
