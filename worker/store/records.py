"""The store's values: what goes into the tables and what comes out, whichever store holds them.

The enums mirror the SQL enums and CHECK lists of sql/schema.sql, so Python code never spells a
status as a bare string; the records are frozen, and built `from_row` where a row makes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from worker.backends.base import RunStatus
from worker.events import ControlAction, HandoffRequest
from worker.relay.attachments import FileKind, ModelFile
from worker.settings import BackendName


class Row(Protocol):
    """Anything indexable by column name, as an asyncpg.Record is."""

    def __getitem__(self, column: str, /) -> Any: ...


class EventStatus(StrEnum):
    """`event_status`: where an inbound event is in its life."""

    PENDING = "pending"
    BATCHED = "batched"
    ANSWERED = "answered"
    DEAD_LETTERED = "dead_lettered"

    @property
    def settled(self) -> bool:
        return self in (EventStatus.ANSWERED, EventStatus.DEAD_LETTERED)


class BatchStatus(StrEnum):
    """`batch_status`: a conversation has at most one open batch."""

    OPEN = "open"
    FINISHED = "finished"


class OutboxKind(StrEnum):
    """`outbox_kind`: what an outbox row announces."""

    REPLY = "reply"
    DEAD_LETTER = "dead_letter"


class ConversationMode(StrEnum):
    """`conversation_mode`: who answers the conversation now."""

    ASSISTANT = "assistant"
    # A human agent took it over: messages are added to the thread, not answered.
    HUMAN = "human"


# `runs.status` is text: 'started' until the run ends, then the backend's RunStatus.
RUN_STARTED = "started"


class IntakeResult(StrEnum):
    """What intake made of a delivery (not stored: the metric and log label)."""

    NEW = "new"
    REOPENED = "reopened"
    ALREADY_PENDING = "already_pending"
    ALREADY_SETTLED = "already_settled"
    # Not stored: the conversation's backend cannot honour a field the event sets.
    REFUSED = "refused"
    # Not stored: a control event for a conversation the worker has never seen.
    IGNORED = "ignored"

    @property
    def needs_answer(self) -> bool:
        return self in (IntakeResult.NEW, IntakeResult.REOPENED, IntakeResult.ALREADY_PENDING)


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to work on one conversation; every write names its token (fencing), so an
    owner whose lease expired and was taken over can no longer change anything."""

    conversation_id: str
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """What answering a conversation needs of its row: backend, thread, watermark, and who
    answers it now."""

    backend: BackendName
    thread_id: str | None
    assistant_id: str | None
    last_item_id: str | None
    mode: ConversationMode = ConversationMode.ASSISTANT
    # The newest reply's sequence; the next reply takes the one after.
    last_reply_sequence: int = 0
    # The profile chosen on first contact; None for conversations from before profiles.
    profile: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> ConversationRow:
        return cls(
            BackendName(row["backend"]),
            row["thread_id"],
            row["assistant_id"],
            row["last_item_id"],
            ConversationMode(row["mode"]),
            row["last_reply_sequence"],
            row["profile"],
        )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event of a batch, exactly as it was received (a dead letter carries these bytes)."""

    event_id: str
    body: bytes
    headers: dict[str, Any]
    routing_key: str
    received_at: datetime
    # A conversation_control.v1 event's action; None for a user message.
    control: ControlAction | None = None
    # The context of the span that took it in (worker/tracing.py); None while tracing is off.
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: Row) -> StoredEvent:
        control = row["control"]
        return cls(
            row["event_id"],
            row["body"],
            row["headers"],
            row["routing_key"],
            row["received_at"],
            None if control is None else ControlAction(control),
            row["trace_context"],
        )


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """The events one run (and its bounded retries) answers, and how far answering got."""

    batch_id: uuid.UUID
    event_ids: tuple[str, ...]
    attempt: int
    run_id: str | None
    messages_added: bool
    after_item_id: str | None
    # Failures no other class covers, so far (AW_INTERNAL_ATTEMPTS bounds them).
    failures: int = 0
    # The model asked for a human during this batch's run.
    handoff: HandoffRequest | None = None

    @classmethod
    def from_row(cls, row: Row) -> OpenBatch:
        handoff = row["handoff"]
        return cls(
            row["batch_id"],
            tuple(row["event_ids"]),
            row["attempt"],
            row["run_id"],
            row["messages_added"],
            row["after_item_id"],
            row["failures"],
            None if handoff is None else HandoffRequest.from_json(handoff),
        )


@dataclass(frozen=True, slots=True)
class NextBatch:
    """A batch to answer, with everything answering it needs, read in one transaction."""

    batch: OpenBatch
    # Made just now by this call: nobody can have sent its run yet.
    fresh: bool
    conversation: ConversationRow
    events: list[StoredEvent]


@dataclass(frozen=True, slots=True)
class PendingWindow:
    """A quiet conversation's waiting events, by age, for debouncing its first run."""

    first_age_s: float
    newest_age_s: float
    # A control event waits too: steering is never held back.
    control: bool

    @classmethod
    def from_row(cls, row: Row) -> PendingWindow:
        return cls(row["first_age_s"], row["newest_age_s"], row["control"])


@dataclass(frozen=True, slots=True)
class ConversationChange:
    """What settling a batch does to its conversation besides: a control event's effect."""

    mode: ConversationMode | None = None
    # close: the thread is gone at the API; the next message starts a new one.
    forget_thread: bool = False
    # erase: the conversation's bodies, texts and file names leave the database too.
    erase: bool = False


NO_CHANGE = ConversationChange()
# The model called handoff_to_human: its next messages wait for a person.
HAND_TO_HUMAN = ConversationChange(mode=ConversationMode.HUMAN)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """How a run ended, as stored in `runs`."""

    run_id: str
    status: RunStatus
    polls: int
    usage: dict[str, Any] | None
    error: dict[str, Any] | None


class ToolCallState(StrEnum):
    STARTED = "started"  # recorded before the handler ran; not ended (yet, or ever)
    OK = "ok"
    ERROR = "error"
    # Begun by a worker that died before recording how it ended; not run again.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """A function tool call of a batch, as recorded around its handler."""

    call_id: str
    name: str
    arguments: str
    state: ToolCallState
    output: str | None
    # How long the handler took; None while it runs, or where nobody knows.
    duration_ms: int | None
    # Recorded by this begin_tool_call: nobody has run the handler for it before.
    began: bool = False

    @classmethod
    def from_row(cls, row: Row) -> ToolCallRecord:
        return cls(
            row["call_id"],
            row["name"],
            row["arguments"],
            ToolCallState(row["state"]),
            row["output"],
            row["duration_ms"],
            row["began"],
        )


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    """The file recorded for one attachment of an event, so it is uploaded only once."""

    event_id: str
    position: int
    file: ModelFile

    @classmethod
    def from_row(cls, row: Row) -> AttachmentFile:
        file = ModelFile(row["file_id"], row["filename"], FileKind(row["kind"]))
        return cls(row["event_id"], row["position"], file)


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A file the worker uploaded for an event that `prune` is about to delete."""

    event_id: str
    position: int
    file_id: str

    @classmethod
    def from_row(cls, row: Row) -> UploadedFile:
        return cls(row["event_id"], row["position"], row["file_id"])


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish, written in the transaction of the state change it announces;
    `dedupe_key` makes writing it twice harmless."""

    dedupe_key: str
    kind: OutboxKind
    message_id: str
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    content_type: str = "application/json"
    # The conversation a reply answers, so erasing the conversation finds it.
    conversation_id: str | None = None
    # A reply's sequence: written, it becomes the conversation's last_reply_sequence.
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimedOutbox:
    """An outbox row claimed for publishing (locked until the claim ends)."""

    outbox_id: int
    message: OutboxMessage

    @property
    def is_reply(self) -> bool:
        return self.message.kind is OutboxKind.REPLY

    @classmethod
    def from_row(cls, row: Row) -> ClaimedOutbox:
        message = OutboxMessage(
            # Not read back: it only matters when the row is written.
            dedupe_key="",
            kind=OutboxKind(row["kind"]),
            message_id=row["message_id"],
            exchange=row["exchange"],
            routing_key=row["routing_key"],
            headers=row["headers"],
            body=row["body"],
            content_type=row["content_type"],
        )
        return cls(row["outbox_id"], message)


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A parsed delivery, as intake stores it (body and headers exactly as received)."""

    event_id: str
    conversation_id: str
    body: bytes
    headers: dict[str, Any]
    routing_key: str
    replay_count: int
    # An operator's forced replay: answer it again even if it was answered.
    forced: bool
    occurred_at: datetime | None
    # Events coalesce only with neighbours of equal key (see start_batch in queries.sql).
    batch_key: str | None = None
    # The backend the event's fields need, if only one can honour them.
    needs_backend: BackendName | None = None
    # A conversation_control.v1 event's action: stored only for a conversation already known.
    control: ControlAction | None = None
    # The context of the span taking it in, to continue when it is answered (worker/tracing.py).
    trace_context: dict[str, str] | None = None

    def reopens(self, status: EventStatus, stored_replays: int) -> bool:
        """Whether this delivery of a known event is new work again: only after an operator's
        replay (counted, so a redelivery of that replay is still a duplicate), and for an
        answered event only when the replay is forced."""
        if self.replay_count <= stored_replays:
            return False
        return status is EventStatus.DEAD_LETTERED or (
            self.forced and status is EventStatus.ANSWERED
        )

    def result_for(self, status: EventStatus, stored_replays: int) -> IntakeResult:
        """What a delivery of an event already stored with `status` amounts to."""
        if self.reopens(status, stored_replays):
            return IntakeResult.REOPENED
        return IntakeResult.ALREADY_SETTLED if status.settled else IntakeResult.ALREADY_PENDING


@dataclass(frozen=True, slots=True)
class Intaken:
    """The outcome of intake, decided in the transaction that stored the event."""

    result: IntakeResult
    # Taken in the same transaction when the event needs an answer and nobody owns it.
    lease: Lease | None
    # The conversation's backend (recorded on first contact).
    backend: BackendName


# In the order `prune` empties them: runs reference batches.
PRUNED_TABLES = (
    "runs",
    "batches",
    "events",
    "outbox",
    "webhook_deliveries",
    "ended_responses",
)


async def prune_in_chunks(
    delete_chunk: Callable[[str, int], Awaitable[int]],
    chunk: int,
    on_chunk: Callable[[str, int], None],
) -> dict[str, int]:
    """Empties PRUNED_TABLES in order, `chunk` rows per `delete_chunk(table, chunk)` call (so
    no lock is held for long), reporting every call; returns the rows deleted per table."""
    deleted = dict.fromkeys(PRUNED_TABLES, 0)
    for table in PRUNED_TABLES:
        while True:
            count = await delete_chunk(table, chunk)
            deleted[table] += count
            on_chunk(table, count)
            if count < chunk:
                break
    return deleted


def withhold_replies(
    outbox: Sequence[OutboxMessage], interrupt: ControlAction | str | None
) -> list[OutboxMessage]:
    """The outbox rows to write when settling a batch while `interrupt` waits.

    A takeover, close or erase waiting in the conversation withholds the batch's reply: a human
    answers now, or nobody does. Dead letters still go: an operator must hear of them.
    """
    if interrupt is None or not ControlAction(interrupt).withholds_reply:
        return list(outbox)
    return [m for m in outbox if m.kind is not OutboxKind.REPLY]


def reply_sequence(written: Sequence[OutboxMessage]) -> int | None:
    """The conversation's last_reply_sequence after writing these rows; None if unchanged."""
    return max((m.sequence for m in written if m.sequence is not None), default=None)
