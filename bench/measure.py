"""Measurements: the worker's CPU and memory from /proc, and the metrics of one run.

CPU is user + system time of the measured process alone (`/proc/PID/stat`), never the stand-in's,
the broker's or this harness's. Peak RSS is the kernel's high-water mark (`VmHWM`).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.load import Received, Sent
from bench.scenarios import Contender, Scenario

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
POSTGRES = frozenset({"postgres"})
RABBITMQ = frozenset({"beam.smp"})
_POLL_PATH = re.compile(r"^/v1/(threads/[^/]+/runs/[^/]+|responses/[^/]+)$")
# Where a request meets the one-operation-at-a-time lock ("thread already has an active run",
# "can't add messages ... while a run is active", conversation_locked).
_LOCKED_PATH = re.compile(
    r"^/v1/(threads/[^/]+/(messages|runs)|responses|conversations/[^/]+/items)$"
)
# A helpdesk conversation's thread (Assistants) or conversation (Responses), made once.
_CONVERSATION_PATHS = frozenset({"/v1/threads", "/v1/conversations"})


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process (or of the whole machine): when, CPU seconds so far, memory."""

    at: float
    cpu_s: float
    rss_bytes: int


def read_sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; the numeric fields start after its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime
    return Sample(time.time(), cpu_s, _status_kb(pid, "VmRSS") * 1024)


def read_machine() -> Sample:
    """All CPUs' busy time (everything but idle and iowait) as one process-like sample."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return Sample(time.time(), (sum(ticks[:8]) - idle) / _TICKS_PER_S, 0)


class GroupCpu:
    """CPU used since the first call by every process with one of these command names
    (Postgres backends, the broker). Each process counts from when it was first seen (from 0
    if it started later), and one that exits keeps what it had used at its last sample."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        self._first: dict[int, float] | None = None
        self._used: dict[int, float] = {}

    def __call__(self) -> Sample:
        now = self._scan()
        if self._first is None:
            self._first = dict(now)
        for pid, cpu_s in now.items():
            self._used[pid] = cpu_s - self._first.get(pid, 0.0)
        return Sample(time.time(), sum(self._used.values()), 0)

    def _scan(self) -> dict[int, float]:
        found = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    text = f.read()
            except OSError:
                continue  # gone since the directory was listed
            if text[text.index("(") + 1 : text.rindex(")")] in self._names:
                fields = text.rsplit(")", 1)[1].split()
                found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
        return found


def peak_rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Sampler:
    """Calls `read` every `interval_s` while the run goes on."""

    def __init__(self, read: Callable[[], Sample], interval_s: float = 0.1) -> None:
        self._read = read
        self.samples: list[Sample] = []
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Sample:
        first = self._read()
        self.samples.append(first)
        self._task = asyncio.create_task(self._loop())
        return first

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.samples.append(self._read())
            except OSError:
                return  # the process is gone

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds from the last sample at or before `start` to the first at or after `end`."""
        times = [s.at for s in self.samples]
        first = self.samples[max(0, bisect.bisect_right(times, start) - 1)]
        last = self.samples[min(len(times) - 1, bisect.bisect_left(times, end))]
        return last.cpu_s - first.cpu_s


class QueueSampler:
    """Samples how many messages wait in the inbound queue (ready, not yet delivered)."""

    def __init__(self, read: Callable[[], Awaitable[int]], interval_s: float = 0.1) -> None:
        self._read = read
        self._interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            self.samples.append((time.time(), await self._read()))
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Samplers:
    """Everything sampled during the load; `worker` is the measured process, and `receiver`
    the webhooks worker's other one."""

    worker: Sampler
    standin: Sampler
    machine: Sampler
    postgres: Sampler
    rabbitmq: Sampler
    receiver: Sampler | None = None

    @classmethod
    def of(cls, worker_pid: int, standin_pid: int, receiver_pid: int | None = None) -> Samplers:
        return cls(
            worker=Sampler(functools.partial(read_sample, worker_pid)),
            standin=Sampler(functools.partial(read_sample, standin_pid)),
            machine=Sampler(read_machine),
            # Scanning /proc costs the harness some CPU: sampled less often.
            postgres=Sampler(GroupCpu(POSTGRES), interval_s=0.25),
            rabbitmq=Sampler(GroupCpu(RABBITMQ), interval_s=0.25),
            receiver=(
                None
                if receiver_pid is None
                else Sampler(functools.partial(read_sample, receiver_pid))
            ),
        )

    def all(self) -> tuple[Sampler, ...]:
        receiver = () if self.receiver is None else (self.receiver,)
        return (self.worker, self.standin, self.machine, self.postgres, self.rabbitmq, *receiver)


@dataclass
class RunData:
    """Everything one run produced, before it is reduced to metrics."""

    scenario: Scenario
    contender: Contender
    repetition: int
    sent: list[Sent]
    received: list[Received]
    journal: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    samplers: Samplers
    queue: QueueSampler
    commits: int
    peak_rss_bytes: int
    # The events that ended in the dead-letter queue instead of a reply.
    dead_lettered: set[str]
    exit_code: int | None
    # The webhooks worker's receiver: its peak RSS and exit code, the deliveries it answered
    # during the load by outcome, the stand-in's delivery tries, and the forgeries' answers.
    receiver_peak_rss_bytes: int = 0
    receiver_exit_code: int | None = None
    receiver_outcomes: dict[str, int] = field(default_factory=dict)
    webhook_attempts: list[dict[str, Any]] = field(default_factory=list)
    forged: dict[str, Any] = field(default_factory=dict)
    # The traced worker: spans its exporter delivered over the whole run (warm-up included).
    spans: int | None = None


@dataclass
class RunMetrics:
    """What one run of one contender in one scenario measured: a record of results.json and the
    source of every table."""

    scenario: str
    contender: str
    repetition: int
    events: int
    answered: int
    lost: int
    duplicated: int
    replies: int
    not_completed: int
    dead_lettered: int
    events_per_s: float
    cpu_ms_per_event: float
    latency_ms: dict[str, float]
    detection_ms: dict[str, float]
    requests_per_event: float
    polls_per_run: float
    runs: int
    runs_per_conversation: float
    active_run_400s: int
    injected_faults: int
    peak_rss_mb: float
    max_in_flight: int
    max_runs_active: int
    rss_per_in_flight_kb: float
    standin_cpu_ms_per_event: float
    postgres_cpu_ms_per_event: float
    rabbitmq_cpu_ms_per_event: float
    commits_per_event: float
    machine_busy_pct: float
    wall_s: float
    exit_code: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    # Added with the webhooks contender; the defaults read results.json files from before.
    requests_per_run: float = math.nan
    conversation_requests_per_run: float = math.nan
    rss_growth_mb: float = math.nan
    receiver_cpu_ms_per_event: float = math.nan
    receiver_peak_rss_mb: float = math.nan
    receiver_rss_growth_mb: float = math.nan
    receiver_exit_code: int | None = None
    # {"outcomes": the receiver's answers by outcome, "delivered": the stand-in's tries it
    # answered 2xx, "tries": all its tries}; empty without a receiver.
    webhooks: dict[str, Any] = field(default_factory=dict)
    # The forger's figures (bench/forge.py): sent, span_s, real_ids, answers by kind and status.
    forged: dict[str, Any] = field(default_factory=dict)

    @property
    def total_cpu_ms_per_event(self) -> float:
        """The worker's CPU per event and, for the webhooks worker, its receiver's."""
        receiver = (
            0.0 if math.isnan(self.receiver_cpu_ms_per_event) else self.receiver_cpu_ms_per_event
        )
        return self.cpu_ms_per_event + receiver


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan}
    ordered = sorted(values)
    return {f"p{q}": _quantile(ordered, q / 100) for q in (50, 90, 99)}


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def first_answers(received: list[Received]) -> dict[str, float]:
    """Each answered event and when the first reply naming it arrived."""
    answered: dict[str, float] = {}
    for r in sorted(received, key=lambda r: r.at):
        for event_id in r.reply.get("in_reply_to", ()):
            answered.setdefault(event_id, r.at)
    return answered


def sustained_rate(answer_times: list[float]) -> float:
    """Events answered per second between the 10th and the 90th percentile answer: the warm-up
    (worker connections, first threads) and the drain tail are left out."""
    times = sorted(answer_times)
    if len(times) < 10:
        return math.nan
    low, high = int(0.1 * len(times)), int(0.9 * len(times)) - 1
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else math.nan


def detection_delays(received: list[Received], runs: list[dict[str, Any]]) -> list[float]:
    """Per distinct reply: its arrival here minus the moment the stand-in ended its run."""
    ended = {r["id"]: r["ended_at"] for r in runs if r.get("ended_at") is not None}
    seen: set[str] = set()
    delays = []
    for r in sorted(received, key=lambda r: r.at):
        reply_id, run_id = r.reply.get("event_id"), r.reply.get("run_id")
        if reply_id in seen or run_id not in ended:
            continue
        seen.add(str(reply_id))
        delays.append(r.at - float(ended[run_id]))
    return delays


def max_in_flight(
    sent: list[Sent], answered: dict[str, float], queued: list[tuple[float, int]]
) -> int:
    """The most events taken from the queue and not yet answered at one moment: confirmed
    by the broker so far, minus still waiting in the queue, minus answered. For the worker
    these are the conversations it holds (prefetch); some may not have started their run."""
    published = sorted(s.confirmed_at for s in sent)
    answers = sorted(answered.values())
    peak = 0
    for at, waiting in queued:
        taken = bisect.bisect_right(published, at) - waiting
        peak = max(peak, taken - bisect.bisect_right(answers, at))
    return peak


def max_runs_active(runs: list[dict[str, Any]]) -> int:
    """The most runs active at one moment, as the stand-in saw them."""
    edges = []
    for r in runs:
        edges.append((float(r["created_at"]), 1))
        edges.append((float(r["ended_at"] or math.inf), -1))
    level = peak = 0
    for _, step in sorted(edges):
        level += step
        peak = max(peak, level)
    return peak


def duplicated_events(received: list[Received]) -> int:
    """Events named by two or more distinct replies (a re-published reply is not a duplicate)."""
    bodies: dict[str, dict[str, Any]] = {}
    for r in received:
        bodies.setdefault(str(r.reply.get("event_id")), r.reply)
    counts = Counter(e for reply in bodies.values() for e in reply.get("in_reply_to", ()))
    return sum(1 for n in counts.values() if n > 1)


def detection_phases(
    journal: list[dict[str, Any]], runs: list[dict[str, Any]], received: list[Received]
) -> dict[str, float]:
    """Where the detection delay goes, median ms per phase, for threads/runs replies:
    run end -> the poll that saw it, -> the message list request, -> the reply's arrival."""
    ended = {r["id"]: float(r["ended_at"]) for r in runs if r.get("ended_at") is not None}
    polls: dict[str, list[float]] = {}
    lists: dict[str, list[float]] = {}
    for e in journal:
        if e["method"] != "GET":
            continue
        if e.get("run_id") and _POLL_PATH.match(e["path"]):
            polls.setdefault(e["run_id"], []).append(float(e["at"]))
        elif e.get("thread_id") and e["path"].endswith("/messages"):
            lists.setdefault(e["thread_id"], []).append(float(e["at"]))
    phases: dict[str, list[float]] = {"end_to_poll": [], "poll_to_list": [], "list_to_reply": []}
    for r in received:
        run_id, thread_id = r.reply.get("run_id"), r.reply.get("thread_id")
        end = ended.get(str(run_id))
        seen = [t for t in polls.get(str(run_id), []) if end is not None and t >= end]
        listed = [t for t in lists.get(str(thread_id), []) if seen and t >= seen[0]]
        if end is None or not seen or not listed:
            continue
        phases["end_to_poll"].append(seen[0] - end)
        phases["poll_to_list"].append(listed[0] - seen[0])
        phases["list_to_reply"].append(r.at - listed[0])
    return {k: 1000 * median_or_nan(v) for k, v in phases.items()}


def median_or_nan(values: list[float]) -> float:
    return percentiles(values)["p50"]


def journal_counts(journal: list[dict[str, Any]]) -> dict[str, int]:
    polls = sum(1 for e in journal if e["method"] == "GET" and _POLL_PATH.match(e["path"]))
    conversations = sum(
        1 for e in journal if e["method"] == "POST" and e["path"] in _CONVERSATION_PATHS
    )
    locked = sum(
        1
        for e in journal
        if e["method"] == "POST"
        and e["status"] == 400
        and e["fault"] is None
        and _LOCKED_PATH.match(e["path"])
    )
    faults = sum(1 for e in journal if e["fault"] is not None)
    return {
        "requests": len(journal),
        "polls": polls,
        "conversations": conversations,
        "locked": locked,
        "faults": faults,
    }


def compute(data: RunData) -> RunMetrics:
    answers = first_answers(data.received)
    sent_ids = {s.event_id for s in data.sent}
    answered = {e: t for e, t in answers.items() if e in sent_ids}
    n = max(1, len(answered))
    start = min(s.published_at for s in data.sent)
    end = max(answered.values(), default=start)
    counts = journal_counts(data.journal)
    in_flight = max_in_flight(data.sent, answered, data.queue.samples)
    distinct = {str(r.reply.get("event_id")): r.reply for r in data.received}
    scenario = data.scenario
    return RunMetrics(
        scenario=scenario.key,
        contender=data.contender.key,
        repetition=data.repetition,
        events=len(data.sent),
        answered=len(answered),
        lost=len(sent_ids - answered.keys() - data.dead_lettered),
        duplicated=duplicated_events(data.received),
        replies=len(distinct),
        not_completed=sum(1 for r in distinct.values() if r.get("status") != "completed"),
        dead_lettered=len(data.dead_lettered & sent_ids),
        events_per_s=sustained_rate(list(answered.values())),
        cpu_ms_per_event=1000 * data.samplers.worker.cpu_between(start, end) / n,
        latency_ms=_ms(
            percentiles(
                [answered[s.event_id] - s.published_at for s in data.sent if s.event_id in answered]
            )
        ),
        detection_ms=_ms(percentiles(detection_delays(data.received, data.runs))),
        requests_per_event=counts["requests"] / n,
        polls_per_run=counts["polls"] / max(1, len(data.runs)),
        runs=len(data.runs),
        runs_per_conversation=len(data.runs) / scenario.conversations,
        active_run_400s=counts["locked"],
        injected_faults=counts["faults"],
        peak_rss_mb=data.peak_rss_bytes / 2**20,
        max_in_flight=in_flight,
        max_runs_active=max_runs_active(data.runs),
        rss_per_in_flight_kb=_per_in_flight(data, in_flight),
        standin_cpu_ms_per_event=1000 * data.samplers.standin.cpu_between(start, end) / n,
        postgres_cpu_ms_per_event=1000 * data.samplers.postgres.cpu_between(start, end) / n,
        rabbitmq_cpu_ms_per_event=1000 * data.samplers.rabbitmq.cpu_between(start, end) / n,
        commits_per_event=data.commits / n,
        machine_busy_pct=_busy_pct(data.samplers.machine, start, end),
        wall_s=end - start,
        exit_code=data.exit_code,
        extra={
            "detection_phases_ms": detection_phases(data.journal, data.runs, data.received),
            **_span_figures(data),
        },
        requests_per_run=counts["requests"] / max(1, len(data.runs)),
        conversation_requests_per_run=counts["conversations"] / max(1, len(data.runs)),
        rss_growth_mb=rss_growth_bytes(data.samplers.worker) / 2**20,
        forged=data.forged,
        **_receiver_figures(data, start, end, n),
    )


def _span_figures(data: RunData) -> dict[str, float]:
    """The traced worker's spans per event answered, warm-up and load together."""
    if data.spans is None:
        return {}
    events = len(data.sent) + data.scenario.warmup
    return {"spans_per_event": data.spans / max(1, events)}


def _receiver_figures(data: RunData, start: float, end: float, n: int) -> dict[str, Any]:
    """The webhooks worker's receiver's share of RunMetrics (none without a receiver)."""
    receiver = data.samplers.receiver
    if receiver is None:
        return {}
    delivered = sum(1 for a in data.webhook_attempts if 200 <= (a["status"] or 0) < 300)
    return {
        "receiver_cpu_ms_per_event": 1000 * receiver.cpu_between(start, end) / n,
        "receiver_peak_rss_mb": data.receiver_peak_rss_bytes / 2**20,
        "receiver_rss_growth_mb": rss_growth_bytes(receiver) / 2**20,
        "receiver_exit_code": data.receiver_exit_code,
        "webhooks": {
            "outcomes": data.receiver_outcomes,
            "delivered": delivered,
            "tries": len(data.webhook_attempts),
        },
    }


def rss_growth_bytes(sampler: Sampler) -> int:
    """The highest RSS sampled during the load over the first sample (idle, before it)."""
    if not sampler.samples:
        return 0
    return max(s.rss_bytes for s in sampler.samples) - sampler.samples[0].rss_bytes


def _per_in_flight(data: RunData, in_flight: int) -> float:
    """Growth of RSS over the idle process, per event in flight at the peak."""
    return rss_growth_bytes(data.samplers.worker) / 1024 / max(1, in_flight)


def _busy_pct(machine: Sampler, start: float, end: float) -> float:
    """How busy all of this machine's CPUs were during the run, whoever used them."""
    if end <= start:
        return math.nan
    return 100 * machine.cpu_between(start, end) / ((end - start) * (os.cpu_count() or 1))


def _ms(values: dict[str, float]) -> dict[str, float]:
    return {k: v * 1000 for k, v in values.items()}
