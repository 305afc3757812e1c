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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from standin import StandIn
from worker.ops.helpdesk import publish_control, publish_user_message
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
    by_id = _bodies_by_reply_id(collector)
    distinct = _distinct_replies(by_id)
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


def _bodies_by_reply_id(collector: ReplyCollector) -> dict[str, set[bytes]]:
    """Every body published under each reply `event_id` (a re-publication repeats one)."""
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for r in collector.received:
        by_id[r.reply["event_id"]].add(r.body)
    return by_id


def _distinct_replies(by_id: dict[str, set[bytes]]) -> dict[str, dict[str, Any]]:
    """One reply per reply `event_id`: re-publications are not answers of their own."""
    return {event_id: json.loads(next(iter(bodies))) for event_id, bodies in by_id.items()}


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
        if meta.get("aw_batch_id") and not _answers_tools(standin, record):
            runs[(str(meta["aw_batch_id"]), str(meta.get("aw_attempt")))].append(record)
    went_on = [key for key, rs in runs.items() if any(r["status"] != "cancelled" for r in rs[1:])]
    cancelled = sum(1 for rs in runs.values() for r in rs[1:] if r["status"] == "cancelled")
    return went_on, cancelled


def _answers_tools(standin: StandIn, record: dict[str, Any]) -> bool:
    """A Responses tool round's follow-up: the same attempt's tags, but the next step of one
    run, not a second run."""
    response = standin.state.responses.get(str(record["id"]))
    answers = ("function_call_output", "mcp_approval_response")
    return response is not None and any(i.get("type") in answers for i in response.input_items)


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


# --- steered conversations: control events under chaos ---------------------------------------

# One cycle of a steered conversation: each segment's user messages, then the control event that
# ends it. A: answered at most once (the takeover withholds the reply of a run it stops). H: held
# for the human, never answered. B: answered once, "completed" or "cancelled". C: at most once
# (the close withholds like the takeover). D: once, on a new thread.
STEERING_CYCLE: tuple[tuple[str, int, str | None], ...] = (
    ("A", 2, "takeover"),
    ("H", 2, "release"),
    ("B", 2, "cancel"),
    ("C", 1, "close"),
    ("D", 2, None),
)
# Segments whose runs are made long enough, at random, for the control event to find them going.
_SLOWED = frozenset("ABC")
_ANSWERED_ONCE = frozenset("BD")
_AT_MOST_ONCE = frozenset("AC")
_REPLY_STATUSES = {"B": {"completed", "cancelled"}}
# Before and after every control event. A delivery held by a worker killed before storing it is
# redelivered within a fraction of a second, so with this gap every event is stored before the
# next one is published, and the worker orders what the script meant: a message stored only
# after the close behind it would open the next thread, one behind a release would be answered.
CONTROL_GAP_S = 1.5
SETTLED = ("answered", "dead_lettered")


@dataclass(frozen=True)
class SteeredEvent:
    event_id: str
    cycle: int
    # "A".."D" or "H" for a user message; the action for a control event.
    segment: str
    control: bool


@dataclass
class SteeredScript:
    """What was published for one steered conversation, in order."""

    conversation_id: str
    events: list[SteeredEvent] = field(default_factory=list)
    _last_at: datetime | None = None

    def occurred_at(self) -> str:
        """Now by the publisher's clock, strictly after the conversation's previous event: the
        worker orders a conversation's events by it, whatever order intake stores them in."""
        now = datetime.now(UTC)
        if self._last_at is not None and now <= self._last_at:
            now = self._last_at + timedelta(microseconds=1)
        self._last_at = now
        return now.isoformat().replace("+00:00", "Z")

    def ids(self, *segments: str, cycle: int | None = None) -> list[str]:
        return [
            e.event_id
            for e in self.events
            if e.segment in segments and (cycle is None or e.cycle == cycle)
        ]


async def drive_steered(
    channel: AbstractChannel,
    topology: Topology,
    script: SteeredScript,
    collector: ReplyCollector,
    *,
    until: float,
) -> None:
    """Plays STEERING_CYCLE on the script's conversation until `until` (monotonic); a segment
    once begun is played to its end, with its control event."""
    cycle = 0
    while time.monotonic() < until:
        for segment, count, action in STEERING_CYCLE:
            if time.monotonic() >= until:
                return
            await _play_segment(channel, topology, script, cycle, (segment, count, action))
        # The next takeover would withhold D's reply if D's run were still going: let it end.
        await collector.wait_for(set(script.ids("D", cycle=cycle)), timeout_s=30)
        cycle += 1


async def _play_segment(
    channel: AbstractChannel,
    topology: Topology,
    script: SteeredScript,
    cycle: int,
    step: tuple[str, int, str | None],
) -> None:
    segment, count, action = step
    for n in range(count):
        if n:
            await asyncio.sleep(random.uniform(0.3, 1.0))
        await _send_message(channel, topology, script, cycle, segment, n)
    if action is None:
        return
    await asyncio.sleep(CONTROL_GAP_S + random.uniform(0, 0.5))
    await _send_control(channel, topology, script, cycle, action)
    await asyncio.sleep(CONTROL_GAP_S + random.uniform(0, 0.5))


async def _send_message(
    channel: AbstractChannel,
    topology: Topology,
    script: SteeredScript,
    cycle: int,
    segment: str,
    n: int,
) -> None:
    event_id = f"{script.conversation_id}-{cycle}-{segment}{n}"
    # Unique, so a message twice in a thread is seen; the stand-in reads the delay marker.
    text = f"{segment}{n} of cycle {cycle} in {script.conversation_id}"
    if segment in _SLOWED:
        text += f" [[delay_ms:{random.randrange(100, 3000)}]]"
    event = {
        "event_id": event_id,
        "conversation_id": script.conversation_id,
        "text": text,
        "occurred_at": script.occurred_at(),
    }
    await publish_user_message(channel, topology, event)
    script.events.append(SteeredEvent(event_id, cycle, segment, control=False))


async def _send_control(
    channel: AbstractChannel, topology: Topology, script: SteeredScript, cycle: int, action: str
) -> None:
    event_id = f"{script.conversation_id}-{cycle}-{action}"
    event = {
        "event_id": event_id,
        "conversation_id": script.conversation_id,
        "action": action,
        "occurred_at": script.occurred_at(),
    }
    await publish_control(channel, topology, event)
    script.events.append(SteeredEvent(event_id, cycle, action, control=True))


async def wait_settled(database_url: str, event_ids: set[str], timeout_s: float) -> dict[str, str]:
    """Each event's status in inbound_events once all are settled, or as they are at the
    timeout (an event never stored is absent)."""
    deadline = time.monotonic() + timeout_s
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT event_id, status::text AS status FROM inbound_events"
                " WHERE event_id = ANY($1::text[])",
                list(event_ids),
            )
            statuses = {str(r["event_id"]): str(r["status"]) for r in rows}
            done = all(statuses.get(e) in SETTLED for e in event_ids)
            if done or time.monotonic() > deadline:
                return statuses
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


@dataclass
class SteeringReport:
    conversations: int
    messages: int
    controls: Counter[str]
    held: int
    # A and C messages left without a reply: the takeover or close stopped their run.
    withheld: int
    # B messages whose reply says "cancelled": the cancel found their run going.
    cancelled: int
    # Not settled in inbound_events (answered or dead-lettered), control events included.
    lost: list[str]
    # H messages some reply answers: the assistant spoke while a human had the conversation.
    replies_after_takeover: list[str]
    answered_more_than_once: list[str]
    # B and D messages without a reply.
    unanswered: list[str]
    # Replies whose status their segment rules out (only B's may be "cancelled", and then
    # with error.code "cancelled").
    wrong_status: list[str]
    # Messages after a close answered on a thread of before it.
    replies_on_closed_threads: list[str]
    # Threads of replies before a close that still exist at the API.
    closed_threads_kept: list[str]

    @property
    def violations(self) -> dict[str, object]:
        found = {
            "steered_lost": self.lost,
            "replies_after_takeover": self.replies_after_takeover,
            "steered_answered_more_than_once": self.answered_more_than_once,
            "steered_unanswered": self.unanswered,
            "steered_wrong_status": self.wrong_status,
            "replies_on_closed_threads": self.replies_on_closed_threads,
            "closed_threads_still_at_the_api": self.closed_threads_kept,
        }
        return {k: v for k, v in found.items() if v}


def check_steering(
    scripts: list[SteeredScript],
    collector: ReplyCollector,
    standin: StandIn,
    statuses: dict[str, str],
) -> SteeringReport:
    """Compares what the scripts published with the replies, the store (`statuses`, from
    wait_settled) and the threads left at the stand-in."""
    answers = _replies_of(collector)
    events = [e for s in scripts for e in s.events]
    messages = [e for e in events if not e.control]
    on_closed, kept = _thread_faults(scripts, answers, standin)
    count = {e.event_id: len(answers.get(e.event_id, [])) for e in messages}
    return SteeringReport(
        conversations=len(scripts),
        messages=len(messages),
        controls=Counter(e.segment for e in events if e.control),
        held=sum(1 for e in messages if e.segment == "H"),
        withheld=sum(1 for e in messages if e.segment in _AT_MOST_ONCE and not count[e.event_id]),
        cancelled=sum(
            1
            for e in messages
            if e.segment == "B"
            and any(r["status"] == "cancelled" for r in answers.get(e.event_id, []))
        ),
        lost=[e.event_id for e in events if statuses.get(e.event_id) not in SETTLED],
        replies_after_takeover=[
            e.event_id for e in messages if e.segment == "H" and count[e.event_id]
        ],
        answered_more_than_once=[e.event_id for e in messages if count[e.event_id] > 1],
        unanswered=[
            e.event_id for e in messages if e.segment in _ANSWERED_ONCE and not count[e.event_id]
        ],
        wrong_status=[e.event_id for e in messages if _wrong_status(e, answers)],
        replies_on_closed_threads=on_closed,
        closed_threads_kept=kept,
    )


def _replies_of(collector: ReplyCollector) -> dict[str, list[dict[str, Any]]]:
    """The distinct replies answering each event."""
    answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for reply in _distinct_replies(_bodies_by_reply_id(collector)).values():
        for event_id in reply["in_reply_to"]:
            answers[event_id].append(reply)
    return answers


def _wrong_status(event: SteeredEvent, answers: dict[str, list[dict[str, Any]]]) -> bool:
    # A cancelled reply for A or C would be the reply of a run the takeover or close stopped,
    # which is withheld; nothing else here is meant to end any other way than completed.
    allowed = _REPLY_STATUSES.get(event.segment, {"completed"})
    return any(
        r["status"] not in allowed or (r["status"] == "cancelled" and not _says_cancelled(r))
        for r in answers.get(event.event_id, [])
    )


def _says_cancelled(reply: dict[str, Any]) -> bool:
    """A reply cancelled by the helpdesk says so, even when its canceller died meanwhile."""
    return (reply.get("error") or {}).get("code") == "cancelled"


def _thread_faults(
    scripts: list[SteeredScript], answers: dict[str, list[dict[str, Any]]], standin: StandIn
) -> tuple[list[str], list[str]]:
    """Messages answered on a thread a close had deleted, and closed threads still at the API.

    A conversation's messages fall into eras, one per close sent before them: era n's replies
    must all be on threads that no earlier era's reply used, and every thread of an era before
    the last close must be gone from the stand-in.
    """
    on_closed: list[str] = []
    kept: set[str] = set()
    for script in scripts:
        eras, closes = _eras(script)
        threads: dict[int, set[str]] = defaultdict(set)
        for event_id, era in eras.items():
            for reply in answers.get(event_id, []):
                earlier = set().union(*(threads[e] for e in range(era)))
                if reply["thread_id"] in earlier:
                    on_closed.append(event_id)
                threads[era].add(reply["thread_id"])
        closed = set().union(*(threads[e] for e in range(closes)))
        kept |= {
            t for t in closed if t in standin.state.threads or t in standin.state.conversations
        }
    return on_closed, sorted(kept)


def _eras(script: SteeredScript) -> tuple[dict[str, int], int]:
    """Each user message's era (how many closes were sent before it), and the closes sent.
    In publication order, which is the order the worker takes them in (occurred_at)."""
    eras: dict[str, int] = {}
    closes = 0
    for event in script.events:
        if event.segment == "close":
            closes += 1
        elif not event.control:
            eras[event.event_id] = closes
    return eras, closes
