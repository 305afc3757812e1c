"""What each part of the core needs of the store, as small protocols.

The core is typed against these, not against a database: PostgresStore is the real one,
MemoryStore the in-memory twin the behaviour suite also runs against. Every write made on
behalf of a conversation names its Lease and raises LeaseLost once the lease is someone else's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from worker.events import ControlAction, HandoffRequest
from worker.relay.attachments import ModelFile
from worker.settings import BackendName
from worker.store.records import (
    NO_CHANGE,
    ClaimedOutbox,
    ConversationChange,
    EventStatus,
    IncomingEvent,
    Intaken,
    Lease,
    NextBatch,
    OutboxMessage,
    PendingWindow,
    RunRecord,
    ToolCallRecord,
    ToolCallState,
    UploadedFile,
)


class OutboxWriter(Protocol):
    """Queues messages to publish outside any conversation's work (refused deliveries): all of
    them or, if it fails, none."""

    async def add_to_outbox(self, *messages: OutboxMessage) -> None: ...


class IntakeStore(OutboxWriter, Protocol):
    """Intake: store an event once, and take its conversation in the same step."""

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
        """Stores the event, says whether it still needs an answer, and if it does takes the
        conversation's lease for `owner` unless somebody holds it. A new conversation starts
        on `backend` with `assistant_id` and `profile`; an event that needs another backend
        than the conversation's is not stored (REFUSED)."""
        ...


class LeaseStore(Protocol):
    """Ownership: leases taken, renewed, handed back, and conversations left without one."""

    async def acquire_lease(
        self, conversation_id: str, owner: str, ttl_s: float
    ) -> Lease | None: ...

    async def renew_leases(self, leases: Sequence[Lease], ttl_s: float) -> set[uuid.UUID]:
        """Extends the leases still held by these tokens; returns those tokens."""
        ...

    async def hand_back_lease(self, lease: Lease) -> None:
        """Lets anyone take the conversation at once, while this token stays fenced out."""
        ...

    async def sweepable_conversations(self, limit: int) -> list[str]:
        """Conversations with work waiting and no living owner."""
        ...


class ConversationStore(Protocol):
    """The owner's loop: batches, runs, files and outcomes, each write fenced by the lease."""

    async def next_batch(self, lease: Lease) -> NextBatch | None:
        """The batch left open (to resume), else a new one of the oldest pending events; when
        nothing waits the conversation is given up in the same step, and None returned."""
        ...

    async def set_thread(self, lease: Lease, thread_id: str) -> None: ...

    async def record_run_started(
        self, lease: Lease, batch_id: uuid.UUID, run_id: str, attempt: int
    ) -> None: ...

    async def record_batch_failure(self, lease: Lease, batch_id: uuid.UUID) -> tuple[int, datetime]:
        """Counts a failure no other class covers; returns the count and the first's time."""
        ...

    async def record_handoff(
        self, lease: Lease, batch_id: uuid.UUID, request: HandoffRequest
    ) -> None:
        """The model asked for a human in the batch's run; settling the batch hands it off."""
        ...

    async def begin_tool_call(
        self, lease: Lease, batch_id: uuid.UUID, call_id: str, name: str, arguments: str
    ) -> ToolCallRecord:
        """Records a call before its handler runs; the record says whether this begins it
        (`began`) or an earlier owner did, and if so how far that one got."""
        ...

    async def end_tool_call(
        self,
        lease: Lease,
        batch_id: uuid.UUID,
        call_id: str,
        state: ToolCallState,
        output: str,
        duration_ms: int | None,
    ) -> None:
        """Records the call's outcome and how long its handler took (None: not known); the
        first ending stands."""
        ...

    async def batch_tool_calls(self, batch_id: uuid.UUID) -> list[ToolCallRecord]:
        """The batch's calls, in the order they began."""
        ...

    async def batch_files(self, event_ids: Sequence[str]) -> dict[tuple[str, int], ModelFile]:
        """The files already recorded for these events' attachments, by (event, position)."""
        ...

    async def record_file(
        self, lease: Lease, event_id: str, position: int, file: ModelFile, *, uploaded: bool
    ) -> None:
        """Records an attachment's file; the first record of (event, position) stands."""
        ...

    async def record_run_retry(
        self, lease: Lease, batch_id: uuid.UUID, ended: RunRecord, after_item_id: str | None
    ) -> None:
        """The run ended for a transient reason; the batch's next attempt starts after it."""
        ...

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
        """Closes the batch, settles its events, applies a control event's `change` and queues
        what to publish, atomically; then opens the next batch or gives the conversation up, in
        the same step. A reply is withheld while a takeover, close or erase waits; a reply
        written moves the conversation's last_reply_sequence to its own."""
        ...

    async def pending_window(self, conversation_id: str) -> PendingWindow | None:
        """The ages of the events waiting for a conversation with no open batch; None if there
        is an open batch or nothing waits."""
        ...

    async def pending_interrupt(self, conversation_id: str) -> ControlAction | None:
        """The first waiting control event that stops the conversation's active run at once."""
        ...

    async def conversation_files(self, conversation_id: str) -> list[str]:
        """The IDs of the files the worker uploaded for the conversation's events."""
        ...


class OutboxAck(Protocol):
    """Marks rows of the claim it came with as published or failed (kept only if the claim's
    block ends normally)."""

    async def published(self, ids: Sequence[int]) -> None: ...

    async def failed(self, ids: Sequence[int]) -> None: ...


class OutboxStore(OutboxWriter, Protocol):
    """The outbox relay: claim unpublished rows, publish, mark."""

    def claim_outbox(
        self, limit: int
    ) -> AbstractAsyncContextManager[tuple[list[ClaimedOutbox], OutboxAck]]:
        """Locks up to `limit` unpublished rows, oldest first, for the length of the block;
        rows another claim holds are skipped, not waited for."""
        ...


class HealthStore(Protocol):
    """The probes: one cheap question that also feeds the backlog gauge."""

    async def outbox_backlog(self) -> int: ...


class RetentionStore(Protocol):
    """`prune`: what settled long ago goes, pending work and conversations stay."""

    async def prunable(self, cutoff: datetime) -> dict[str, int]:
        """How many rows `prune` would delete, per table, and how many uploaded files."""
        ...

    async def prunable_files(self, cutoff: datetime, limit: int) -> list[UploadedFile]: ...

    async def forget_files(self, files: Sequence[UploadedFile]) -> None: ...

    async def prune(
        self, cutoff: datetime, *, chunk: int, on_chunk: Callable[[str, int], None]
    ) -> dict[str, int]:
        """Deletes what was settled before `cutoff`, `chunk` rows at a time, reporting each
        chunk; returns the rows deleted per table."""
        ...


class Store(
    IntakeStore,
    LeaseStore,
    ConversationStore,
    OutboxStore,
    HealthStore,
    RetentionStore,
    Protocol,
):
    """Everything a worker and its operator commands need of a store."""

    async def move_conversations(
        self, backend: str, conversation_ids: Sequence[str] | None
    ) -> tuple[list[str], int]:
        """Moves idle conversations to `backend`; returns those moved and how many were busy."""
        ...
