"""The helpdesk's control events on both stores: who answers, what is withheld, what is gone."""

from __future__ import annotations

import base64

from standin import StandIn
from tests.behaviour.relay import Parked, Relay, control, event
from tests.support import user_texts
from worker.relay.intake import Settlement

SLOW = "[[delay_ms:3000]]"


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
