"""`assistant-worker prune`: old settled work goes, pending work and thread mappings stay."""

from __future__ import annotations

import base64

import asyncpg
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import start_worker
from tests.support import publish, replies_for, run_cli
from worker.settings import Settings, Topology

AGE_OLD = "UPDATE {table} SET {column} = {column} - interval '40 days' WHERE {where}"


async def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    return await run_cli(settings, "prune", *args)


async def _answer(
    settings: Settings, channel: AbstractChannel, topology: Topology, conversation: str, n: int
) -> list[str]:
    """Has a real worker answer `n` messages of `conversation`; returns the replies' IDs."""
    events = [
        await publish(channel, topology, conversation_id=conversation, text=f"{conversation} {i}")
        for i in range(n)
    ]
    replies = await replies_for(channel, topology, {e["event_id"] for e in events})
    return [r["event_id"] for r in replies]


async def _rows(db: asyncpg.Connection, conversation: str) -> dict[str, int]:
    return {
        "events": await db.fetchval(
            "SELECT count(*) FROM inbound_events WHERE conversation_id = $1", conversation
        ),
        "batches": await db.fetchval(
            "SELECT count(*) FROM batches WHERE conversation_id = $1", conversation
        ),
        "runs": await db.fetchval(
            "SELECT count(*) FROM runs JOIN batches USING (batch_id) WHERE conversation_id = $1",
            conversation,
        ),
    }


async def test_prune_deletes_old_settled_work_and_keeps_everything_else(
    settings: Settings, channel: AbstractChannel, topology: Topology, db: asyncpg.Connection
) -> None:
    running = await start_worker(settings)
    try:
        old_replies = await _answer(settings, channel, topology, "c-old", 3)
        new_replies = await _answer(settings, channel, topology, "c-new", 2)
    finally:
        await running.shutdown()
    # c-old's work was settled 40 days ago; one of its events is still waiting (a stuck one).
    await db.execute(
        AGE_OLD.format(
            table="inbound_events", column="settled_at", where="conversation_id = 'c-old'"
        )
    )
    await db.execute(
        AGE_OLD.format(table="batches", column="finished_at", where="conversation_id = 'c-old'")
    )
    await db.execute(
        AGE_OLD.format(table="outbox", column="published_at", where="message_id = ANY($1)"),
        old_replies,
    )
    await db.execute(
        "INSERT INTO inbound_events (event_id, conversation_id, body, routing_key, received_at)"
        " VALUES ('stuck', 'c-old', '{}', 'user_message.v1', now() - interval '40 days')"
    )
    # Webhook bookkeeping: one delivery and ending from 40 days ago, one from now.
    for webhook_id, response_id, age in (
        ("wh_old", "resp_old", "40 days"),
        ("wh_new", "resp_new", "0"),
    ):
        await db.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event_type, received_at)"
            f" VALUES ($1, 'response.completed', now() - interval '{age}')",
            webhook_id,
        )
        await db.execute(
            "INSERT INTO ended_responses (response_id, event_type, received_at)"
            f" VALUES ($1, 'response.completed', now() - interval '{age}')",
            response_id,
        )
    old_before, new_before = await _rows(db, "c-old"), await _rows(db, "c-new")

    code, out, _ = await _cli(settings, "--older-than", "30d", "--dry-run")
    assert code == 0
    assert out.startswith(
        f"would delete {old_before['runs']} runs, {old_before['batches']} batches, "
        f"{old_before['events'] - 1} events, {len(old_replies)} outbox"
    )
    assert await _rows(db, "c-old") == old_before

    # One row per transaction: the chunked loop has to go round to delete them all.
    code, out, err = await _cli(settings, "--older-than", "30d", "--chunk", "1")
    assert code == 0, err
    assert out.startswith(
        f"deleted {old_before['runs']} runs, {old_before['batches']} batches, "
        f"{old_before['events'] - 1} events, {len(old_replies)} outbox"
    )
    assert await _rows(db, "c-old") == {"events": 1, "batches": 0, "runs": 0}
    assert await db.fetchval("SELECT status FROM inbound_events WHERE event_id = 'stuck'") == (
        "pending"
    )
    assert await _rows(db, "c-new") == new_before
    assert await db.fetchval(
        "SELECT count(*) FROM outbox WHERE message_id = ANY($1)", new_replies
    ) == len(new_replies)
    assert "1 webhook_deliveries, 1 ended_responses" in out
    assert await db.fetchval("SELECT array_agg(webhook_id) FROM webhook_deliveries") == ["wh_new"]
    assert await db.fetchval("SELECT array_agg(response_id) FROM ended_responses") == ["resp_new"]
    # The thread mappings stay: the conversations go on in the same threads.
    threads = await db.fetch("SELECT thread_id FROM conversations ORDER BY conversation_id")
    assert len(threads) == 2
    assert all(t["thread_id"] for t in threads)


async def test_prune_refuses_a_cutoff_newer_than_a_day(settings: Settings) -> None:
    code, _, err = await _cli(settings, "--older-than", "2h")
    assert code == 2
    assert "too recent" in err


async def test_prune_explains_an_unreadable_cutoff(settings: Settings) -> None:
    code, _, err = await _cli(settings, "--older-than", "last week")
    assert code == 2
    assert "neither an RFC 3339 time nor an age" in err


async def test_prune_deletes_the_files_the_worker_uploaded_for_pruned_events(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    db: asyncpg.Connection,
    standin: StandIn,
) -> None:
    note = {"filename": "note.txt", "content_base64": base64.b64encode(b"old note").decode()}
    running = await start_worker(settings)
    try:
        old = await publish(channel, topology, conversation_id="c-f", text="a", attachments=[note])
        await replies_for(channel, topology, {old["event_id"]})
        new = await publish(channel, topology, conversation_id="c-f", text="b", attachments=[note])
        await replies_for(channel, topology, {new["event_id"]})
    finally:
        await running.shutdown()
    uploads = {r["event_id"]: r["file_id"] for r in await db.fetch("SELECT * FROM attachments")}
    assert len(set(uploads.values())) == 2
    await db.execute(
        AGE_OLD.format(table="inbound_events", column="settled_at", where="event_id = $1"),
        old["event_id"],
    )

    code, out, err = await _cli(settings, "--older-than", "30d")
    assert code == 0, err
    assert out.startswith(
        "deleted 0 runs, 0 batches, 1 events, 0 outbox, 0 webhook_deliveries, "
        "0 ended_responses, 1 files"
    )
    deleted = {f["id"]: f["deleted"] for f in standin.files()}
    assert deleted == {uploads[old["event_id"]]: True, uploads[new["event_id"]]: False}
    assert await db.fetchval("SELECT count(*) FROM attachments") == 1
