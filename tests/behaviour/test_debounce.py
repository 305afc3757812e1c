"""Debounce: a quiet conversation's first message waits for its companions (AW_DEBOUNCE_MS),
but never longer than AW_DEBOUNCE_MAX_MS after the first, and a control event never waits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import openai

from standin import StandIn
from tests.behaviour.conftest import BATCH_MAX_EVENTS
from tests.behaviour.relay import Relay, control, event
from tests.support import until
from worker.events import rfc3339
from worker.settings import Settings
from worker.store.ports import Store


def debouncing(settings: Settings, store: Store, client: openai.AsyncOpenAI, **ms: int) -> Relay:
    return Relay(settings.model_copy(update=ms), store, client)


async def deliver_all(relay: Relay, docs: list[dict[str, Any]], gap_s: float = 0.0) -> None:
    """Delivers each doc as the consumer would: in a task of its own, so the delivery that
    took the conversation (and waits out the debounce in it) holds up none of the others."""
    tasks = []
    for doc in docs:
        tasks.append(asyncio.create_task(relay.deliver(doc)))
        await asyncio.sleep(gap_s or 0.01)  # in the order given
    await asyncio.gather(*tasks)


async def answered(relay: Relay, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every reply until all of `docs` are answered."""
    replies: list[dict[str, Any]] = []
    wanted = {doc["event_id"] for doc in docs}

    async def all_in() -> bool:
        replies.extend(await relay.replies())
        return wanted <= {e for r in replies for e in r["in_reply_to"]}

    deadline = time.monotonic() + 15
    while not await all_in():
        assert time.monotonic() < deadline, f"{len(replies)} replies, not all answered in 15 s"
        await asyncio.sleep(0.05)
    return replies


async def test_a_burst_into_a_quiet_conversation_is_answered_by_one_run(
    settings: Settings, store: Store, client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    relay = debouncing(settings, store, client, debounce_ms=1000, debounce_max_ms=5000)
    # As many as one batch holds: the store's size limit cuts batches, not the debounce.
    # Deliveries 10 ms apart may be stored in either order (README: give `occurred_at`).
    start = datetime.now(UTC).replace(microsecond=0)
    docs = [
        event("c-burst", f"part {n}", occurred_at=rfc3339(start + timedelta(seconds=n)))
        for n in range(BATCH_MAX_EVENTS)
    ]
    await deliver_all(relay, docs)

    [reply] = await answered(relay, docs)
    assert reply["in_reply_to"] == [doc["event_id"] for doc in docs]
    assert len(standin.run_records()) == 1


async def test_a_conversation_that_keeps_talking_is_answered_by_the_longest_wait(
    settings: Settings, store: Store, client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    # Messages every 100 ms never leave 400 ms of quiet; the 500 ms bound starts a run anyway.
    relay = debouncing(settings, store, client, debounce_ms=400, debounce_max_ms=500)
    docs = [event("c-chatty", f"part {n}") for n in range(12)]
    await deliver_all(relay, docs, gap_s=0.1)

    replies = await answered(relay, docs)
    assert len(replies) > 1
    assert replies[0]["in_reply_to"] != [doc["event_id"] for doc in docs]


async def test_without_debounce_the_first_message_runs_alone(
    settings: Settings, store: Store, client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    # The control for the tests above: the same burst, no waiting, more than one run.
    relay = debouncing(settings, store, client, debounce_ms=0)
    docs = [event("c-eager", f"part {n}") for n in range(BATCH_MAX_EVENTS)]
    await deliver_all(relay, docs, gap_s=0.3)

    replies = await answered(relay, docs)
    assert len(replies) > 1


async def test_a_control_event_is_not_held_back_by_the_debounce(
    settings: Settings, store: Store, client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    relay = debouncing(settings, store, client, debounce_ms=0)
    first = event("c-steered", "hello")
    await relay.deliver(first)
    [reply] = await answered(relay, [first])
    slow = debouncing(settings, store, client, debounce_ms=30_000, debounce_max_ms=30_000)
    await slow.deliver(control("c-steered", "update_metadata", metadata={"tier": "gold"}))
    # Applied long before the 30 s a message would wait.
    conversation = standin.state.conversations[reply["thread_id"]]
    await until(lambda: conversation.metadata.get("tier") == "gold", timeout_s=5)
