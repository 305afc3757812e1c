"""The outbox (claimed, marked, deduplicated) and prune (settled work goes, the rest stays)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.behaviour.relay import Parked, Relay, event
from worker.store.ports import Store
from worker.store.records import OutboxKind, OutboxMessage, UploadedFile


def message(n: int) -> OutboxMessage:
    return OutboxMessage(
        dedupe_key=f"reply:r-{n}",
        kind=OutboxKind.REPLY,
        message_id=f"r-{n}",
        exchange="outbound",
        routing_key="assistant_reply.v1",
        headers={"n": n},
        body=json.dumps({"event_id": f"r-{n}"}).encode(),
    )


async def test_claimed_rows_are_marked_published_or_failed(store: Store) -> None:
    for n in range(3):
        await store.add_to_outbox(message(n))
    async with store.claim_outbox(2) as (claimed, ack):
        assert [c.message.message_id for c in claimed] == ["r-0", "r-1"]
        assert claimed[0].message.headers == {"n": 0}
        assert claimed[0].is_reply
        await ack.published([claimed[0].outbox_id])
        await ack.failed([claimed[1].outbox_id])

    assert await store.outbox_backlog() == 2
    # The failed row comes again, oldest first.
    async with store.claim_outbox(10) as (claimed, _):
        assert [c.message.message_id for c in claimed] == ["r-1", "r-2"]


async def test_writing_a_message_twice_queues_it_once(store: Store) -> None:
    await store.add_to_outbox(message(1))
    await store.add_to_outbox(message(1))
    assert await store.outbox_backlog() == 1


async def test_a_claim_skips_the_rows_another_claim_holds(store: Store) -> None:
    for n in range(3):
        await store.add_to_outbox(message(n))
    async with store.claim_outbox(2) as (held, _):
        async with store.claim_outbox(10) as (rest, _):
            assert [c.message.message_id for c in rest] == ["r-2"]
        assert len(held) == 2


async def publish_then_fail(store: Store) -> None:
    async with store.claim_outbox(10) as (claimed, ack):
        await ack.published([c.outbox_id for c in claimed])
        raise RuntimeError("broker gone")


async def test_marks_are_lost_with_a_claim_that_fails(store: Store) -> None:
    await store.add_to_outbox(message(1))
    with pytest.raises(RuntimeError, match="broker gone"):
        await publish_then_fail(store)
    assert await store.outbox_backlog() == 1


def later() -> datetime:
    """A cutoff after everything the test did: all that is settled is prunable."""
    return datetime.now(UTC) + timedelta(minutes=1)


async def test_prune_deletes_settled_work_and_keeps_what_waits(
    relay: Relay, parked: Parked, store: Store
) -> None:
    answered = event("c-old", "answered long ago")
    await relay.deliver(answered)
    await relay.publish()
    waiting = event("c-waiting", "not yet answered")
    await parked.deliver(waiting)

    expected = {
        "runs": 1,
        "batches": 1,
        "events": 1,
        "outbox": 1,
        "webhook_deliveries": 0,
        "ended_responses": 0,
    }
    assert await store.prunable(later()) == {**expected, "files": 0}
    chunks: list[tuple[str, int]] = []
    deleted = await store.prune(later(), chunk=1, on_chunk=lambda t, n: chunks.append((t, n)))
    assert deleted == expected
    assert [t for t, n in chunks if n] == ["runs", "batches", "events", "outbox"]
    assert await store.prunable(later()) == dict.fromkeys([*expected, "files"], 0)

    # What waited is still there to answer.
    await parked.leave()
    await relay.ownership.own_and_process("c-waiting")
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [waiting["event_id"]]
    # A pruned event is forgotten: a duplicate of it would be answered again.
    await relay.deliver(answered)
    [again] = await relay.replies()
    assert again["in_reply_to"] == [answered["event_id"]]


async def test_prune_keeps_what_was_settled_after_the_cutoff(relay: Relay, store: Store) -> None:
    await relay.deliver(event("c-recent", "just now"))
    await relay.publish()
    earlier = datetime.now(UTC) - timedelta(minutes=1)

    assert set((await store.prunable(earlier)).values()) == {0}
    assert await store.prune(earlier, chunk=10, on_chunk=lambda t, n: None) == {
        "runs": 0,
        "batches": 0,
        "events": 0,
        "outbox": 0,
        "webhook_deliveries": 0,
        "ended_responses": 0,
    }


async def test_uploaded_files_of_pruned_events_are_listed_then_forgotten(
    relay: Relay, store: Store
) -> None:
    note = {"filename": "note.txt", "content_base64": base64.b64encode(b"1042").decode()}
    doc = event("c-files", "see file", attachments=[note])
    await relay.deliver(doc)

    [file] = await store.prunable_files(later(), 10)
    assert (file.event_id, file.position) == (doc["event_id"], 0)
    assert (await store.prunable(later()))["files"] == 1
    await store.forget_files([file])
    assert await store.prunable_files(later(), 10) == []
    assert await store.batch_files([doc["event_id"]]) == {}
    assert isinstance(file, UploadedFile)


async def test_only_idle_conversations_move_to_another_backend(
    relay: Relay, parked: Parked, store: Store
) -> None:
    await relay.deliver(event("c-idle", "done"))
    await parked.deliver(event("c-busy", "waiting"))

    moved, busy = await store.move_conversations("assistants", None)
    assert (moved, busy) == (["c-idle"], 1)
    # The moved conversation starts a new thread on its new backend.
    await relay.deliver(event("c-idle", "and now?"))
    replies = await relay.replies()
    assert [r["backend"] for r in replies] == ["responses", "assistants"]
    assert replies[0]["thread_id"] != replies[1]["thread_id"]
