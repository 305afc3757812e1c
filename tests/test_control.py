"""conversation_control.v1 on both backends: what each action does at the API, in the store and
to the replies. A real worker, RabbitMQ and Postgres; the stand-in's state read directly."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import openai
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import RunningWorker
from tests.support import (
    API_KEY,
    drain,
    publish,
    publish_raw,
    replies_for,
    until,
    user_texts,
    wait_for_dead_letters,
)
from worker.events import validator
from worker.ops.helpdesk import publish_control
from worker.relay.tools import handoff_declaration
from worker.settings import Topology

Json = dict[str, Any]

# Long enough for a control event to arrive while the run is going.
SLOW = "[[delay_ms:4000]]"


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def control(
    channel: AbstractChannel, topology: Topology, conversation_id: str, action: str, **more: Any
) -> Json:
    event = {
        "event_id": f"ctl-{uuid.uuid4().hex[:12]}",
        "conversation_id": conversation_id,
        "action": action,
        **more,
    }
    await publish_control(channel, topology, event)
    return event


async def settled(
    db: asyncpg.Connection, event_id: str, timeout_s: float = 10, *, replays: int = 0
) -> str:
    """Waits until the worker has settled the event after at least `replays` replays; its
    final status. (A replayed event stays `dead_lettered` until intake reopens it and counts the
    replay, so waiting for a settled status alone would return before the replay was taken in.)
    """
    deadline = time.monotonic() + timeout_s
    while True:
        row = await db.fetchrow(
            "SELECT status::text, replay_count FROM inbound_events WHERE event_id = $1", event_id
        )
        if (
            row is not None
            and row["replay_count"] >= replays
            and row["status"] in ("answered", "dead_lettered")
        ):
            return str(row["status"])
        assert time.monotonic() < deadline, (
            f"{event_id} not settled after {replays} replays in {timeout_s} s: {dict(row or {})}"
        )
        await asyncio.sleep(0.05)


def written(n: int) -> str:
    """An occurred_at n seconds after now: after the first event, in the order of n."""
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=n)
    return when.isoformat().replace("+00:00", "Z")


def runs(standin: StandIn) -> list[Json]:
    return standin.run_records()


def thread_exists(standin: StandIn, backend: str, thread_id: str) -> bool:
    if backend == "responses":
        return thread_id in standin.state.conversations
    return thread_id in standin.state.threads


async def no_more_replies(channel: AbstractChannel, topology: Topology) -> list[Json]:
    return [m.json() for m in await drain(channel, topology.reply_queue, quiet_s=0.3)]


async def test_takeover_mid_run_cancels_it_holds_messages_and_release_answers_again(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    c = "c-takeover"
    slow = await publish(channel, topology, conversation_id=c, text=f"help {SLOW}")
    await until(lambda: len(runs(standin)) == 1)
    # occurred_at fixes the order: intake may store events published back to back in any.
    await control(channel, topology, c, "takeover", occurred_at=written(1))
    held = await publish(
        channel, topology, conversation_id=c, text="are you there?", occurred_at=written(2)
    )
    await control(channel, topology, c, "release", occurred_at=written(3))
    after = await publish(
        channel, topology, conversation_id=c, text="thanks, bot", occurred_at=written(4)
    )

    [reply] = await replies_for(channel, topology, {after["event_id"]})
    assert reply["in_reply_to"] == [after["event_id"]]
    # The stand-in echoes the user messages since its last answer: the held one is the
    # model's context now.
    assert reply["text"].endswith("are you there? | thanks, bot")
    others = await no_more_replies(channel, topology)
    assert [r["in_reply_to"] for r in others] == []
    first, last = runs(standin)[0], runs(standin)[-1]
    assert first["status"] == "cancelled"  # stopped, not left to finish
    assert len(runs(standin)) == 2  # the held message started no run
    texts = user_texts(standin, backend, reply["thread_id"])
    # A cancelled background response leaves its input out of the Conversation.
    cancelled_input = [f"help {SLOW}"] if backend == "assistants" else []
    assert texts == [*cancelled_input, "are you there?", "thanks, bot"]
    assert last["status"] == "completed"
    assert {held["event_id"], slow["event_id"]}.isdisjoint(reply["in_reply_to"])
    assert reply["sequence"] == 1  # the withheld reply took no number


async def test_cancel_stops_the_run_and_its_events_are_told_cancelled(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    c = "c-cancel"
    slow = await publish(channel, topology, conversation_id=c, text=f"long one {SLOW}")
    await until(lambda: len(runs(standin)) == 1)
    started = time.monotonic()
    await control(channel, topology, c, "cancel")

    [reply] = await replies_for(channel, topology, {slow["event_id"]})
    assert time.monotonic() - started < 3.5  # well before the run's 4 s
    assert reply["status"] == "cancelled"
    assert reply["error"]["code"] == "cancelled"
    # Assistants runs pass through `cancelling` on their way.
    await until(lambda: runs(standin)[0]["status"] == "cancelled")
    nxt = await publish(channel, topology, conversation_id=c, text="still there?")
    [answered] = await replies_for(channel, topology, {nxt["event_id"]})
    assert answered["status"] == "completed"


async def test_close_deletes_the_thread_and_its_uploads_and_the_next_message_starts_anew(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    c = "c-close"
    note = {"filename": "note.txt", "content_base64": base64.b64encode(b"a note").decode()}
    first = await publish(channel, topology, conversation_id=c, text="see file", attachments=[note])
    [reply] = await replies_for(channel, topology, {first["event_id"]})
    assert len(standin.files()) == 1
    closing = await control(channel, topology, c, "close")
    assert await settled(db, closing["event_id"]) == "answered"

    assert not thread_exists(standin, backend, reply["thread_id"])
    assert [f["deleted"] for f in standin.files()] == [True]
    assert await db.fetchval("SELECT count(*) FROM attachments") == 0
    again = await publish(channel, topology, conversation_id=c, text="new topic")
    [fresh] = await replies_for(channel, topology, {again["event_id"]})
    assert fresh["thread_id"] != reply["thread_id"]
    assert user_texts(standin, backend, fresh["thread_id"]) == ["new topic"]


async def test_erase_leaves_none_of_the_conversations_texts_in_the_database(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    database_url: str,
    backend: str,
) -> None:
    c = "c-erase"
    canary = f"canary-{uuid.uuid4().hex}"
    note = {
        "filename": f"{canary}.txt",
        "content_base64": base64.b64encode(canary.encode()).decode(),
    }
    first = await publish(
        channel, topology, conversation_id=c, text=f"my secret {canary}", attachments=[note]
    )
    [reply] = await replies_for(channel, topology, {first["event_id"]})
    assert canary in reply["text"]
    await no_more_replies(channel, topology)
    # Published replies stay in the outbox until prune; erase must take them too. The bodies
    # are bytea, which pg_dump writes in hex: found that way before the erase.
    assert canary.encode().hex().encode() in dump(database_url)
    assert holds(dump(database_url), canary)
    erasing = await control(channel, topology, c, "erase")
    assert await settled(db, erasing["event_id"]) == "answered"

    assert not holds(dump(database_url), canary)
    assert not thread_exists(standin, backend, reply["thread_id"])
    assert [f["deleted"] for f in standin.files()] == [True]
    # What duplicate detection needs stays: a redelivery is recognised, not answered again.
    status = await db.fetchval(
        "SELECT status::text FROM inbound_events WHERE event_id = $1", first["event_id"]
    )
    assert status == "answered"
    await publish(
        channel, topology, conversation_id=c, text=f"my secret {canary}", event_id=first["event_id"]
    )
    nxt = await publish(channel, topology, conversation_id=c, text="after")
    replies = await replies_for(channel, topology, {nxt["event_id"]})
    assert [r["in_reply_to"] for r in replies] == [[nxt["event_id"]]]
    assert [r["in_reply_to"] for r in await no_more_replies(channel, topology)] == []


def holds(dumped: bytes, text: str) -> bool:
    """Whether a pg_dump holds `text`: as text, as base64 (an inline file), or either of them
    inside a bytea column, which pg_dump writes in hex."""
    plain = text.encode()
    forms = (plain, base64.b64encode(plain))
    return any(f in dumped or f.hex().encode() in dumped for f in forms)


def dump(database_url: str) -> bytes:
    done = subprocess.run(
        ["pg_dump", "--data-only", database_url], capture_output=True, timeout=30, check=True
    )
    return done.stdout


async def test_update_metadata_sets_the_threads_metadata(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    c = "c-meta"
    first = await publish(channel, topology, conversation_id=c, text="hi")
    [reply] = await replies_for(channel, topology, {first["event_id"]})
    event = await control(channel, topology, c, "update_metadata", metadata={"tier": "gold"})
    assert await settled(db, event["event_id"]) == "answered"

    if backend == "responses":
        metadata = standin.state.conversations[reply["thread_id"]].metadata
    else:
        metadata = standin.state.threads[reply["thread_id"]].metadata
    assert metadata == {"tier": "gold", "aw_conversation_id": c}


async def test_a_control_event_for_an_unknown_conversation_is_a_no_op(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
) -> None:
    event = await control(channel, topology, "c-never-seen", "takeover")
    later = await publish(channel, topology, conversation_id="c-never-seen", text="hello")
    [reply] = await replies_for(channel, topology, {later["event_id"]})

    assert reply["status"] == "completed"  # the takeover did not stick: nothing to take
    stored = await db.fetchval(
        "SELECT count(*) FROM inbound_events WHERE event_id = $1", event["event_id"]
    )
    assert stored == 0
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []


async def test_an_unknown_action_is_dead_lettered_naming_the_field(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    await control(channel, topology, "c-bad", "explode")
    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == "schema_invalid"
    assert "(at /action)" in dead.headers["x-aw-error"]
    assert "explode" not in dead.headers["x-aw-error"]


async def test_a_redelivered_takeover_is_applied_once(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
) -> None:
    c = "c-twice"
    first = await publish(channel, topology, conversation_id=c, text="hi")
    await replies_for(channel, topology, {first["event_id"]})
    takeover = await control(channel, topology, c, "takeover")
    assert await settled(db, takeover["event_id"]) == "answered"
    await control(channel, topology, c, "release")
    # The same takeover again (a redelivery): a duplicate, so the release stands.
    await publish_control(channel, topology, takeover)
    later = await publish(channel, topology, conversation_id=c, text="answered?")

    [reply] = await replies_for(channel, topology, {later["event_id"]})
    assert reply["status"] == "completed"


# --- handoff ---------------------------------------------------------------------------------


async def handoffs(channel: AbstractChannel, topology: Topology) -> list[Json]:
    return [m.json() for m in await drain(channel, topology.handoff_queue, quiet_s=0.3)]


async def test_a_run_that_fails_after_its_retries_is_handed_to_a_human(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, backend: str
) -> None:
    failing = await publish(
        channel,
        topology,
        conversation_id="c-fails",
        text="[[outcome:failed:invalid_prompt]]",
        metadata={"inbox": "billing"},
    )
    [reply] = await replies_for(channel, topology, {failing["event_id"]})
    assert reply["status"] == "failed"

    [handoff] = await handoffs(channel, topology)
    validator("assistant_handoff.v1").validate(handoff)
    assert handoff["in_reply_to"] == [failing["event_id"]]
    assert handoff["reason"] == "run_failed"
    assert handoff["detail"].startswith("failed: invalid_prompt")
    assert handoff["run_id"] == reply["run_id"]
    assert handoff["metadata"] == reply["metadata"] == {"inbox": "billing"}
    assert handoff["summary"] is None


async def test_a_dead_lettered_batch_is_handed_to_a_human(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, backend: str
) -> None:
    doomed = await publish(
        channel,
        topology,
        conversation_id="c-doomed",
        text="see",
        attachments=[{"file_id": "file_nope"}],
    )
    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == "openai_rejected"

    [handoff] = await handoffs(channel, topology)
    validator("assistant_handoff.v1").validate(handoff)
    assert handoff["in_reply_to"] == [doomed["event_id"]]
    assert handoff["reason"] == "dead_lettered"
    assert handoff["detail"].startswith("openai_rejected: ")
    assert await no_more_replies(channel, topology) == []


async def test_a_message_refused_at_intake_is_handed_off_once_with_its_ids_kept(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology, backend: str
) -> None:
    invalid = {"event_id": "e-invalid", "conversation_id": "c-refused", "text": 7}
    invalid_body = json.dumps({**invalid, "metadata": {"inbox": "sales"}}).encode()
    await publish_raw(channel, topology, invalid_body)
    await publish_raw(channel, topology, invalid_body)  # a redelivery: nothing new
    bad_file = {"filename": "a.exe", "content_base64": base64.b64encode(b"MZ").decode()}
    await publish(
        channel,
        topology,
        event_id="e-file",
        conversation_id="c-refused",
        text="see",
        attachments=[bad_file],
    )
    refused = {"e-invalid": "schema_invalid", "e-file": "attachment_invalid"}
    if backend == "responses":  # which has no assistants to name
        await publish(
            channel,
            topology,
            event_id="e-asst",
            conversation_id="c-refused",
            text="hi",
            assistant_id="asst_1",
        )
        refused["e-asst"] = "field_unsupported"
    dead = await wait_for_dead_letters(channel, topology, len(refused))

    assert {d.headers["x-aw-event-id"]: d.headers["x-aw-reason"] for d in dead} == refused
    assert {d.headers["x-aw-conversation-id"] for d in dead} == {"c-refused"}
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []
    handed = await handoffs(channel, topology)
    assert sorted(h["in_reply_to"][0] for h in handed) == sorted(refused)  # one each
    found = {h["in_reply_to"][0]: h for h in handed}
    for handoff in found.values():
        validator("assistant_handoff.v1").validate(handoff)
        assert handoff["reason"] == "dead_lettered"
        assert handoff["conversation_id"] == "c-refused"
    assert found["e-invalid"]["detail"].startswith("schema_invalid: ")
    assert found["e-invalid"]["metadata"] == {"inbox": "sales"}
    assert "7" not in found["e-invalid"]["detail"]  # fields named, values not


async def test_refused_events_that_name_no_conversation_or_steer_are_not_handed_off(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    await publish_raw(channel, topology, b"{not json")
    await publish_raw(channel, topology, json.dumps({"event_id": "e-x", "text": "hi"}).encode())
    await control(channel, topology, "c-known", "explode")  # an unknown action
    dead = await wait_for_dead_letters(channel, topology, 3)

    assert await handoffs(channel, topology) == []
    steering = [d for d in dead if d.headers.get("x-aw-conversation-id") == "c-known"]
    assert [d.headers["x-aw-reason"] for d in steering] == ["schema_invalid"]


async def test_an_answered_run_hands_nothing_off(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    fine = await publish(channel, topology, conversation_id="c-fine", text="hello")
    await replies_for(channel, topology, {fine["event_id"]})
    assert await handoffs(channel, topology) == []


async def assistant_with_handoff(standin: StandIn) -> str:
    """An assistant that declares handoff_to_human, as an operator's would (Assistants)."""
    client = openai.AsyncOpenAI(base_url=standin.base_url, api_key=API_KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the Assistants API's sunset
        assistant = await client.beta.assistants.create(
            model="gpt-4o-mini",
            tools=[handoff_declaration()],  # type: ignore[list-item]
        )
    await client.close()
    return assistant.id


async def test_the_model_hands_off_then_a_human_has_the_conversation_until_release(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    c = "c-asks"
    chosen = (
        {"assistant_id": await assistant_with_handoff(standin)} if backend == "assistants" else {}
    )
    text = "a person, please [[outcome:requires_action:handoff_to_human]]"
    asks = await publish(
        channel, topology, conversation_id=c, text=text, metadata={"inbox": "vip"}, **chosen
    )
    [reply] = await replies_for(channel, topology, {asks["event_id"]})
    # The model's answer goes out: it tells the customer a colleague takes over.
    assert (reply["status"], reply["sequence"]) == ("completed", 1)

    [handoff] = await handoffs(channel, topology)
    validator("assistant_handoff.v1").validate(handoff)
    assert handoff["reason"] == "model_requested"
    assert handoff["in_reply_to"] == [asks["event_id"]]
    assert handoff["run_id"] == reply["run_id"]
    assert handoff["metadata"] == {"inbox": "vip"}
    # The stand-in fills each string parameter the tool declares with the customer's text.
    assert handoff["detail"] == handoff["summary"] == text

    before = len(runs(standin))
    held = await publish(channel, topology, conversation_id=c, text="hello?", **chosen)
    assert await settled(db, held["event_id"]) == "answered"
    assert await no_more_replies(channel, topology) == []
    assert len(runs(standin)) == before  # held for the human: no run
    assert "hello?" in user_texts(standin, backend, reply["thread_id"])

    await control(channel, topology, c, "release")
    later = await publish(channel, topology, conversation_id=c, text="still there?", **chosen)
    [answer] = await replies_for(channel, topology, {later["event_id"]})
    assert (answer["status"], answer["sequence"]) == ("completed", 2)
    assert await handoffs(channel, topology) == []


async def test_replies_are_numbered_per_conversation_and_echo_their_metadata(
    worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    numbered: dict[str, list[int]] = {"c-one": [], "c-two": []}
    for n in range(3):
        for conversation, numbers in numbered.items():
            event = await publish(
                channel,
                topology,
                conversation_id=conversation,
                text=f"message {n}" + (" [[outcome:failed:invalid_prompt]]" if n == 1 else ""),
                metadata={"channel": conversation},
            )
            [reply] = await replies_for(channel, topology, {event["event_id"]})
            assert reply["metadata"] == {"channel": conversation}
            numbers.append(reply["sequence"])
    # A failed run's reply is a reply too: it takes the next number.
    assert numbered == {"c-one": [1, 2, 3], "c-two": [1, 2, 3]}
