"""Load, kill and check: the machinery behind the guarantee tests and `make chaos`.

Workers run as real processes (`python -m worker run`). A Supervisor keeps them running and
restarts each one that dies, whether it killed itself at a crash point or we shot it. A
ReplyCollector records every reply as published. `check` then compares what was sent with what
came out and with what the stand-in saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from standin import StandIn
from worker.ops.helpdesk import publish_user_message
from worker.settings import Topology

REPO = Path(__file__).resolve().parent.parent

# Crash points armed for the kill tests: each batch has a few percent chance to die at each.
ALL_CRASH_POINTS = (
    "before_run_start=0.03,after_run_created=0.04,mid_poll=0.01,"
    "after_reply_recorded=0.04,after_publish_confirmed=0.04"
)


@dataclass
class WorkerSlot:
    name: str
    log_path: Path
    proc: asyncio.subprocess.Process | None = None


@dataclass
class Supervisor:
    """Keeps `count` worker processes alive; restarts any that die, counting kills."""

    env: dict[str, str]
    count: int
    log_dir: Path
    crash_points: str | None = None
    # Arm the crash points only until the first death: tests aimed at one crash at one point.
    crash_once: bool = False
    kills: int = 0
    restarts: int = 0
    kill_times: list[float] = field(default_factory=list)
    _slots: list[WorkerSlot] = field(default_factory=list)
    _watch: asyncio.Task[None] | None = None
    _stopping: bool = False

    async def start(self) -> None:
        self._slots = [
            WorkerSlot(f"w{n}", self.log_dir / f"worker-{n}.log") for n in range(self.count)
        ]
        for slot in self._slots:
            await self._spawn(slot)
        self._watch = asyncio.create_task(self._watch_forever())

    async def _spawn(self, slot: WorkerSlot) -> None:
        env = {**self.env, "AW_WORKER_NAME": f"{slot.name}-{uuid.uuid4().hex[:4]}"}
        env.pop("AW_CRASH_POINTS", None)
        if self.crash_points:
            env["AW_CRASH_POINTS"] = self.crash_points
        log = slot.log_path.open("ab")
        slot.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        log.close()

    async def _watch_forever(self) -> None:
        while not self._stopping:
            for slot in self._slots:
                if slot.proc is not None and slot.proc.returncode is not None:
                    if slot.proc.returncode == -signal.SIGKILL:
                        self.kills += 1
                        self.kill_times.append(time.monotonic())
                    self.restarts += 1
                    if self.crash_once:
                        self.crash_points = None
                    await self._spawn(slot)
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout_s: float = 30) -> None:
        """Until every worker logged that it consumes (signals are handled from then on)."""
        async with asyncio.timeout(timeout_s):
            while not self._all_started():  # noqa: ASYNC110 - log files offer nothing to await
                await asyncio.sleep(0.05)

    def _all_started(self) -> bool:
        return all(b'"worker_started"' in slot.log_path.read_bytes() for slot in self._slots)

    def health_ports(self) -> list[int]:
        """The health port each worker logged at its latest start."""
        ports = []
        for slot in self._slots:
            started = [
                json.loads(line)
                for line in slot.log_path.read_text(errors="replace").splitlines()
                if '"worker_started"' in line
            ]
            ports.append(int(started[-1]["health_port"]))
        return ports

    def kill_one(self) -> None:
        """kill -9 a random worker (it is restarted by the watch loop)."""
        alive = [s for s in self._slots if s.proc is not None and s.proc.returncode is None]
        if alive:
            random.choice(alive).proc.kill()  # type: ignore[union-attr]

    async def stop(self, grace_s: float = 30) -> list[int | None]:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        codes: list[int | None] = []
        for slot in self._slots:
            if slot.proc is None or slot.proc.returncode is not None:
                codes.append(None)
                continue
            slot.proc.send_signal(signal.SIGTERM)
            try:
                codes.append(await asyncio.wait_for(slot.proc.wait(), grace_s))
            except TimeoutError:
                slot.proc.kill()
                codes.append(await slot.proc.wait())
        return codes

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for slot in self._slots:
            text = slot.log_path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {slot.name} ---\n" + "\n".join(text))
        return "\n".join(parts)


@dataclass
class Received:
    at: float
    message_id: str | None
    body: bytes

    @property
    def reply(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class ReplyCollector:
    """Consumes the reply queue for the whole test, keeping every delivery."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._answered: set[str] = set()
        self._changed = asyncio.Event()

    async def start(self, channel: AbstractChannel, topology: Topology) -> None:
        queue = await channel.get_queue(topology.reply_queue)
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        received = Received(time.monotonic(), message.message_id, message.body)
        self.received.append(received)
        self._answered.update(received.reply["in_reply_to"])
        self._changed.set()

    async def wait_for(self, event_ids: set[str], timeout_s: float) -> set[str]:
        """Waits until every event is answered; returns the ones still missing at the timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not event_ids <= self._answered:
                    self._changed.clear()
                    await self._changed.wait()
        return event_ids - self._answered

    async def wait_for_all(
        self, sent: list[dict[str, Any]], timeout_s: float, workers: Supervisor
    ) -> None:
        """Fails, with the workers' log tail, unless every event is answered in time; then
        listens a second more, since a late re-publication of a reply still counts."""
        missing = await self.wait_for({str(e["event_id"]) for e in sent}, timeout_s)
        assert not missing, f"{len(missing)} unanswered\n{workers.log_tail()}"
        await asyncio.sleep(1)


async def publish_load(
    channel: AbstractChannel,
    topology: Topology,
    *,
    events: int,
    conversations: int,
    rate_per_s: float,
    duplicates_every: int = 0,
) -> list[dict[str, Any]]:
    """Publishes `events` user messages spread over `conversations`, at about `rate_per_s`.

    Every text is unique, so a user message that reaches a thread twice can be spotted.
    """
    tag = uuid.uuid4().hex[:6]
    sent = []
    for n in range(events):
        event = {
            "event_id": f"load-{tag}-{n}",
            "conversation_id": f"conv-{tag}-{random.randrange(conversations)}",
            "text": f"message {n} of load {tag}",
        }
        await publish_user_message(channel, topology, event)
        if duplicates_every and n % duplicates_every == 0:
            await publish_user_message(channel, topology, event)
        sent.append(event)
        await asyncio.sleep(1 / rate_per_s)
    return sent


@dataclass
class Report:
    sent: int
    answered: int
    lost: list[str]
    answered_more_than_once: list[str]
    republished_replies: int
    conflicting_replies: list[str]
    duplicated_user_messages: list[tuple[str, str]]
    second_runs_not_cancelled: list[tuple[str, str]]
    second_runs_cancelled: int
    overlapping_runs: list[str]
    # Conversations whose replies are not numbered 1, 2, ... in the order they were written.
    misnumbered_replies: list[str] = field(default_factory=list)
    dead_lettered: int = 0
    kills: int = 0
    max_recovery_s: float = 0.0

    @property
    def violations(self) -> dict[str, object]:
        found = {
            "lost": self.lost,
            "answered_more_than_once": self.answered_more_than_once,
            "conflicting_replies": self.conflicting_replies,
            "duplicated_user_messages": self.duplicated_user_messages,
            "second_runs_not_cancelled": self.second_runs_not_cancelled,
            "overlapping_runs": self.overlapping_runs,
            "misnumbered_replies": self.misnumbered_replies,
        }
        return {k: v for k, v in found.items() if v}


def check(sent: list[dict[str, Any]], collector: ReplyCollector, standin: StandIn) -> Report:
    """Compares what was sent, what came out and what the stand-in saw."""
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for r in collector.received:
        by_id[r.reply["event_id"]].add(r.body)
    distinct = {event_id: json.loads(next(iter(bodies))) for event_id, bodies in by_id.items()}
    answers = Counter(e for reply in distinct.values() for e in reply["in_reply_to"])
    sent_ids = [e["event_id"] for e in sent]
    second_runs_not_cancelled, second_runs_cancelled = _second_runs(standin)
    return Report(
        sent=len(sent_ids),
        answered=sum(1 for e in sent_ids if answers[e] >= 1),
        lost=[e for e in sent_ids if answers[e] == 0],
        answered_more_than_once=[e for e in sent_ids if answers[e] > 1],
        republished_replies=len(collector.received) - len(by_id),
        conflicting_replies=[e for e, bodies in by_id.items() if len(bodies) > 1],
        duplicated_user_messages=_duplicated_user_messages(standin),
        second_runs_not_cancelled=second_runs_not_cancelled,
        second_runs_cancelled=second_runs_cancelled,
        overlapping_runs=_overlapping_runs(standin),
        misnumbered_replies=_misnumbered(list(distinct.values())),
    )


def _misnumbered(replies: list[dict[str, Any]]) -> list[str]:
    """Conversations whose reply `sequence`s are not 1..n, increasing as the replies were
    written (`created_at`, set when a reply is recorded and kept when it is re-published)."""
    by_conversation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for reply in replies:
        by_conversation[reply["conversation_id"]].append(reply)
    wrong = []
    for conversation, theirs in by_conversation.items():
        theirs.sort(key=lambda r: r["sequence"])
        numbers = [r["sequence"] for r in theirs]
        written = [datetime.fromisoformat(r["created_at"]) for r in theirs]
        if numbers != list(range(1, len(theirs) + 1)) or written != sorted(written):
            wrong.append(conversation)
    return wrong


def _duplicated_user_messages(standin: StandIn) -> list[tuple[str, str]]:
    dupes = []
    for thread in standin.state.threads.values():
        counts = Counter(m.text() for m in thread.messages if m.role == "user")
        dupes += [(thread.id, text) for text, n in counts.items() if n > 1]
    for conversation in standin.state.conversations.values():
        counts = Counter(
            "".join(part.get("text", "") for part in item["content"])
            for item in conversation.items
            if item["type"] == "message" and item["role"] == "user"
        )
        dupes += [(conversation.id, text) for text, n in counts.items() if n > 1]
    return dupes


def _second_runs(standin: StandIn) -> tuple[list[tuple[str, str]], int]:
    """Batch attempts with a second run that went on, and how many second runs were cancelled.

    After a create whose answer was lost, the API offers no way to see an earlier response
    that is still running, so a retry can start a second one; the worker then cancels it at
    once (before it adds anything, which `duplicated_user_messages` checks). Any later run
    of an attempt that was not cancelled is a violation.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in standin.run_records():  # oldest first
        meta = record.get("metadata") or {}
        if meta.get("aw_batch_id"):
            runs[(str(meta["aw_batch_id"]), str(meta.get("aw_attempt")))].append(record)
    went_on = [key for key, rs in runs.items() if any(r["status"] != "cancelled" for r in rs[1:])]
    cancelled = sum(1 for rs in runs.values() for r in rs[1:] if r["status"] == "cancelled")
    return went_on, cancelled


def _overlapping_runs(standin: StandIn) -> list[str]:
    """Threads that ever had two runs active at once."""
    by_thread: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for record in standin.run_records():
        thread = record.get("thread_id") or record.get("conversation_id")
        end = record.get("ended_at") or float("inf")
        by_thread[str(thread)].append((float(record["created_at"]), float(end)))
    overlapping = []
    for thread, spans in by_thread.items():
        spans.sort()
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
            overlapping.append(thread)
    return overlapping


def max_recovery_s(kill_times: list[float], collector: ReplyCollector) -> float:
    """The longest wait, after a kill, until the next reply came out."""
    arrivals = sorted(r.at for r in collector.received)
    worst = 0.0
    for killed in kill_times:
        after = next((t for t in arrivals if t > killed), None)
        if after is not None:
            worst = max(worst, after - killed)
    return worst


def chaos_env(base: dict[str, str]) -> dict[str, str]:
    """Worker settings for chaos: short leases so a dead owner's work moves on quickly."""
    return {
        **base,
        "AW_LEASE_TTL_S": "2",
        "AW_SWEEP_INTERVAL_S": "0.5",
        "AW_CONCURRENCY": "16",
        "AW_POLL_INITIAL_MS": "30",
        "AW_POLL_MAX_MS": "300",
        "AW_API_BACKOFF_BASE_S": "0.05",
        "AW_API_BACKOFF_CAP_S": "1",
        "AW_API_ATTEMPTS": "8",
        "AW_OUTBOX_INTERVAL_S": "0.2",
        "AW_LOG_LEVEL": os.environ.get("AW_CHAOS_LOG_LEVEL", "info"),
    }
