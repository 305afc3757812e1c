"""Postgres: the source of truth. Every statement is a named one of sql/queries.sql.

Driver errors stop here: a connection that is refused, dropped or restarting leaves this module
as StoreUnavailable (the driver's error as its cause), so the core never sees asyncpg.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import asyncpg

from worker import tracing
from worker.errors import LeaseLost, StoreUnavailable
from worker.events import ControlAction, HandoffRequest
from worker.relay.attachments import ModelFile
from worker.settings import BackendName
from worker.store.queries import q
from worker.store.records import (
    NO_CHANGE,
    PRUNED_TABLES,
    AttachmentFile,
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

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

P = ParamSpec("P")
T = TypeVar("T")

# What says the server, not the statement, is the problem: worth waiting out.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # A pooled connection caught mid-statement by a server restart ("cannot switch to state
    # ..."): the server is the problem, not the event.
    asyncpg.InternalClientError,
    # "terminating connection due to administrator command": a restart or a failover.
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"Postgres unavailable: {type(exc).__name__}")


def store_boundary(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Raises StoreUnavailable, caused by the driver's error, when the server is away.

    With tracing on, each call under a traced span is a span of its own, named after the
    method: one per store operation (a short transaction), not per statement, and no SQL.
    """
    span_name = f"postgres {method.__name__}"
    attributes = {
        "db.system.name": "postgresql",
        "db.system": "postgresql",
        "db.operation.name": method.__name__,
    }

    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with tracing.child_span(span_name, attributes):
                return await method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    return translated


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo on release: the worker sets no session state, LISTENs to nothing and takes
    no advisory locks through the pool. asyncpg's default reset query would otherwise cost a
    round trip and a transaction of its own on every release, about half of all transactions."""


async def create_pool(dsn: str, max_size: int = 10) -> asyncpg.Pool:
    """A pool for PostgresStore. Connecting errors are the driver's own: startup tells refused
    credentials from an unreachable server by them."""
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, init=_init_connection, reset=_keep_session
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def open_store(dsn: str, max_size: int = 1) -> AsyncIterator[PostgresStore]:
    """A store on a pool of its own, for one-off commands (the worker wires its pools itself)."""
    pool = await create_pool(dsn, max_size=max_size)
    try:
        yield PostgresStore(pool)
    finally:
        await pool.close()


class PostgresStore:
    """The store on Postgres: every method is one short transaction.

    The transactions follow the life of an event so that each step costs one: intake (store the
    event, take the conversation), next batch, run started, and finish (settle the batch and
    either open the next one or give the conversation up). Row locks on the conversation
    serialise intake and lease release, so an event stored while the owner gives up is never
    left without one.
    """

    def __init__(self, pool: asyncpg.Pool, *, batch_max_events: int = 16) -> None:
        self._pool = pool
        self._batch_max_events = batch_max_events

    @asynccontextmanager
    async def _fenced(self, lease: Lease) -> AsyncIterator[tuple[Connection, ConversationRow]]:
        """A transaction that only proceeds while `lease` is still ours, holding the row lock."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("fence"), lease.conversation_id, lease.token)
            if row is None:
                raise LeaseLost(lease.conversation_id)
            yield conn, ConversationRow.from_row(row)

    # -- intake -------------------------------------------------------------------------------

    @store_boundary
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
        async with self._pool.acquire() as conn, conn.transaction():
            if event.control is None:
                found = await conn.fetchval(
                    q("lock_conversation"), event.conversation_id, backend, assistant_id, profile
                )
            else:
                found = await conn.fetchval(q("lock_known_conversation"), event.conversation_id)
                if found is None:
                    return Intaken(IntakeResult.IGNORED, None, backend)
            actual = BackendName(found)
            if event.needs_backend not in (None, actual):
                return Intaken(IntakeResult.REFUSED, None, actual)
            return await _store_event(conn, event, actual, owner, lease_ttl_s)

    @store_boundary
    async def acquire_lease(self, conversation_id: str, owner: str, ttl_s: float) -> Lease | None:
        async with self._pool.acquire() as conn:
            return await _acquire_lease(conn, conversation_id, owner, ttl_s)

    @store_boundary
    async def renew_leases(self, leases: Sequence[Lease], ttl_s: float) -> set[uuid.UUID]:
        rows = await self._pool.fetch(q("renew_leases"), [lease.token for lease in leases], ttl_s)
        return {row["lease_token"] for row in rows}

    @store_boundary
    async def hand_back_lease(self, lease: Lease) -> None:
        await self._pool.execute(q("hand_back_lease"), lease.conversation_id, lease.token)

    @store_boundary
    async def sweepable_conversations(self, limit: int) -> list[str]:
        rows = await self._pool.fetch(q("sweepable_conversations"), limit)
        return [row["conversation_id"] for row in rows]

    # -- conversation work (fenced) -------------------------------------------------------------

    @store_boundary
    async def set_thread(self, lease: Lease, thread_id: str) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(q("set_thread"), lease.conversation_id, thread_id)

    @store_boundary
    async def next_batch(self, lease: Lease) -> NextBatch | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                q("fence_with_open_batch"), lease.conversation_id, lease.token
            )
            if row is None:
                raise LeaseLost(lease.conversation_id)
            conversation = ConversationRow.from_row(row)
            if row["batch_id"] is None:
                return await self._start_batch_or_release(conn, lease, conversation)
            batch = OpenBatch.from_row(row)
            events = await conn.fetch(q("batch_events"), list(batch.event_ids))
            return NextBatch(batch, False, conversation, [StoredEvent.from_row(r) for r in events])

    async def _start_batch_or_release(
        self, conn: Connection, lease: Lease, conversation: ConversationRow
    ) -> NextBatch | None:
        # Every statement is a wait for the event loop while the transaction holds the row
        # lock and a pooled connection, so opening a batch is one statement.
        batch_id = uuid.uuid4()
        after_item_id = conversation.last_item_id
        rows = await conn.fetch(
            q("start_batch"),
            batch_id,
            lease.conversation_id,
            self._batch_max_events,
            after_item_id,
            lease.token,
        )
        if not rows:
            return None  # and the lease is given up (see start_batch)
        event_ids = tuple(r["event_id"] for r in rows)
        batch = OpenBatch(batch_id, event_ids, 1, None, False, after_item_id)
        return NextBatch(batch, True, conversation, [StoredEvent.from_row(r) for r in rows])

    @store_boundary
    async def record_run_started(
        self, lease: Lease, batch_id: uuid.UUID, run_id: str, attempt: int
    ) -> None:
        fenced = await self._pool.fetchval(
            q("record_run_started"), batch_id, run_id, attempt, lease.conversation_id, lease.token
        )
        if not fenced:
            raise LeaseLost(lease.conversation_id)

    @store_boundary
    async def record_batch_failure(self, lease: Lease, batch_id: uuid.UUID) -> tuple[int, datetime]:
        async with self._fenced(lease) as (conn, _):
            row = await conn.fetchrow(q("record_batch_failure"), batch_id)
        assert row is not None
        return int(row["failures"]), row["first_failure_at"]

    @store_boundary
    async def record_handoff(
        self, lease: Lease, batch_id: uuid.UUID, request: HandoffRequest
    ) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(q("record_handoff"), batch_id, request.to_json())

    @store_boundary
    async def begin_tool_call(
        self, lease: Lease, batch_id: uuid.UUID, call_id: str, name: str, arguments: str
    ) -> ToolCallRecord:
        async with self._fenced(lease) as (conn, _):
            row = await conn.fetchrow(
                q("begin_tool_call"), batch_id, call_id, lease.conversation_id, name, arguments
            )
        assert row is not None  # inserted, or there already
        return ToolCallRecord.from_row(row)

    @store_boundary
    async def end_tool_call(
        self,
        lease: Lease,
        batch_id: uuid.UUID,
        call_id: str,
        state: ToolCallState,
        output: str,
        duration_ms: int | None,
    ) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(
                q("end_tool_call"), batch_id, call_id, state.value, output, duration_ms
            )

    @store_boundary
    async def batch_tool_calls(self, batch_id: uuid.UUID) -> list[ToolCallRecord]:
        rows = await self._pool.fetch(q("batch_tool_calls"), batch_id)
        return [ToolCallRecord.from_row(r) for r in rows]

    @store_boundary
    async def response_ended(self, response_id: str) -> bool:
        """Whether a webhook recorded that the background response ended (ended_responses)."""
        return await self._pool.fetchval(q("response_ended"), response_id) is not None

    @store_boundary
    async def batch_files(self, event_ids: Sequence[str]) -> dict[tuple[str, int], ModelFile]:
        rows = await self._pool.fetch(q("batch_attachments"), list(event_ids))
        found = [AttachmentFile.from_row(r) for r in rows]
        return {(a.event_id, a.position): a.file for a in found}

    @store_boundary
    async def record_file(
        self, lease: Lease, event_id: str, position: int, file: ModelFile, *, uploaded: bool
    ) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(
                q("record_attachment"),
                event_id,
                position,
                file.file_id,
                file.filename,
                file.kind,
                uploaded,
            )

    @store_boundary
    async def record_run_retry(
        self, lease: Lease, batch_id: uuid.UUID, ended: RunRecord, after_item_id: str | None
    ) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(
                q("record_run_ended"),
                ended.run_id,
                ended.status,
                ended.polls,
                ended.usage,
                ended.error,
            )
            await conn.execute(q("record_run_retry"), batch_id, after_item_id)

    @store_boundary
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
        run = (
            (ended.run_id, ended.status, ended.polls, ended.usage, ended.error)
            if ended is not None
            else (None, None, 0, None, None)
        )
        async with self._fenced(lease) as (conn, conversation):
            # Under the row lock intake takes too: a takeover stored before this commits
            # withholds the reply, one stored after it comes after the reply.
            interrupt = await conn.fetchval(
                q("close_batch"), batch_id, event_status, lease.conversation_id, last_item_id, *run
            )
            written = withhold_replies(outbox, interrupt)
            sequence = reply_sequence(written)
            for message in written:
                # The sequence rides with the row that carries it, in the same statement.
                moves_to = sequence if message.sequence == sequence else None
                await _insert_outbox(conn, message, moves_to)
            if sequence is not None:
                conversation = replace(conversation, last_reply_sequence=sequence)
            conversation = await _apply(conn, lease.conversation_id, conversation, change)
            if last_item_id is not None:
                conversation = replace(conversation, last_item_id=last_item_id)
            # The batch just closed was the conversation's one open batch.
            return await self._start_batch_or_release(conn, lease, conversation)

    @store_boundary
    async def pending_window(self, conversation_id: str) -> PendingWindow | None:
        row = await self._pool.fetchrow(q("pending_window"), conversation_id)
        return None if row is None else PendingWindow.from_row(row)

    @store_boundary
    async def pending_interrupt(self, conversation_id: str) -> ControlAction | None:
        found = await self._pool.fetchval(q("pending_interrupt"), conversation_id)
        return None if found is None else ControlAction(found)

    @store_boundary
    async def conversation_files(self, conversation_id: str) -> list[str]:
        rows = await self._pool.fetch(q("conversation_files"), conversation_id)
        return [r["file_id"] for r in rows]

    # -- operations ---------------------------------------------------------------------------

    @store_boundary
    async def move_conversations(
        self, backend: str, conversation_ids: Sequence[str] | None
    ) -> tuple[list[str], int]:
        ids = list(conversation_ids) if conversation_ids is not None else None
        async with self._pool.acquire() as conn, conn.transaction():
            candidates = await conn.fetchval(q("count_conversations_elsewhere"), backend, ids)
            rows = await conn.fetch(q("move_conversations"), backend, ids)
        moved = [r["conversation_id"] for r in rows]
        return moved, int(candidates) - len(moved)

    @store_boundary
    async def prunable(self, cutoff: datetime) -> dict[str, int]:
        row = await self._pool.fetchrow(q("count_prunable"), cutoff)
        assert row is not None
        return {table: int(row[table]) for table in (*PRUNED_TABLES, "files")}

    @store_boundary
    async def prunable_files(self, cutoff: datetime, limit: int) -> list[UploadedFile]:
        rows = await self._pool.fetch(q("prunable_files"), cutoff, limit)
        return [UploadedFile.from_row(r) for r in rows]

    @store_boundary
    async def forget_files(self, files: Sequence[UploadedFile]) -> None:
        await self._pool.execute(
            q("forget_files"), [f.event_id for f in files], [f.position for f in files]
        )

    @store_boundary
    async def prune(
        self, cutoff: datetime, *, chunk: int, on_chunk: Callable[[str, int], None]
    ) -> dict[str, int]:
        async def delete_chunk(table: str, limit: int) -> int:
            status = await self._pool.execute(q(f"prune_{table}"), cutoff, limit)
            return int(status.split()[-1])  # "DELETE <n>"

        return await prune_in_chunks(delete_chunk, chunk, on_chunk)

    # -- outbox ---------------------------------------------------------------------------------

    @store_boundary
    async def add_to_outbox(self, *messages: OutboxMessage) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            for message in messages:
                await _insert_outbox(conn, message, None)

    @asynccontextmanager
    async def claim_outbox(
        self, limit: int
    ) -> AsyncIterator[tuple[list[ClaimedOutbox], PostgresOutboxAck]]:
        # Only the store's own failures are translated: what the block raises (the broker's)
        # passes through as it is.
        from_block: BaseException | None = None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(q("claim_outbox"), limit)
                try:
                    yield [ClaimedOutbox.from_row(r) for r in rows], PostgresOutboxAck(conn)
                except BaseException as exc:
                    from_block = exc
                    raise
        except _UNAVAILABLE as exc:
            if exc is from_block:
                raise
            raise _unavailable(exc) from exc

    @store_boundary
    async def outbox_backlog(self) -> int:
        return int(await self._pool.fetchval(q("outbox_backlog")))


class PostgresOutboxAck:
    """Marks rows claimed in the enclosing transaction as published or failed."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @store_boundary
    async def published(self, ids: Sequence[int]) -> None:
        if ids:
            await self._conn.execute(q("mark_published"), list(ids))

    @store_boundary
    async def failed(self, ids: Sequence[int]) -> None:
        if ids:
            await self._conn.execute(q("mark_publish_failed"), list(ids))


async def _store_event(
    conn: Connection, e: IncomingEvent, backend: BackendName, owner: str, ttl_s: float
) -> Intaken:
    """A new event is stored and the lease taken in one statement; for one stored before, its
    status decides, and the lease is taken only if it still needs its answer."""
    token = uuid.uuid4()
    row = await conn.fetchrow(q("insert_event"), *_event_columns(e), token, owner, ttl_s)
    assert row is not None  # one row, always
    if row["seq"] is not None:
        lease = Lease(e.conversation_id, token) if row["lease_token"] is not None else None
        return Intaken(IntakeResult.NEW, lease, backend)
    result = await _stored_before(conn, e)
    lease = None
    if result.needs_answer:
        lease = await _acquire_lease(conn, e.conversation_id, owner, ttl_s)
    return Intaken(result, lease, backend)


def _event_columns(e: IncomingEvent) -> tuple[object, ...]:
    return (
        e.event_id,
        e.conversation_id,
        e.body,
        e.headers,
        e.routing_key,
        e.replay_count,
        e.occurred_at,
        e.batch_key,
        e.control,
        e.trace_context,
    )


async def _stored_before(conn: Connection, e: IncomingEvent) -> IntakeResult:
    """What a delivery of an event stored before means: a duplicate, or an operator's replay
    (reopened as new)."""
    existing = await conn.fetchrow(q("get_event"), e.event_id)
    assert existing is not None
    result = e.result_for(EventStatus(existing["status"]), existing["replay_count"])
    if result is IntakeResult.REOPENED:
        await conn.execute(
            q("reopen_event"),
            e.event_id,
            e.replay_count,
            e.body,
            e.headers,
            e.batch_key,
            e.trace_context,
        )
    return result


async def _apply(
    conn: Connection, conversation_id: str, row: ConversationRow, change: ConversationChange
) -> ConversationRow:
    if change.erase:
        await conn.execute(q("erase_conversation"), conversation_id)
    if change.forget_thread:
        await conn.execute(q("forget_thread"), conversation_id)
        row = replace(row, thread_id=None, last_item_id=None, mode=ConversationMode.ASSISTANT)
    if change.mode is not None:
        await conn.execute(q("set_mode"), conversation_id, change.mode)
        row = replace(row, mode=change.mode)
    return row


async def _acquire_lease(
    conn: Connection, conversation_id: str, owner: str, ttl_s: float
) -> Lease | None:
    token = uuid.uuid4()
    got = await conn.fetchval(q("acquire_lease"), conversation_id, token, owner, ttl_s)
    return None if got is None else Lease(conversation_id, token)


async def _insert_outbox(conn: Connection, m: OutboxMessage, sequence: int | None) -> None:
    await conn.execute(
        q("insert_outbox"),
        m.dedupe_key,
        m.kind,
        m.message_id,
        m.exchange,
        m.routing_key,
        m.headers,
        m.body,
        m.content_type,
        m.conversation_id,
        sequence,
    )
