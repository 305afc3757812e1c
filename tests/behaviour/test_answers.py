"""Outcomes: one reply per batch in the outbox, duplicates never answered twice, replays."""

from __future__ import annotations

import base64

from standin import StandIn
from tests.behaviour.relay import Parked, Relay, event
from worker.relay.attachments import FileKind, ModelFile
from worker.relay.intake import Settlement


async def test_an_event_gets_one_reply_in_the_outbox(relay: Relay, standin: StandIn) -> None:
    hello = event("c-one", "hello")
    assert await relay.deliver(hello) is Settlement.ACK

    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [hello["event_id"]]
    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: hello"
    assert reply["conversation_id"] == "c-one"
    assert await relay.store.outbox_backlog() == 0


async def test_the_reply_row_is_addressed_to_the_helpdesk(relay: Relay) -> None:
    await relay.deliver(event("c-addressed", "where to?"))
    [message] = await relay.publish()
    topology = relay.settings.topology

    assert message.exchange == topology.outbound_exchange
    assert message.routing_key == topology.reply_routing_key
    assert message.message_id == message.json()["event_id"]
    assert message.headers["x-aw-conversation-id"] == "c-addressed"


async def test_a_duplicate_of_an_answered_event_gets_no_second_reply(
    relay: Relay, standin: StandIn
) -> None:
    hello = event("c-dup", "hello")
    await relay.deliver(hello)
    assert len(await relay.replies()) == 1

    assert await relay.deliver(hello) is Settlement.ACK
    assert await relay.store.outbox_backlog() == 0
    assert len(standin.run_records()) == 1


async def test_a_duplicate_of_a_pending_event_is_stored_once(parked: Parked, relay: Relay) -> None:
    hello = event("c-dup-pending", "hello")
    await parked.deliver(hello)
    await relay.deliver(hello)
    await parked.leave()
    await relay.ownership.own_and_process("c-dup-pending")

    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [hello["event_id"]]
    assert reply["text"] == "Echo: hello"


async def test_a_replay_is_answered_again_only_when_forced(relay: Relay, standin: StandIn) -> None:
    hello = event("c-replay", "again?")
    await relay.deliver(hello)
    [first] = await relay.replies()

    await relay.deliver(hello, headers={"x-aw-replay-count": 1})
    assert await relay.store.outbox_backlog() == 0

    await relay.deliver(hello, headers={"x-aw-replay-count": 2, "x-aw-force": "true"})
    [forced] = await relay.replies()
    assert forced["in_reply_to"] == [hello["event_id"]]
    assert forced["event_id"] != first["event_id"]
    assert forced["run_id"] != first["run_id"]

    # A redelivery of that same forced replay is a duplicate again.
    await relay.deliver(hello, headers={"x-aw-replay-count": 2, "x-aw-force": "true"})
    assert await relay.store.outbox_backlog() == 0
    assert len(standin.run_records()) == 2


async def test_a_dead_lettered_event_replayed_is_answered(relay: Relay, standin: StandIn) -> None:
    standin.add_faults(
        [{"kind": "status", "status": 400, "method": "POST", "path": r"/responses$", "times": 1}]
    )
    hello = event("c-fixed", "fix me")
    await relay.deliver(hello)
    [dead] = await relay.dead_letters()
    assert dead.routing_key == relay.settings.topology.inbound_routing_key
    assert dead.exchange == relay.settings.topology.dead_letter_exchange
    assert dead.headers["x-aw-reason"] == "openai_rejected"
    assert dead.json() == hello

    await relay.deliver(hello, headers={"x-aw-replay-count": 1})
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [hello["event_id"]]
    assert reply["status"] == "completed"


async def test_an_invalid_delivery_is_dead_lettered_with_its_bytes(relay: Relay) -> None:
    assert await relay.deliver(b"{not json", message_id="m-broken") is Settlement.ACK
    [dead] = await relay.dead_letters()

    assert dead.headers["x-aw-reason"] == "malformed_json"
    assert dead.body == b"{not json"
    assert dead.message_id == "m-broken"


async def test_an_assistant_id_on_a_responses_conversation_is_refused(relay: Relay) -> None:
    named = event("c-refused", "hi", assistant_id="asst_123")
    await relay.deliver(named)
    [dead] = await relay.dead_letters()

    assert dead.headers["x-aw-reason"] == "field_unsupported"
    assert dead.headers["x-aw-event-id"] == named["event_id"]
    # Not stored: the conversation's next event is answered alone.
    plain = event("c-refused", "and now?")
    await relay.deliver(plain)
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [plain["event_id"]]


async def test_an_inline_attachment_is_uploaded_and_recorded_once(
    relay: Relay, standin: StandIn
) -> None:
    note = {"filename": "note.txt", "content_base64": base64.b64encode(b"order 1042").decode()}
    with_file = event("c-file", "see attached", attachments=[note])
    await relay.deliver(with_file)
    [reply] = await relay.replies()

    assert reply["text"] == "Echo: see attached [files: note.txt]"
    [uploaded] = standin.files()
    recorded = await relay.store.batch_files([with_file["event_id"]])
    assert recorded == {
        (with_file["event_id"], 0): ModelFile(uploaded["id"], "note.txt", FileKind.DOCUMENT)
    }
