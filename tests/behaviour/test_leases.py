"""Leases and fencing: one owner per conversation, and a stale owner can write nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from standin import StandIn
from tests.behaviour.relay import Parked, Relay, event
from worker.errors import LeaseLost
from worker.relay.attachments import FileKind, ModelFile
from worker.settings import BackendName
from worker.store.ports import Store
from worker.store.records import EventStatus, IncomingEvent, IntakeResult, Lease


def incoming(conversation_id: str) -> IncomingEvent:
    """An event as intake stores it, for tests that drive the store directly."""
    doc = event(conversation_id, "stored directly")
    return IncomingEvent(
        event_id=doc["event_id"],
        conversation_id=conversation_id,
        body=json.dumps(doc).encode(),
        headers={},
        routing_key="user_message.v1",
        replay_count=0,
        forced=False,
        occurred_at=None,
    )


async def take(store: Store, conversation_id: str, owner: str, ttl_s: float = 5.0) -> Lease:
    """Stores an event of the conversation and takes its lease, as intake does."""
    taken = await store.intake(
        incoming(conversation_id),
        backend=BackendName.RESPONSES,
        assistant_id=None,
        profile=None,
        owner=owner,
        lease_ttl_s=ttl_s,
    )
    assert taken.result is IntakeResult.NEW
    assert taken.lease is not None
    return taken.lease


async def test_a_second_owner_is_refused_while_the_lease_lives(store: Store) -> None:
    await take(store, "c-owned", "first")

    assert await store.acquire_lease("c-owned", "second", 5.0) is None
    later = await store.intake(
        incoming("c-owned"),
        backend=BackendName.RESPONSES,
        assistant_id=None,
        profile=None,
        owner="second",
        lease_ttl_s=5.0,
    )
    # Stored, for the owner to answer; no lease for the second worker.
    assert later.result is IntakeResult.NEW
    assert later.lease is None


async def test_a_stale_token_cannot_write(store: Store) -> None:
    stale = await take(store, "c-fenced", "first")
    await store.hand_back_lease(stale)
    fresh = await store.acquire_lease("c-fenced", "second", 5.0)
    assert fresh is not None

    with pytest.raises(LeaseLost):
        await store.next_batch(stale)
    with pytest.raises(LeaseLost):
        await store.set_thread(stale, "thread-stale")
    found = await store.next_batch(fresh)
    assert found is not None
    batch_id = found.batch.batch_id
    with pytest.raises(LeaseLost):
        await store.record_run_started(stale, batch_id, "run-stale", 1)
    with pytest.raises(LeaseLost):
        await store.record_batch_failure(stale, batch_id)
    file = ModelFile("file-stale", "a.txt", FileKind.DOCUMENT)
    with pytest.raises(LeaseLost):
        await store.record_file(stale, found.batch.event_ids[0], 0, file, uploaded=True)
    with pytest.raises(LeaseLost):
        await store.finish_batch(stale, batch_id, event_status=EventStatus.ANSWERED, outbox=[])

    # Nothing the stale owner tried took effect: the batch is as the new owner opened it.
    again = await store.next_batch(fresh)
    assert again is not None
    assert again.batch == found.batch
    assert again.conversation.thread_id is None
    assert await store.batch_files(found.batch.event_ids) == {}


async def test_an_expired_lease_is_taken_over_and_no_longer_renewed(store: Store) -> None:
    first = await take(store, "c-expiring", "first", ttl_s=0.2)
    assert await store.renew_leases([first], 0.2) == {first.token}
    await asyncio.sleep(0.3)

    second = await store.acquire_lease("c-expiring", "second", 5.0)
    assert second is not None
    assert await store.renew_leases([first], 5.0) == set()
    with pytest.raises(LeaseLost):
        await store.next_batch(first)


async def test_a_renewed_lease_outlives_its_first_ttl(store: Store) -> None:
    lease = await take(store, "c-renewed", "first", ttl_s=0.3)
    await asyncio.sleep(0.2)
    assert await store.renew_leases([lease], 5.0) == {lease.token}
    await asyncio.sleep(0.2)
    assert await store.acquire_lease("c-renewed", "second", 5.0) is None


async def test_an_answered_conversation_is_given_up(relay: Relay, store: Store) -> None:
    await relay.deliver(event("c-done", "hi"))
    assert len(await relay.replies()) == 1

    # The owner released it when nothing was left: anyone may take it, nobody needs to.
    assert await store.sweepable_conversations(10) == []
    assert await store.acquire_lease("c-done", "someone", 5.0) is not None


async def test_work_left_by_an_owner_is_swept_and_answered_by_another(
    parked: Parked, relay: Relay, store: Store
) -> None:
    waiting = event("c-orphan", "anyone?")
    await parked.deliver(waiting)
    # Owned, though nobody works on it: not for the sweeper, not for another worker.
    assert await store.sweepable_conversations(10) == []
    assert await relay.ownership.own_and_process("c-orphan") is False
    assert await relay.replies() == []

    await parked.leave()
    assert await store.sweepable_conversations(10) == ["c-orphan"]
    assert await relay.ownership.own_and_process("c-orphan") is True
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [waiting["event_id"]]
    assert await store.sweepable_conversations(10) == []


async def test_an_owner_that_lost_its_lease_stops_and_the_new_owner_answers(
    relay: Relay, other: Relay, store: Store, standin: StandIn
) -> None:
    lease = await take(store, "c-taken-over", relay.settings.worker_name)
    await store.hand_back_lease(lease)
    assert await other.ownership.own_and_process("c-taken-over") is True
    [reply] = await other.replies()
    assert reply["status"] == "completed"

    # The old owner's loop ends at its first write (lease_lost), answering nothing more.
    await relay.processor.process(lease)
    assert await relay.replies() == []
    assert len(standin.run_records()) == 1
