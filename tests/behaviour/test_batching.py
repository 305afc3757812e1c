"""Batching: what waits is answered together, oldest first, up to the size limit, and only
with neighbours that share what a run applies to all of its messages (the batch key)."""

from __future__ import annotations

from typing import Any

from tests.behaviour.conftest import BATCH_MAX_EVENTS
from tests.behaviour.relay import Parked, Relay, event


async def answer_waiting(
    parked: Parked, relay: Relay, conversation_id: str, events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Delivers `events` while another worker sits on the conversation, then lets `relay`
    answer everything at once; returns the replies in the order they were recorded."""
    for doc in events:
        await parked.deliver(doc)
    await parked.leave()
    assert await relay.ownership.own_and_process(conversation_id) is True
    return await relay.replies()


def ids(*docs: dict[str, Any]) -> list[str]:
    return [doc["event_id"] for doc in docs]


async def test_events_that_wait_are_answered_together_by_one_run(
    parked: Parked, relay: Relay
) -> None:
    docs = [event("c-batch", f"message {n}") for n in range(3)]
    [reply] = await answer_waiting(parked, relay, "c-batch", docs)

    assert reply["in_reply_to"] == ids(*docs)
    assert reply["text"] == "Echo: message 0 | message 1 | message 2"


async def test_a_batch_lists_events_in_the_order_they_were_written(
    parked: Parked, relay: Relay
) -> None:
    third = event("c-order", "third", occurred_at="2026-12-01T10:00:03Z")
    first = event("c-order", "first", occurred_at="2026-12-01T10:00:01Z")
    second = event("c-order", "second", occurred_at="2026-12-01T10:00:02Z")
    [reply] = await answer_waiting(parked, relay, "c-order", [third, first, second])

    assert reply["in_reply_to"] == ids(first, second, third)
    assert reply["text"] == "Echo: first | second | third"


async def test_the_size_limit_cuts_a_batch(parked: Parked, relay: Relay) -> None:
    docs = [event("c-limit", f"m{n}") for n in range(BATCH_MAX_EVENTS + 1)]
    first, second = await answer_waiting(parked, relay, "c-limit", docs)

    assert first["in_reply_to"] == ids(*docs[:BATCH_MAX_EVENTS])
    assert second["in_reply_to"] == ids(docs[BATCH_MAX_EVENTS])


async def test_only_events_with_equal_batch_keys_coalesce(parked: Parked, relay: Relay) -> None:
    a1 = event("c-keys", "a1", metadata={"ticket": "A"})
    a2 = event("c-keys", "a2", metadata={"ticket": "A"})
    b = event("c-keys", "b", metadata={"ticket": "B"})
    a3 = event("c-keys", "a3", metadata={"ticket": "A"})
    replies = await answer_waiting(parked, relay, "c-keys", [a1, a2, b, a3])

    # The batch ends at the first event whose key differs from the oldest one's: a3 is not
    # pulled forward past b, which keeps the customer's order.
    assert [r["in_reply_to"] for r in replies] == [ids(a1, a2), ids(b), ids(a3)]


async def test_an_event_without_metadata_does_not_join_one_with_it(
    parked: Parked, relay: Relay
) -> None:
    plain = event("c-plain", "plain")
    tagged = event("c-plain", "tagged", metadata={"ticket": "T"})
    replies = await answer_waiting(parked, relay, "c-plain", [plain, tagged])

    assert [r["in_reply_to"] for r in replies] == [ids(plain), ids(tagged)]


async def test_an_open_batch_is_resumed_as_it_was_left(parked: Parked, relay: Relay) -> None:
    docs = [event("c-resume", f"r{n}") for n in range(2)]
    for doc in docs:
        await parked.deliver(doc)
    [lease] = parked.leases
    opened = await relay.store.next_batch(lease)
    assert opened is not None
    assert opened.fresh

    # A later look (a new owner, a retry) finds the same batch, no longer fresh.
    again = await relay.store.next_batch(lease)
    assert again is not None
    assert again.batch == opened.batch
    assert not again.fresh
    assert [e.event_id for e in again.events] == ids(*docs)
