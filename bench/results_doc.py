"""bench/RESULTS.md, and the same tables on the terminal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench import targets
from bench.machine import summary
from bench.measure import RunMetrics
from bench.report import (
    Table,
    forgery_table,
    scenario_table,
    summary_table,
    to_markdown,
    to_rich,
)
from bench.scenarios import Scenario

DEFINITIONS = """\
How each number is measured (all times are epoch clocks of this one machine):

- **answered events/s (sustained)**: events answered between the moment the 10th and the 90th
  percentile of events got their first reply, divided by that span (warm-up and drain tail left
  out). The whole plan is published at once as a backlog, so this is capacity.
- **worker CPU ms per answered event**: user + system CPU time of the measured process only
  (`/proc/PID/stat`; not the stand-in, broker, Postgres or harness), from the first event
  published to the last event answered, divided by the events answered. **receiver CPU ms per
  answered event**: the same for the webhooks worker's receiver (`python -m worker webhooks`,
  a process of its own), over the same span; **worker + receiver** adds the two (for the other
  contenders it is the worker's alone), so no cost hides in the second process.
- **end-to-end latency**: first reply naming the event in `in_reply_to`, as consumed by the
  harness, minus the moment the harness published the event. It includes queueing behind the
  backlog.
- **detection delay**: for each distinct reply, its arrival at the harness's reply consumer minus
  `ended_at` of the run named by the reply's `run_id` in the stand-in's run records (the instant
  the stand-in moved the run to its terminal status). It covers noticing the end (polling),
  fetching the reply, recording and publishing it, and the broker. With webhooks, noticing is
  the stand-in's delivery, the receiver's record and NOTIFY, and the worker's retrieve.
- **OpenAI requests per answered event**: every `/v1` request in the stand-in's journal
  (retries and failed ones included) divided by events answered. **OpenAI requests per run**:
  the same requests divided by runs created; the targets name the conversation creates
  (`POST /v1/conversations` or `/v1/threads`, one per new conversation) among them.
- **polls per run**: `GET` of one run (`/v1/threads/{t}/runs/{r}`) or one response
  (`/v1/responses/{id}`), divided by runs created.
- **runs per conversation**: runs created / conversations. In (c) each conversation is one burst
  of 5 messages, so this is runs per burst.
- **'active run' 400s**: `POST`s answered 400 by the one-run-per-thread lock (messages and runs,
  or `conversation_locked` on Responses); injected faults are not counted.
- **lost replies**: events that ended in neither a reply nor a dead letter (the bench waits for
  either, so an event dead-lettered after its last retry is **dead-lettered**, not lost; a dead
  letter is named by its `x-aw-event-id`). **events answered twice**: events named by two
  replies with different `event_id` (a re-published reply keeps its `event_id` and does not count).
- **events in flight**: the most events taken from the inbound queue and not yet answered at
  one moment (confirmed by the broker so far, minus the queue's ready count sampled every
  100 ms, minus answered). For the worker these are the conversations it holds (prefetch =
  concurrency), whether or not their run has started. **runs active at once**: the most runs
  the stand-in had between creation and end at one moment.
- **peak RSS**: the kernel's high-water mark (`VmHWM`) of the measured process. **RSS per event
  in flight**: highest sampled RSS minus RSS idle before the load, divided by events in flight.
  **RSS growth under load**: that highest sampled RSS (every 100 ms) minus the RSS sampled just
  before the load, for the worker and for the receiver.
- **Postgres transactions per event**: `xact_commit` of the contender's own database over the
  run (read-only statements count too) / events answered.
  **Postgres / RabbitMQ / stand-in CPU per event**: CPU of those processes during the run, as
  context for where the machine's time goes; not part of the worker's figure.
- **machine CPU busy %**: busy time of all CPUs during the run / (wall time x CPUs), whoever
  used it: the contenders share 2 cores with RabbitMQ, Postgres, the stand-in and the harness.
- **forged deliveries** (scenario e): `python -m bench.forge`, a process of its own, posts them
  to the receiver at a steady rate from just before the load is published until all are sent;
  each kind in turn. The answers are counted by status as the forger got them; the receiver's
  own count (its `/metrics`, `assistant_worker_webhook_deliveries_total` by outcome, over the
  load) must show no more deliveries answered 200 than the stand-in's real deliveries it
  answered 2xx. The forger's CPU is not the worker's or the receiver's.
"""

CONDITIONS = """\
Conditions: the stand-in runs as a process of its own (its CPU is not counted), configured with
`poll_after_ms=None` for every contender, so neither gets an `openai-poll-after-ms` hint and the
SDK's `create_and_poll` falls back to its 1 s interval. The worker runs with
`AW_LOG_LEVEL=warning` and its default settings (poll schedule learned from run lengths, 100 ms
x1.5 up to 2 s until it has seen 20 runs); the baseline (`bench/baseline.py`) runs with the
SDK's defaults (2 retries). Each run gets a fresh database, fresh queues and a reset stand-in;
each contender process first answers the scenario's warm-up events (one per conversation, same
run lengths, no faults), which are then forgotten by the stand-in and left out of every figure,
as a worker in production has seen runs before; contenders alternate within each repetition.
The webhooks worker (`worker (responses, webhooks)`) is the responses worker with
`AW_WEBHOOKS=true` (the 30 s sweep by default) and, beside it, its receiver
(`python -m worker webhooks`) on the run's database, started fresh for each run, with a fresh
`whsec_` secret the stand-in signs its deliveries with (`webhook_url` set for that run only;
every other contender's runs have no webhooks). In the security scenario (e) only the webhooks
worker runs: once with the forged deliveries and once without them (the control run), in each
repetition, the same load both times. The traced worker (`worker (responses, traced)`) is the
responses worker with tracing on by the standard variables alone (`OTEL_EXPORTER_OTLP_ENDPOINT`,
the SDK's defaults: every span sampled, batched every 5 s), exporting OTLP/HTTP to a sink in the
bench process that answers as a collector would; `worker (responses, 10 % traced)` is the same
with `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`. Their
target compares each with the responses worker in the same repetition.
"""


@dataclass
class Document:
    """RESULTS.md from the results of one bench invocation, with the machine and the command
    that produced it, so results.json alone can render it again."""

    command: str
    machine: dict[str, Any]
    scenarios: tuple[Scenario, ...]
    contenders: list[str]
    repeat: int
    results: list[RunMetrics]

    def tables(self) -> list[Table]:
        verdicts = targets.evaluate(self.results, self.scenarios)
        found = [targets.table(verdicts)] if verdicts else []
        shared = tuple(s for s in self.scenarios if not s.forged)
        if shared:
            found.append(summary_table(self.results, shared, self.contenders))
        for s in self.scenarios:
            if not s.runs_in(self.contenders):
                continue  # a security scenario without the webhooks contender
            found.append(scenario_table(self.results, s, self.contenders))
            if s.forged:
                found.append(forgery_table(self.results, s))
        return found

    def markdown(self) -> str:
        parts = [
            "# Benchmark results",
            "",
            f"Produced by `{self.command}` (`make bench` runs it), {self.repeat} repetitions.",
            "",
            f"Machine: {summary(self.machine)}.",
            "",
            CONDITIONS,
        ]
        parts += [to_markdown(t) for t in self.tables()]
        parts += ["## Definitions", "", DEFINITIONS]
        return "\n".join(parts)

    def rich(self) -> list[Any]:
        return [f"machine: {summary(self.machine)}", *[to_rich(t) for t in self.tables()]]
