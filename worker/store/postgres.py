"""Postgres: the source of truth. All SQL lives in sql/queries.sql and runs through here."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from worker.errors import LeaseLost
from worker.relay.attachments import FileKind, ModelFile

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

SQL_DIR = Path(__file__).resolve().parent / "sql"
# In the order `prune` empties them: runs reference batches.
PRUNED_TABLES = ("runs", "batches", "events", "outbox")
_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Named statements from queries.sql, keyed by their `-- name:` header."""
    text = (SQL_DIR / "queries.sql").read_text()
    parts = _QUERY_HEADER.split(text)[1:]
    return {name: body.strip() for name, body in zip(parts[::2], parts[1::2], strict=True)}


def q(name: str) -> str:
    return queries()[name]


class IntakeResult(StrEnum):
    NEW = "new"
    REOPENED = "reopened"
    ALREADY_PENDING = "already_pending"
    ALREADY_SETTLED = "already_settled"
    # Not stored: the conversation's backend cannot honour a field the event sets.
    REFUSED = "refused"

    @property
    def needs_answer(self) -> bool:
        return self not in (IntakeResult.ALREADY_SETTLED, IntakeResult.REFUSED)


@dataclass(frozen=True, slots=True)
class Lease:
    conversation_id: str
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class ConversationRow:
    backend: str
    thread_id: str | None
    assistant_id: str | None
    last_item_id: str | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    body: bytes
    headers: dict[str, Any]
    routing_key: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class OpenBatch:
    batch_id: uuid.UUID
    event_ids: tuple[str, ...]
    attempt: int
    run_id: str | None
    messages_added: bool
    after_item_id: str | None
    # Failures no other class covers, so far (AW_INTERNAL_ATTEMPTS bounds them).
    failures: int = 0


@dataclass(frozen=True, slots=True)
class NextBatch:
    batch: OpenBatch
    # Made just now by this call: nobody can have sent its run yet.
    fresh: bool
    conversation: ConversationRow
    events: list[StoredEvent]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """How a run ended, as stored in `runs`."""

    run_id: str
    status: str
    polls: int
    usage: dict[str, Any] | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    dedupe_key: str
    kind: str
    message_id: str
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class ClaimedOutbox:
    outbox_id: int
    message: OutboxMessage

    @property
    def is_reply(self) -> bool:
        return self.message.kind == "reply"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo on release: the worker sets no session state, LISTENs to nothing and takes
    no advisory locks through the pool. asyncpg's default reset query would otherwise cost a
    round trip and a transaction of its own on every release, about half of all transactions."""


async def create_pool(dsn: str, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, init=_init_connection, reset=_keep_session
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def open_store(dsn: str, max_size: int = 1) -> AsyncIterator[Store]:
    """A store on a pool of its own, for one-off commands (the worker wires its pools itself)."""
    pool = await create_pool(dsn, max_size=max_size)
    try:
        yield Store(pool)
    finally:
        await pool.close()


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
    needs_backend: str | None = None


@dataclass(frozen=True, slots=True)
class Intaken:
    result: IntakeResult
    # Taken in the same transaction when the event needs an answer and nobody owns it.
    lease: Lease | None
    # The conversation's backend (recorded on first contact).
    backend: str


class Store:
    """Typed operations on the worker's tables; each method is one short transaction.

    The transactions follow the life of an event so that each step costs one: intake (store the
    event, take the conversation), next batch, run started, and finish (settle the batch and
    either open the next one or give the conversation up).
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
            yield (
                conn,
                ConversationRow(
                    row["backend"], row["thread_id"], row["assistant_id"], row["last_item_id"]
                ),
            )

    # -- intake -------------------------------------------------------------------------------

    async def intake(
        self,
        event: IncomingEvent,
        *,
        backend: str,
        assistant_id: str | None,
        owner: str,
        lease_ttl_s: float,
    ) -> Intaken:
        """Stores the event, says whether it still needs an answer, and if it does takes the
        conversation's lease for `owner` unless somebody holds it. A new conversation starts on
        `backend` with `assistant_id`. An event that needs another backend than the
        conversation's is not stored (REFUSED)."""
        async with self._pool.acquire() as conn, conn.transaction():
            actual = await conn.fetchval(
                q("lock_conversation"), event.conversation_id, backend, assistant_id
            )
            if event.needs_backend not in (None, actual):
                return Intaken(IntakeResult.REFUSED, None, actual)
            result = await _store_event(conn, event)
            lease = None
            if result.needs_answer:
                lease = await _acquire_lease(conn, event.conversation_id, owner, lease_ttl_s)
        return Intaken(result, lease, actual)

    async def acquire_lease(self, conversation_id: str, owner: str, ttl_s: float) -> Lease | None:
        async with self._pool.acquire() as conn:
            return await _acquire_lease(conn, conversation_id, owner, ttl_s)

    async def renew_leases(self, leases: Sequence[Lease], ttl_s: float) -> set[uuid.UUID]:
        rows = await self._pool.fetch(q("renew_leases"), [lease.token for lease in leases], ttl_s)
        return {row["lease_token"] for row in rows}

    async def hand_back_lease(self, lease: Lease) -> None:
        await self._pool.execute(q("hand_back_lease"), lease.conversation_id, lease.token)

    async def sweepable_conversations(self, limit: int) -> list[str]:
        rows = await self._pool.fetch(q("sweepable_conversations"), limit)
        return [row["conversation_id"] for row in rows]

    # -- conversation work (fenced) -------------------------------------------------------------

    async def set_thread(self, lease: Lease, thread_id: str) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(q("set_thread"), lease.conversation_id, thread_id)

    async def next_batch(self, lease: Lease) -> NextBatch | None:
        """The batch a previous owner left open (to resume), else a new one of the pending
        events (oldest first), with everything needed to answer it. When nothing waits the
        conversation is given up in the same transaction, and None returned."""
        async with self._fenced(lease) as (conn, conversation):
            row = await conn.fetchrow(q("open_batch"), lease.conversation_id)
            if row is None:
                return await self._start_batch_or_release(conn, lease, conversation)
            batch = _open_batch(row)
            events = await conn.fetch(q("batch_events"), list(batch.event_ids))
            return NextBatch(batch, False, conversation, _stored(events))

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
        )
        if not rows:
            # Intake locks the conversation row before adding an event, and so does the fence
            # this runs under: an event stored after this look finds the lease free, takes it.
            await conn.execute(q("release_lease"), lease.conversation_id, lease.token)
            return None
        event_ids = tuple(r["event_id"] for r in rows)
        batch = OpenBatch(batch_id, event_ids, 1, None, False, after_item_id)
        return NextBatch(batch, True, conversation, _stored(rows))

    async def record_run_started(
        self, lease: Lease, batch_id: uuid.UUID, run_id: str, attempt: int
    ) -> None:
        async with self._fenced(lease) as (conn, _):
            await conn.execute(q("record_run_started"), batch_id, run_id, attempt)

    async def record_batch_failure(self, lease: Lease, batch_id: uuid.UUID) -> tuple[int, datetime]:
        """Counts a failure no other class covers; returns the count and the first's time."""
        async with self._fenced(lease) as (conn, _):
            row = await conn.fetchrow(q("record_batch_failure"), batch_id)
        assert row is not None
        return int(row["failures"]), row["first_failure_at"]

    async def batch_files(self, event_ids: Sequence[str]) -> dict[tuple[str, int], ModelFile]:
        """The files already recorded for these events' attachments, by (event, position)."""
        rows = await self._pool.fetch(q("batch_attachments"), list(event_ids))
        return {
            (r["event_id"], r["position"]): ModelFile(
                r["file_id"], r["filename"], FileKind(r["kind"])
            )
            for r in rows
        }

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

    async def record_run_retry(
        self, lease: Lease, batch_id: uuid.UUID, ended: RunRecord, after_item_id: str | None
    ) -> None:
        """The run ended for a transient reason; the batch's next attempt starts after it."""
        async with self._fenced(lease) as (conn, _):
            await _record_run_ended(conn, ended)
            await conn.execute(q("record_run_retry"), batch_id, after_item_id)

    async def finish_batch(
        self,
        lease: Lease,
        batch_id: uuid.UUID,
        *,
        event_status: str,
        outbox: Sequence[OutboxMessage],
        ended: RunRecord | None = None,
        last_item_id: str | None = None,
    ) -> NextBatch | None:
        """Closes the batch, settles its events and queues what to publish, atomically; then,
        in the same transaction, opens the next batch or gives the conversation up."""
        run = (
            (ended.run_id, ended.status, ended.polls, ended.usage, ended.error)
            if ended is not None
            else (None, None, 0, None, None)
        )
        async with self._fenced(lease) as (conn, conversation):
            await conn.execute(
                q("close_batch"), batch_id, event_status, lease.conversation_id, last_item_id, *run
            )
            for message in outbox:
                await _insert_outbox(conn, message)
            if last_item_id is not None:
                conversation = replace(conversation, last_item_id=last_item_id)
            # The batch just closed was the conversation's one open batch.
            return await self._start_batch_or_release(conn, lease, conversation)

    # -- operations ---------------------------------------------------------------------------

    async def move_conversations(
        self, backend: str, conversation_ids: Sequence[str] | None
    ) -> tuple[list[str], int]:
        """Moves idle conversations to `backend`; returns those moved and how many were busy."""
        ids = list(conversation_ids) if conversation_ids is not None else None
        async with self._pool.acquire() as conn, conn.transaction():
            candidates = await conn.fetchval(q("count_conversations_elsewhere"), backend, ids)
            rows = await conn.fetch(q("move_conversations"), backend, ids)
        moved = [r["conversation_id"] for r in rows]
        return moved, int(candidates) - len(moved)

    async def prunable(self, cutoff: datetime) -> dict[str, int]:
        """How many rows `prune` would delete, per table."""
        row = await self._pool.fetchrow(q("count_prunable"), cutoff)
        assert row is not None
        return {table: int(row[table]) for table in (*PRUNED_TABLES, "files")}

    async def prunable_files(self, cutoff: datetime, limit: int) -> list[tuple[str, int, str]]:
        """(event_id, position, file_id) of files the worker uploaded for prunable events."""
        rows = await self._pool.fetch(q("prunable_files"), cutoff, limit)
        return [(r["event_id"], r["position"], r["file_id"]) for r in rows]

    async def forget_files(self, files: Sequence[tuple[str, int, str]]) -> None:
        await self._pool.execute(q("forget_files"), [f[0] for f in files], [f[1] for f in files])

    async def prune(
        self, cutoff: datetime, *, chunk: int, on_chunk: Callable[[str, int], None]
    ) -> dict[str, int]:
        """Deletes what was settled before `cutoff`, `chunk` rows per transaction so that no lock
        is held for long; reports each chunk. Returns the rows deleted per table."""
        deleted = dict.fromkeys(PRUNED_TABLES, 0)
        for table in PRUNED_TABLES:
            while True:
                status = await self._pool.execute(q(f"prune_{table}"), cutoff, chunk)
                count = int(status.split()[-1])  # "DELETE <n>"
                deleted[table] += count
                on_chunk(table, count)
                if count < chunk:
                    break
        return deleted

    # -- outbox ---------------------------------------------------------------------------------

    async def add_to_outbox(self, message: OutboxMessage) -> None:
        async with self._pool.acquire() as conn:
            await _insert_outbox(conn, message)

    @asynccontextmanager
    async def claim_outbox(
        self, limit: int
    ) -> AsyncIterator[tuple[list[ClaimedOutbox], OutboxAck]]:
        """Locks up to `limit` unpublished rows for the length of the block."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("claim_outbox"), limit)
            claimed = [
                ClaimedOutbox(
                    r["outbox_id"],
                    OutboxMessage(
                        dedupe_key="",
                        kind=r["kind"],
                        message_id=r["message_id"],
                        exchange=r["exchange"],
                        routing_key=r["routing_key"],
                        headers=r["headers"],
                        body=r["body"],
                        content_type=r["content_type"],
                    ),
                )
                for r in rows
            ]
            yield claimed, OutboxAck(conn)

    async def outbox_backlog(self) -> int:
        return int(await self._pool.fetchval(q("outbox_backlog")))


class OutboxAck:
    """Marks rows claimed in the enclosing transaction as published or failed."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def published(self, ids: Sequence[int]) -> None:
        if ids:
            await self._conn.execute(q("mark_published"), list(ids))

    async def failed(self, ids: Sequence[int]) -> None:
        if ids:
            await self._conn.execute(q("mark_publish_failed"), list(ids))


async def _store_event(conn: Connection, e: IncomingEvent) -> IntakeResult:
    seq = await conn.fetchval(
        q("insert_event"),
        e.event_id,
        e.conversation_id,
        e.body,
        e.headers,
        e.routing_key,
        e.replay_count,
        e.occurred_at,
        e.batch_key,
    )
    if seq is not None:
        return IntakeResult.NEW
    existing = await conn.fetchrow(q("get_event"), e.event_id)
    assert existing is not None
    status, stored_replays = existing["status"], existing["replay_count"]
    if _reopens(status, stored_replays, e.replay_count, e.forced):
        await conn.execute(
            q("reopen_event"), e.event_id, e.replay_count, e.body, e.headers, e.batch_key
        )
        return IntakeResult.REOPENED
    if status in ("answered", "dead_lettered"):
        return IntakeResult.ALREADY_SETTLED
    return IntakeResult.ALREADY_PENDING


async def _acquire_lease(
    conn: Connection | asyncpg.Connection, conversation_id: str, owner: str, ttl_s: float
) -> Lease | None:
    token = uuid.uuid4()
    got = await conn.fetchval(q("acquire_lease"), conversation_id, token, owner, ttl_s)
    return None if got is None else Lease(conversation_id, token)


def _open_batch(row: asyncpg.Record) -> OpenBatch:
    return OpenBatch(
        row["batch_id"],
        tuple(row["event_ids"]),
        row["attempt"],
        row["run_id"],
        row["messages_added"],
        row["after_item_id"],
        row["failures"],
    )


def _stored(rows: Sequence[asyncpg.Record]) -> list[StoredEvent]:
    return [
        StoredEvent(r["event_id"], r["body"], r["headers"], r["routing_key"], r["received_at"])
        for r in rows
    ]


async def _record_run_ended(conn: Connection, run: RunRecord) -> None:
    await conn.execute(
        q("record_run_ended"), run.run_id, run.status, run.polls, run.usage, run.error
    )


async def _insert_outbox(conn: Connection, m: OutboxMessage) -> None:
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
    )


def _reopens(status: str, stored_replays: int, replay_count: int, force: bool) -> bool:
    """A known event is new work again only after an operator's replay (counted, so a redelivery
    of that replay is still a duplicate); an answered one only when the replay is forced."""
    if replay_count <= stored_replays:
        return False
    return status == "dead_lettered" or (force and status == "answered")
