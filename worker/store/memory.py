"""The store in memory: the twin of PostgresStore that the behaviour suite also runs against.

Each method mirrors the statements PostgresStore runs (named in comments after queries.sql), so
a test passing on one and failing on the other is a bug in one of them. Methods do not await
anything between reading and writing, so each is atomic on the event loop as a transaction is
in Postgres; only an outbox claim spans an `async with` block, and its marks are kept only when
that block ends normally, as a rolled-back transaction would lose them.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.errors import LeaseLost
from worker.events import ControlAction, HandoffRequest
from worker.relay.attachments import ModelFile
from worker.settings import BackendName
from worker.store.records import (
    NO_CHANGE,
    PRUNED_TABLES,
    RUN_STARTED,
    BatchStatus,
    ClaimedOutbox,
    ConversationChange,
    ConversationMode,
    ConversationRow,
    EventStatus,
    IncomingEvent,
    Intaken,
    IntakeResult,
    Lease,
    NextBatch,
    OpenBatch,
    OutboxMessage,
    PendingWindow,
    RunRecord,
    StoredEvent,
    ToolCallRecord,
    ToolCallState,
    UploadedFile,
    prune_in_chunks,
    reply_sequence,
    withhold_replies,
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _jsonb(value: dict[str, Any]) -> dict[str, Any]:
    """A copy as a jsonb column gives it back: fresh, and refused if it is not JSON."""
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


def _before(when: datetime | None, cutoff: datetime) -> bool:
    # SQL's `when < cutoff` is not true for NULL.
    return when is not None and when < cutoff


# The rows, mutable as table rows are; the values handed out are the frozen records.


@dataclass(slots=True)
class _Conversation:
    """A row of `conversations`."""

    backend: BackendName
    assistant_id: str | None
    thread_id: str | None = None
    lease_token: uuid.UUID | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    last_item_id: str | None = None
    mode: ConversationMode = ConversationMode.ASSISTANT
    last_reply_sequence: int = 0
    profile: str | None = None

    def row(self) -> ConversationRow:
        return ConversationRow(
            self.backend,
            self.thread_id,
            self.assistant_id,
            self.last_item_id,
            self.mode,
            self.last_reply_sequence,
            self.profile,
        )

    def lease_free(self, now: datetime) -> bool:
        return self.lease_token is None or (
            self.lease_expires_at is not None and self.lease_expires_at <= now
        )


@dataclass(slots=True)
class _Event:
    """A row of `inbound_events`."""

    event_id: str
    seq: int
    conversation_id: str
    body: bytes
    headers: dict[str, Any]
    routing_key: str
    replay_count: int
    received_at: datetime
    occurred_at: datetime | None
    batch_key: str | None
    control: ControlAction | None = None
    status: EventStatus = EventStatus.PENDING
    batch_id: uuid.UUID | None = None
    settled_at: datetime | None = None
    trace_context: dict[str, str] | None = None

    def stored(self) -> StoredEvent:
        return StoredEvent(
            self.event_id,
            self.body,
            _jsonb(self.headers),
            self.routing_key,
            self.received_at,
            self.control,
            None if self.trace_context is None else _jsonb(self.trace_context),
        )

    def settled_before(self, cutoff: datetime) -> bool:
        return self.status.settled and _before(self.settled_at, cutoff)


@dataclass(slots=True)
class _Batch:
    """A row of `batches`."""

    batch_id: uuid.UUID
    conversation_id: str
    event_ids: tuple[str, ...]
    after_item_id: str | None
    status: BatchStatus = BatchStatus.OPEN
    attempt: int = 1
    run_id: str | None = None
    messages_added: bool = False
    first_failure_at: datetime | None = None
    finished_at: datetime | None = None
    failures: int = 0
    handoff: HandoffRequest | None = None

    def open_batch(self) -> OpenBatch:
        return OpenBatch(
            self.batch_id,
            self.event_ids,
            self.attempt,
            self.run_id,
            self.messages_added,
            self.after_item_id,
            self.failures,
            self.handoff,
        )

    def finished_before(self, cutoff: datetime) -> bool:
        return self.status is BatchStatus.FINISHED and _before(self.finished_at, cutoff)


@dataclass(slots=True)
class _Run:
    """A row of `runs`."""

    run_id: str
    batch_id: uuid.UUID
    attempt: int
    status: str = RUN_STARTED
    polls: int = 0
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    ended_at: datetime | None = None


@dataclass(slots=True)
class _Attachment:
    """A row of `attachments`."""

    file: ModelFile
    uploaded: bool


@dataclass(slots=True)
class _ToolCall:
    """A row of `tool_calls`."""

    conversation_id: str
    call_id: str
    name: str
    arguments: str
    started_at: datetime
    state: ToolCallState = ToolCallState.STARTED
    output: str | None = None
    duration_ms: int | None = None

    def record(self, *, began: bool) -> ToolCallRecord:
        return ToolCallRecord(
            self.call_id,
            self.name,
            self.arguments,
            self.state,
            self.output,
            self.duration_ms,
            began,
        )


@dataclass(slots=True)
class _Outbox:
    """A row of `outbox`."""

    message: OutboxMessage
    publish_attempts: int = 0
    published_at: datetime | None = None

    def claimed(self, outbox_id: int) -> ClaimedOutbox:
        # The dedupe key is not read back (claim_outbox does not select it).
        message = replace(self.message, dedupe_key="", headers=_jsonb(self.message.headers))
        return ClaimedOutbox(outbox_id, message)


class MemoryStore:
    """The store in memory, with the semantics of the SQL: idempotent intake, fenced leases
    with a TTL, batches cut by batch key and size, runs, attachments, the outbox and prune.

    For tests that want no servers; `now` replaces the clock (Postgres' now()) for those that
    move time by hand.
    """

    def __init__(
        self, *, batch_max_events: int = 16, now: Callable[[], datetime] = _utcnow
    ) -> None:
        self._batch_max_events = batch_max_events
        self._now = now
        self._conversations: dict[str, _Conversation] = {}
        self._events: dict[str, _Event] = {}
        self._batches: dict[uuid.UUID, _Batch] = {}
        self._runs: dict[str, _Run] = {}
        self._attachments: dict[tuple[str, int], _Attachment] = {}
        self._tool_calls: dict[tuple[uuid.UUID, str], _ToolCall] = {}
        self._outbox: dict[int, _Outbox] = {}
        self._dedupe_keys: set[str] = set()
        # Outbox rows an unfinished claim holds (FOR UPDATE SKIP LOCKED).
        self._claimed: set[int] = set()
        self._seq = itertools.count(1)
        self._outbox_ids = itertools.count(1)

    # -- intake -------------------------------------------------------------------------------

    async def intake(
        self,
        event: IncomingEvent,
        *,
        backend: BackendName,
        assistant_id: str | None,
        profile: str | None,
        owner: str,
        lease_ttl_s: float,
    ) -> Intaken:
        if event.control is not None and event.conversation_id not in self._conversations:
            # lock_known_conversation: a control event never creates the conversation.
            return Intaken(IntakeResult.IGNORED, None, backend)
        # lock_conversation: created on first contact, with the assistant and profile that
        # contact chose.
        conversation = self._conversations.setdefault(
            event.conversation_id,
            _Conversation(BackendName(backend), assistant_id, profile=profile),
        )
        actual = conversation.backend
        if event.needs_backend not in (None, actual):
            return Intaken(IntakeResult.REFUSED, None, actual)
        result = self._store_event(event)
        lease = None
        if result.needs_answer:
            lease = self._acquire_lease(event.conversation_id, owner, lease_ttl_s)
        return Intaken(result, lease, actual)

    def _store_event(self, e: IncomingEvent) -> IntakeResult:
        existing = self._events.get(e.event_id)
        if existing is None:  # insert_event
            self._events[e.event_id] = _Event(
                e.event_id,
                next(self._seq),
                e.conversation_id,
                e.body,
                _jsonb(e.headers),
                e.routing_key,
                e.replay_count,
                self._now(),
                e.occurred_at,
                e.batch_key,
                e.control,
                trace_context=None if e.trace_context is None else _jsonb(e.trace_context),
            )
            return IntakeResult.NEW
        result = e.result_for(existing.status, existing.replay_count)
        if result is IntakeResult.REOPENED:  # reopen_event: seq and received_at stay
            existing.status = EventStatus.PENDING
            existing.batch_id = None
            existing.replay_count = e.replay_count
            existing.body = e.body
            existing.headers = _jsonb(e.headers)
            existing.settled_at = None
            existing.batch_key = e.batch_key
            existing.trace_context = None if e.trace_context is None else _jsonb(e.trace_context)
        return result

    async def add_to_outbox(self, *messages: OutboxMessage) -> None:
        for message in messages:
            self._insert_outbox(message)

    # -- leases ---------------------------------------------------------------------------------

    async def acquire_lease(self, conversation_id: str, owner: str, ttl_s: float) -> Lease | None:
        return self._acquire_lease(conversation_id, owner, ttl_s)

    def _acquire_lease(self, conversation_id: str, owner: str, ttl_s: float) -> Lease | None:
        conversation = self._conversations.get(conversation_id)
        now = self._now()
        if conversation is None or not conversation.lease_free(now):
            return None
        conversation.lease_token = uuid.uuid4()
        conversation.lease_owner = owner
        conversation.lease_expires_at = now + timedelta(seconds=ttl_s)
        return Lease(conversation_id, conversation.lease_token)

    async def renew_leases(self, leases: Sequence[Lease], ttl_s: float) -> set[uuid.UUID]:
        # renew_leases matches tokens only: an expired lease nobody took is renewed too.
        tokens = {lease.token for lease in leases}
        expires_at = self._now() + timedelta(seconds=ttl_s)
        renewed = set()
        for conversation in self._conversations.values():
            if conversation.lease_token in tokens:
                conversation.lease_expires_at = expires_at
                renewed.add(conversation.lease_token)
        return renewed

    async def hand_back_lease(self, lease: Lease) -> None:
        conversation = self._conversations.get(lease.conversation_id)
        if conversation is not None and conversation.lease_token == lease.token:
            conversation.lease_expires_at = self._now()

    async def sweepable_conversations(self, limit: int) -> list[str]:
        waiting = {
            e.conversation_id for e in self._events.values() if e.status is EventStatus.PENDING
        }
        waiting |= {
            b.conversation_id for b in self._batches.values() if b.status is BatchStatus.OPEN
        }
        now = self._now()
        found = [cid for cid in waiting if self._conversations[cid].lease_free(now)]
        return found[:limit]

    def _fence(self, lease: Lease) -> _Conversation:
        """The conversation, if `lease` is still the one it holds (fence)."""
        conversation = self._conversations.get(lease.conversation_id)
        if conversation is None or conversation.lease_token != lease.token:
            raise LeaseLost(lease.conversation_id)
        return conversation

    def _release_lease(self, lease: Lease) -> None:
        conversation = self._conversations[lease.conversation_id]
        if conversation.lease_token == lease.token:
            conversation.lease_token = None
            conversation.lease_owner = None
            conversation.lease_expires_at = None

    # -- conversation work (fenced) -------------------------------------------------------------

    async def set_thread(self, lease: Lease, thread_id: str) -> None:
        self._fence(lease).thread_id = thread_id

    async def next_batch(self, lease: Lease) -> NextBatch | None:
        conversation = self._fence(lease).row()
        batch = self._open_batch(lease.conversation_id)
        if batch is None:
            return self._start_batch_or_release(lease, conversation)
        # batch_events: in the batch's order, skipping events pruned since.
        events = [self._events[i].stored() for i in batch.event_ids if i in self._events]
        return NextBatch(batch.open_batch(), False, conversation, events)

    def _open_batch(self, conversation_id: str) -> _Batch | None:
        for batch in self._batches.values():
            if batch.conversation_id == conversation_id and batch.status is BatchStatus.OPEN:
                return batch
        return None

    def _start_batch_or_release(
        self, lease: Lease, conversation: ConversationRow
    ) -> NextBatch | None:
        pending = self._batchable(lease.conversation_id)
        if not pending:
            self._release_lease(lease)
            return None
        if self._open_batch(lease.conversation_id) is not None:
            # batches_one_open_per_conversation would refuse the insert.
            raise RuntimeError(f"{lease.conversation_id} has an open batch already")
        batch = _Batch(
            uuid.uuid4(),
            lease.conversation_id,
            tuple(e.event_id for e in pending),
            conversation.last_item_id,
        )
        self._batches[batch.batch_id] = batch
        for event in pending:
            event.status = EventStatus.BATCHED
            event.batch_id = batch.batch_id
        return NextBatch(batch.open_batch(), True, conversation, [e.stored() for e in pending])

    def _batchable(self, conversation_id: str) -> list[_Event]:
        """start_batch's choice: the oldest pending events, in the order the customer wrote
        them (else stored), at most the limit, up to the first whose batch_key differs from
        the oldest one's."""
        candidates = sorted(
            (
                e
                for e in self._events.values()
                if e.conversation_id == conversation_id and e.status is EventStatus.PENDING
            ),
            key=lambda e: (e.occurred_at or e.received_at, e.seq),
        )[: self._batch_max_events]
        for position, event in enumerate(candidates):
            if event.batch_key != candidates[0].batch_key:
                return candidates[:position]
        return candidates

    async def record_run_started(
        self, lease: Lease, batch_id: uuid.UUID, run_id: str, attempt: int
    ) -> None:
        self._fence(lease)
        batch = self._batches.get(batch_id)
        if batch is None:
            return
        batch.run_id, batch.attempt, batch.messages_added = run_id, attempt, True
        if run_id not in self._runs:
            self._runs[run_id] = _Run(run_id, batch_id, attempt)

    async def record_batch_failure(self, lease: Lease, batch_id: uuid.UUID) -> tuple[int, datetime]:
        self._fence(lease)
        batch = self._batches[batch_id]
        batch.failures += 1
        batch.first_failure_at = batch.first_failure_at or self._now()
        return batch.failures, batch.first_failure_at

    async def record_handoff(
        self, lease: Lease, batch_id: uuid.UUID, request: HandoffRequest
    ) -> None:
        self._fence(lease)
        self._batches[batch_id].handoff = request

    async def begin_tool_call(
        self, lease: Lease, batch_id: uuid.UUID, call_id: str, name: str, arguments: str
    ) -> ToolCallRecord:
        self._fence(lease)
        key = (batch_id, call_id)
        existing = self._tool_calls.get(key)
        if existing is not None:  # begin_tool_call: ON CONFLICT DO NOTHING
            return existing.record(began=False)
        call = _ToolCall(lease.conversation_id, call_id, name, arguments, self._now())
        self._tool_calls[key] = call
        return call.record(began=True)

    async def end_tool_call(
        self,
        lease: Lease,
        batch_id: uuid.UUID,
        call_id: str,
        state: ToolCallState,
        output: str,
        duration_ms: int | None,
    ) -> None:
        self._fence(lease)
        call = self._tool_calls.get((batch_id, call_id))
        if call is not None and call.state is ToolCallState.STARTED:
            call.state, call.output, call.duration_ms = state, output, duration_ms

    async def batch_tool_calls(self, batch_id: uuid.UUID) -> list[ToolCallRecord]:
        calls = [c for (b, _), c in self._tool_calls.items() if b == batch_id]
        calls.sort(key=lambda c: (c.started_at, c.call_id))
        return [c.record(began=False) for c in calls]

    async def batch_files(self, event_ids: Sequence[str]) -> dict[tuple[str, int], ModelFile]:
        wanted = set(event_ids)
        return {key: a.file for key, a in self._attachments.items() if key[0] in wanted}

    async def record_file(
        self, lease: Lease, event_id: str, position: int, file: ModelFile, *, uploaded: bool
    ) -> None:
        self._fence(lease)
        # record_attachment: ON CONFLICT DO NOTHING, the first file recorded stands.
        self._attachments.setdefault((event_id, position), _Attachment(file, uploaded))

    async def record_run_retry(
        self, lease: Lease, batch_id: uuid.UUID, ended: RunRecord, after_item_id: str | None
    ) -> None:
        self._fence(lease)
        self._record_run_ended(ended)
        batch = self._batches.get(batch_id)
        if batch is not None:
            batch.run_id = None
            batch.first_failure_at = batch.first_failure_at or self._now()
            batch.after_item_id = after_item_id

    def _record_run_ended(self, ended: RunRecord) -> None:
        run = self._runs.get(ended.run_id)
        if run is not None:
            run.status = ended.status
            run.polls += ended.polls
            run.usage = None if ended.usage is None else _jsonb(ended.usage)
            run.error = None if ended.error is None else _jsonb(ended.error)
            run.ended_at = self._now()

    async def finish_batch(
        self,
        lease: Lease,
        batch_id: uuid.UUID,
        *,
        event_status: EventStatus,
        outbox: Sequence[OutboxMessage],
        ended: RunRecord | None = None,
        last_item_id: str | None = None,
        change: ConversationChange = NO_CHANGE,
    ) -> NextBatch | None:
        conversation = self._fence(lease)
        self._close_batch(batch_id, event_status)
        if ended is not None:
            self._record_run_ended(ended)
        interrupt = self._pending_interrupt(lease.conversation_id)
        written = withhold_replies(outbox, interrupt)
        for message in written:
            self._insert_outbox(message)
        sequence = reply_sequence(written)
        if sequence is not None:
            conversation.last_reply_sequence = sequence
        self._apply(lease.conversation_id, conversation, change)
        if last_item_id is not None:
            conversation.last_item_id = last_item_id
        # The batch just closed was the conversation's one open batch.
        return self._start_batch_or_release(lease, conversation.row())

    def _apply(
        self, conversation_id: str, conversation: _Conversation, change: ConversationChange
    ) -> None:
        """As postgres.py's _apply: erase, forget the thread, set the mode, in that order."""
        if change.erase:
            self._erase(conversation_id)
        if change.forget_thread:
            self._forget_uploads(conversation_id)
            conversation.thread_id = conversation.last_item_id = None
            conversation.mode = ConversationMode.ASSISTANT
        if change.mode is not None:
            conversation.mode = change.mode

    def _erase(self, conversation_id: str) -> None:
        """erase_conversation: settled events keep what duplicate detection needs."""
        erased = set()
        for event in self._events.values():
            if event.conversation_id == conversation_id and event.status is not EventStatus.PENDING:
                event.body, event.headers, event.batch_key = b"", {}, None
                erased.add(event.event_id)
        for key in [k for k in self._attachments if k[0] in erased]:
            del self._attachments[key]
        for batch in self._batches.values():
            if batch.conversation_id == conversation_id:
                batch.handoff = None
        calls = [k for k, c in self._tool_calls.items() if c.conversation_id == conversation_id]
        for call in calls:
            del self._tool_calls[call]
        for outbox_id, row in list(self._outbox.items()):
            if row.message.conversation_id == conversation_id:
                self._dedupe_keys.discard(self._outbox.pop(outbox_id).message.dedupe_key)

    def _forget_uploads(self, conversation_id: str) -> None:
        for key in self._conversation_uploads(conversation_id):
            del self._attachments[key]

    def _conversation_uploads(self, conversation_id: str) -> list[tuple[str, int]]:
        return [
            key
            for key, attachment in self._attachments.items()
            if attachment.uploaded and self._events[key[0]].conversation_id == conversation_id
        ]

    def _pending_interrupt(self, conversation_id: str) -> ControlAction | None:
        """pending_interrupt: the first waiting control event that stops the active run."""
        waiting = sorted(
            (
                e
                for e in self._events.values()
                if e.conversation_id == conversation_id
                and e.status is EventStatus.PENDING
                and e.control is not None
                and e.control.interrupts
            ),
            key=lambda e: (e.occurred_at or e.received_at, e.seq),
        )
        return waiting[0].control if waiting else None

    async def pending_interrupt(self, conversation_id: str) -> ControlAction | None:
        return self._pending_interrupt(conversation_id)

    async def pending_window(self, conversation_id: str) -> PendingWindow | None:
        if self._open_batch(conversation_id) is not None:
            return None
        waiting = [
            e
            for e in self._events.values()
            if e.conversation_id == conversation_id and e.status is EventStatus.PENDING
        ]
        if not waiting:
            return None
        now = self._now()
        return PendingWindow(
            (now - min(e.received_at for e in waiting)).total_seconds(),
            (now - max(e.received_at for e in waiting)).total_seconds(),
            any(e.control is not None for e in waiting),
        )

    async def conversation_files(self, conversation_id: str) -> list[str]:
        return [
            self._attachments[key].file.file_id
            for key in self._conversation_uploads(conversation_id)
        ]

    def _close_batch(self, batch_id: uuid.UUID, event_status: EventStatus) -> None:
        batch = self._batches.get(batch_id)
        if batch is None:
            return
        now = self._now()
        batch.status, batch.finished_at = BatchStatus.FINISHED, now
        for event_id in batch.event_ids:
            event = self._events.get(event_id)
            if event is not None:
                event.status, event.settled_at = event_status, now

    # -- operations ---------------------------------------------------------------------------

    async def move_conversations(
        self, backend: str, conversation_ids: Sequence[str] | None
    ) -> tuple[list[str], int]:
        target = BackendName(backend)  # the CHECK constraint refuses any other
        chosen = None if conversation_ids is None else set(conversation_ids)
        elsewhere = [
            (cid, c)
            for cid, c in self._conversations.items()
            if c.backend != target and (chosen is None or cid in chosen)
        ]
        now = self._now()
        busy = {
            e.conversation_id
            for e in self._events.values()
            if e.status in (EventStatus.PENDING, EventStatus.BATCHED)
        }
        moved = []
        for cid, conversation in elsewhere:
            if conversation.lease_free(now) and cid not in busy:
                conversation.backend = target
                conversation.thread_id = conversation.last_item_id = None
                moved.append(cid)
        return moved, len(elsewhere) - len(moved)

    async def prunable(self, cutoff: datetime) -> dict[str, int]:
        counts = {table: len(self._prunable(table, cutoff)) for table in PRUNED_TABLES}
        return {**counts, "files": len(self._prunable_files(cutoff))}

    def _prunable(self, table: str, cutoff: datetime) -> list[Any]:
        """The keys count_prunable counts and prune_<table> deletes, in each table."""
        finished = {b.batch_id for b in self._batches.values() if b.finished_before(cutoff)}
        if table == "runs":
            return [r.run_id for r in self._runs.values() if r.batch_id in finished]
        if table == "batches":
            return list(finished)
        if table == "events":
            return [e.event_id for e in self._events.values() if e.settled_before(cutoff)]
        if table == "outbox":
            return [i for i, row in self._outbox.items() if _before(row.published_at, cutoff)]
        # The webhook tables: only the receiver writes them, and it needs Postgres.
        return []

    def _prunable_files(self, cutoff: datetime) -> list[UploadedFile]:
        return [
            UploadedFile(event_id, position, a.file.file_id)
            for (event_id, position), a in self._attachments.items()
            if a.uploaded and self._events[event_id].settled_before(cutoff)
        ]

    async def prunable_files(self, cutoff: datetime, limit: int) -> list[UploadedFile]:
        return self._prunable_files(cutoff)[:limit]

    async def forget_files(self, files: Sequence[UploadedFile]) -> None:
        for file in files:
            self._attachments.pop((file.event_id, file.position), None)

    async def prune(
        self, cutoff: datetime, *, chunk: int, on_chunk: Callable[[str, int], None]
    ) -> dict[str, int]:
        async def delete_chunk(table: str, limit: int) -> int:
            keys = self._prunable(table, cutoff)
            if table == "batches":  # prune_batches: only once their runs are gone
                keys = [k for k in keys if all(r.batch_id != k for r in self._runs.values())]
            for key in keys[:limit]:
                self._delete(table, key)
            return len(keys[:limit])

        return await prune_in_chunks(delete_chunk, chunk, on_chunk)

    def _delete(self, table: str, key: Any) -> None:
        if table == "runs":
            del self._runs[key]
        elif table == "batches":
            del self._batches[key]
            # tool_calls reference batches ON DELETE CASCADE.
            for call in [k for k in self._tool_calls if k[0] == key]:
                del self._tool_calls[call]
        elif table == "events":
            del self._events[key]
            # attachments reference inbound_events ON DELETE CASCADE.
            for position in [p for (e, p) in self._attachments if e == key]:
                del self._attachments[(key, position)]
        else:
            self._dedupe_keys.discard(self._outbox.pop(key).message.dedupe_key)

    # -- outbox ---------------------------------------------------------------------------------

    def _insert_outbox(self, message: OutboxMessage) -> None:
        # insert_outbox: ON CONFLICT (dedupe_key) DO NOTHING.
        if message.dedupe_key in self._dedupe_keys:
            return
        self._dedupe_keys.add(message.dedupe_key)
        stored = replace(message, headers=_jsonb(message.headers))
        self._outbox[next(self._outbox_ids)] = _Outbox(stored)

    @asynccontextmanager
    async def claim_outbox(
        self, limit: int
    ) -> AsyncIterator[tuple[list[ClaimedOutbox], MemoryOutboxAck]]:
        unpublished = (i for i, row in self._outbox.items() if row.published_at is None)
        ids = [i for i in unpublished if i not in self._claimed][:limit]
        self._claimed.update(ids)
        ack = MemoryOutboxAck()
        try:
            yield [self._outbox[i].claimed(i) for i in ids], ack
            self._commit(ack)
        finally:
            self._claimed.difference_update(ids)

    def _commit(self, ack: MemoryOutboxAck) -> None:
        now = self._now()
        for outbox_id in ack.published_ids:
            row = self._outbox.get(outbox_id)
            if row is not None:
                row.published_at, row.publish_attempts = now, row.publish_attempts + 1
        for outbox_id in ack.failed_ids:
            row = self._outbox.get(outbox_id)
            if row is not None:
                row.publish_attempts += 1

    async def outbox_backlog(self) -> int:
        return sum(1 for row in self._outbox.values() if row.published_at is None)


class MemoryOutboxAck:
    """Collects a claim's marks; the store applies them when the claim's block ends normally."""

    def __init__(self) -> None:
        self.published_ids: list[int] = []
        self.failed_ids: list[int] = []

    async def published(self, ids: Sequence[int]) -> None:
        self.published_ids.extend(ids)

    async def failed(self, ids: Sequence[int]) -> None:
        self.failed_ids.extend(ids)
