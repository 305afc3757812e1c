"""The helpdesk's control events on both stores: who answers, what is withheld, what is gone."""

from __future__ import annotations

import base64
import uuid

import asyncpg

from standin import StandIn
from tests.behaviour.relay import Parked, Relay, control, event
from tests.support import user_texts
from worker.relay.intake import Settlement
from worker.store.memory import MemoryStore
from worker.store.ports import Store

SLOW = "[[delay_ms:3000]]"
HANDOFF = "[[outcome:requires_action:handoff_to_human]]"


async def test_while_a_human_has_it_messages_join_the_thread_unanswered(
    relay: Relay, standin: StandIn, backend: str
) -> None:
    c = "c-human"
    await relay.deliver(event(c, "hello"))
    [first] = await relay.replies()
    await relay.deliver(control(c, "takeover"))
    await relay.deliver(event(c, "is anyone there?"))

    assert await relay.replies() == []
    assert len(standin.run_records()) == 1
    assert user_texts(standin, backend, first["thread_id"]) == ["hello", "is anyone there?"]

    await relay.deliver(control(c, "release"))
    later = event(c, "bot again")
    await relay.deliver(later)
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [later["event_id"]]
    assert reply["status"] == "completed"


async def test_a_waiting_takeover_withholds_the_reply_of_the_batch_before_it(
    parked: Parked, relay: Relay, standin: StandIn
) -> None:
    c = "c-withheld"
    await parked.deliver(event(c, "quick question"))
    await parked.deliver(control(c, "takeover"))
    await parked.leave()
    await relay.ownership.own_and_process(c)

    assert await relay.replies() == []
    assert len(standin.run_records()) == 1  # it ran, or began to; nobody hears of it


async def test_a_waiting_cancel_stops_the_run_and_the_reply_says_cancelled(
    parked: Parked, relay: Relay, standin: StandIn
) -> None:
    c = "c-stop"
    slow = event(c, f"long {SLOW}")
    await parked.deliver(slow)
    await parked.deliver(control(c, "cancel"))
    await parked.leave()
    await relay.ownership.own_and_process(c)

    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [slow["event_id"]]
    assert reply["status"] == "cancelled"
    assert reply["error"]["code"] == "cancelled"
    assert [r["status"] for r in standin.run_records()] == ["cancelled"]


async def test_close_forgets_the_thread_and_deletes_the_uploads(
    relay: Relay, standin: StandIn, backend: str
) -> None:
    c = "c-gone"
    note = {"filename": "a.txt", "content_base64": base64.b64encode(b"a").decode()}
    await relay.deliver(event(c, "with a file", attachments=[note]))
    [first] = await relay.replies()
    await relay.deliver(control(c, "close"))

    threads = standin.state.conversations if backend == "responses" else standin.state.threads
    assert first["thread_id"] not in threads
    assert [f["deleted"] for f in standin.files()] == [True]
    assert await relay.store.conversation_files(c) == []
    await relay.deliver(event(c, "again"))
    [second] = await relay.replies()
    assert second["thread_id"] != first["thread_id"]


async def test_a_control_event_for_a_conversation_never_seen_is_not_stored(
    relay: Relay, standin: StandIn
) -> None:
    assert await relay.deliver(control("c-unknown", "takeover")) is Settlement.ACK
    assert await relay.store.sweepable_conversations(10) == []
    hello = event("c-unknown", "hello")
    await relay.deliver(hello)
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [hello["event_id"]]  # answered: the takeover took nothing


async def test_an_interrupt_waits_only_while_its_event_is_pending(
    relay: Relay, parked: Parked
) -> None:
    c = "c-interrupt"
    await parked.deliver(event(c, "hi"))
    assert await relay.store.pending_interrupt(c) is None
    await parked.deliver(control(c, "update_metadata", metadata={"k": "v"}))
    assert await relay.store.pending_interrupt(c) is None  # it does not stop a run
    await parked.deliver(control(c, "takeover"))
    assert str(await relay.store.pending_interrupt(c)) == "takeover"
    await parked.leave()
    await relay.ownership.own_and_process(c)
    assert await relay.store.pending_interrupt(c) is None


async def store_text(store: Store, dsn: str | None) -> str:
    """Everything the store holds, as text to search: the memory store's state as repr shows
    it, or every row of every table in the test's database (bytea decoded, not hex)."""
    if isinstance(store, MemoryStore):
        return repr(vars(store))
    assert dsn is not None
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        assert {"inbound_events", "outbox", "attachments"} <= {t["table_name"] for t in tables}
        values = []
        for table in tables:
            for row in await conn.fetch(f'SELECT * FROM "{table["table_name"]}"'):
                for value in row.values():
                    is_bytes = isinstance(value, bytes)
                    values.append(value.decode("utf-8", "replace") if is_bytes else str(value))
        return "\n".join(values)
    finally:
        await conn.close()


async def test_erase_leaves_none_of_the_conversations_content_in_the_store(
    relay: Relay, standin: StandIn, store_dsn: str | None, backend: str
) -> None:
    c = "c-erase"
    canary = {
        where: f"canary-{where}-{uuid.uuid4().hex[:12]}"
        for where in ("text", "file", "metadata", "arguments")
    }
    content = f"the file says {uuid.uuid4().hex}".encode()
    note = {
        "filename": f"{canary['file']}.txt",
        "content_base64": base64.b64encode(content).decode(),
    }
    # The file's bytes reach the store only inside the event, as its base64.
    traces = [*canary.values(), note["content_base64"]]
    # The model's call carries a canary in its arguments, kept with the batch's tool calls.
    call = f'[[call:current_time {{"note": "{canary["arguments"]}"}}]]'
    secret = event(
        c,
        f"my secret {canary['text']} {call}",
        attachments=[note],
        metadata={"note": canary["metadata"]},
    )
    await relay.deliver(secret)
    before = await store_text(relay.store, store_dsn)
    [first] = await relay.replies()
    assert canary["text"] in first["text"]
    # The dump sees each of them before the erase, so not finding them after means something.
    assert [t for t in traces if t not in before] == []

    assert await relay.deliver(control(c, "erase")) is Settlement.ACK
    assert await relay.replies() == []
    erased = await store_text(relay.store, store_dsn)
    assert [t for t in traces if t in erased] == []
    assert first["thread_id"] not in erased  # the thread is forgotten as well as deleted
    threads = standin.state.conversations if backend == "responses" else standin.state.threads
    assert first["thread_id"] not in threads
    assert [f["deleted"] for f in standin.files()] == [True]

    # What duplicate detection needs stays: a redelivery is recognised, and not answered again.
    runs = len(standin.run_records())
    assert await relay.deliver(secret) is Settlement.ACK
    duplicates = relay.metrics.registry.get_sample_value(
        "assistant_worker_events_received_total", {"outcome": "already_settled"}
    )
    assert duplicates == 1
    assert await relay.replies() == []
    assert len(standin.run_records()) == runs
    # ...and it brings none of its content back into the store.
    assert [t for t in traces if t in await store_text(relay.store, store_dsn)] == []

    later = event(c, "a new question")
    await relay.deliver(later)
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [later["event_id"]]
    assert reply["status"] == "completed"
    assert reply["thread_id"] != first["thread_id"]
    assert user_texts(standin, backend, reply["thread_id"]) == ["a new question"]


async def test_erase_forgets_what_the_model_said_when_it_handed_off(
    relay: Relay, store_dsn: str | None
) -> None:
    c = "c-erase-handoff"
    canary = f"canary-{uuid.uuid4().hex[:12]}"
    # The stand-in fills the tool's reason and summary with the customer's text.
    await relay.deliver(event(c, f"{canary}, a person please {HANDOFF}"))
    kinds = [m.routing_key for m in await relay.publish()]
    topology = relay.settings.topology
    assert kinds == [topology.reply_routing_key, topology.handoff_routing_key]
    assert canary in await store_text(relay.store, store_dsn)

    await relay.deliver(control(c, "erase"))
    assert canary not in await store_text(relay.store, store_dsn)


async def test_erase_forgets_the_conversations_dead_letters_in_the_outbox(
    relay: Relay, store_dsn: str | None
) -> None:
    c = "c-erase-dead"
    canary = f"canary-{uuid.uuid4().hex[:12]}"
    await relay.deliver(event(c, "hello"))
    await relay.replies()
    await relay.deliver(event(c, f"{canary}, see this", attachments=[{"file_id": "file_nope"}]))
    [dead] = await relay.dead_letters()
    assert dead.headers["x-aw-reason"] == "openai_rejected"
    assert canary in await store_text(relay.store, store_dsn)

    await relay.deliver(control(c, "erase"))
    assert canary not in await store_text(relay.store, store_dsn)
