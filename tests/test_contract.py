"""user_message.v1 field by field, on both backends: what each field does at the API and in
the reply. Real RabbitMQ and Postgres; the stand-in's state is read through its accessors."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import openai
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import RunningWorker
from tests.support import API_KEY, drain, publish, replies_for, until, wait_for_dead_letters
from worker.settings import Settings, Topology

Json = dict[str, Any]

# How long the run holding a conversation takes while later events queue up behind it.
HOLD = "[[delay_ms:1500]]"


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every field is checked on both backends."""
    return str(request.param)


def _png_1x1() -> bytes:
    """A real, minimal PNG: one red pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = _png_1x1()
NOTE = "Order 1234: two boxes, one damaged.\nZoë\n".encode()


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def sdk(standin: StandIn) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=standin.base_url, api_key=API_KEY, max_retries=0)


async def hold(
    channel: AbstractChannel, topology: Topology, standin: StandIn, conversation_id: str
) -> Json:
    """Publishes a slow first event and waits until its run holds the conversation."""
    runs_before = len(standin.run_records())
    event = await publish(
        channel, topology, conversation_id=conversation_id, text=f"hold on {HOLD}"
    )
    await until(lambda: len(standin.run_records()) > runs_before)
    return event


def written(n: int) -> str:
    """An occurred_at, n seconds into the last minute: fixes the order of a batch's events.

    Without it a batch's order is the order intake stored the events in, which events
    published back to back do not reliably keep (see test_occurred_at_absent_...).
    """
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    return (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")


def by_events(replies: list[Json]) -> dict[tuple[str, ...], Json]:
    return {tuple(r["in_reply_to"]): r for r in replies}


def run_messages(standin: StandIn, backend: str, reply: Json) -> list[Json]:
    """The user messages the reply's run (or response) added, as the API stores them."""
    if backend == "responses":
        items = standin.response_input_items(reply["run_id"])
        return [i for i in items if i.get("type") == "message" and i.get("role") == "user"]
    batch_id = standin.state.runs[reply["run_id"]].metadata["aw_batch_id"]
    return [
        m
        for m in standin.thread_messages(reply["thread_id"])
        if m["role"] == "user" and m["metadata"].get("aw_batch_id") == batch_id
    ]


def text_of(message: Json) -> str:
    """The text of a user message: an Assistants message or a Responses input item."""
    content = message["content"]
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part["type"] == "text":
            texts.append(part["text"]["value"])
        elif part["type"] == "input_text":
            texts.append(part["text"])
    return "".join(texts)


def file_parts(message: Json) -> list[tuple[str, str]]:
    """(part type, file ID) of every file or image part of a message's content."""
    content = message["content"]
    if isinstance(content, str):
        return []
    found = []
    for part in content:
        if part["type"] in ("input_file", "input_image"):
            found.append((part["type"], part["file_id"]))
        elif part["type"] == "image_file":
            found.append(("image_file", part["image_file"]["file_id"]))
    return found


def answering_metadata(standin: StandIn, backend: str, reply: Json) -> dict[str, str]:
    """Where event metadata lands: the response (Responses), the user message (Assistants)."""
    if backend == "responses":
        return dict(standin.response(reply["run_id"])["metadata"])
    [message] = run_messages(standin, backend, reply)
    return dict(message["metadata"])


async def batch_of(db: asyncpg.Connection, event_id: str) -> str:
    return str(
        await db.fetchval("SELECT batch_id FROM inbound_events WHERE event_id = $1", event_id)
    )


# --- text ------------------------------------------------------------------------------------


async def test_text_is_the_user_message_and_the_reply_echoes_it(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    text = "Where is my parcel?\nOrder #1234 — Zoë 🙂 <b>not html</b>"
    event = await publish(channel, topology, conversation_id="c-text", text=text)
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["text"] == f"Echo: {text}"
    [message] = run_messages(standin, backend, reply)
    assert text_of(message) == text
    assert file_parts(message) == []
    if backend == "responses":
        users = [
            i
            for i in standin.conversation_items(reply["thread_id"])
            if i["type"] == "message" and i["role"] == "user"
        ]
        assert [text_of(i) for i in users] == [text]
    else:
        thread = standin.thread_messages(reply["thread_id"])
        assert [(m["role"], text_of(m)) for m in thread] == [
            ("user", text),
            ("assistant", reply["text"]),
        ]


# --- attachments -----------------------------------------------------------------------------

# Files referenced by ID: (filename, content, the part Responses sends it as).
REFERENCED = {
    "document": ("manual.pdf", b"%PDF-1.4\n% a tiny manual\n", "input_file"),
    "image": ("photo.png", PNG, "input_image"),
}


@pytest.mark.parametrize("kind", ["document", "image"])
async def test_an_attachment_by_file_id_is_sent_with_the_message(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
    kind: str,
) -> None:
    filename, content, part_type = REFERENCED[kind]
    purpose: Any = "user_data"
    if backend == "assistants":
        purpose = "vision" if kind == "image" else "assistants"
    async with sdk(standin) as client:
        uploaded = await client.files.create(file=(filename, content), purpose=purpose)

    event = await publish(
        channel,
        topology,
        conversation_id="c-file-id",
        text="What does this show?",
        attachments=[{"file_id": uploaded.id}],
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["status"] == "completed"
    assert reply["text"] == f"Echo: What does this show? [files: {filename}]"
    [message] = run_messages(standin, backend, reply)
    assert text_of(message) == "What does this show?"
    if backend == "responses":
        assert file_parts(message) == [(part_type, uploaded.id)]
    elif kind == "image":
        assert file_parts(message) == [("image_file", uploaded.id)]
        assert message["attachments"] == []
    else:
        assert file_parts(message) == []
        assert message["attachments"] == [
            {"file_id": uploaded.id, "tools": [{"type": "file_search"}]}
        ]
    # Referenced, not uploaded again.
    assert [f["id"] for f in standin.files()] == [uploaded.id]
    rows = await db.fetch(
        "SELECT event_id, position, file_id, filename, kind, uploaded FROM attachments"
    )
    assert [tuple(r) for r in rows] == [(event["event_id"], 0, uploaded.id, filename, kind, False)]


async def test_inline_attachments_are_uploaded_once_recorded_and_sent(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    event = await publish(
        channel,
        topology,
        conversation_id="c-inline",
        text="see attached",
        attachments=[
            {"filename": "note.txt", "content_base64": b64(NOTE)},
            {"filename": "pixel.png", "content_base64": b64(PNG)},
        ],
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["status"] == "completed"

    files = standin.files()
    assert [(f["filename"], f["bytes"], f["deleted"]) for f in files] == [
        ("note.txt", len(NOTE), False),
        ("pixel.png", len(PNG), False),
    ]
    note, pixel = files
    assert standin.file_content(note["id"]) == NOTE
    assert standin.file_content(pixel["id"]) == PNG
    if backend == "responses":
        assert (note["purpose"], pixel["purpose"]) == ("user_data", "user_data")
    else:
        assert (note["purpose"], pixel["purpose"]) == ("assistants", "vision")
    uploads = [e for e in standin.journal if e["method"] == "POST" and e["path"] == "/v1/files"]
    assert len(uploads) == 2

    rows = await db.fetch(
        "SELECT event_id, position, file_id, filename, kind, uploaded FROM attachments"
        " ORDER BY position"
    )
    assert [tuple(r) for r in rows] == [
        (event["event_id"], 0, note["id"], "note.txt", "document", True),
        (event["event_id"], 1, pixel["id"], "pixel.png", "image", True),
    ]

    [message] = run_messages(standin, backend, reply)
    assert text_of(message) == "see attached"
    if backend == "responses":
        assert file_parts(message) == [("input_file", note["id"]), ("input_image", pixel["id"])]
        assert reply["text"] == "Echo: see attached [files: note.txt, pixel.png]"
    else:
        assert file_parts(message) == [("image_file", pixel["id"])]
        assert message["attachments"] == [
            {"file_id": note["id"], "tools": [{"type": "file_search"}]}
        ]
        # The stand-in names images first, then attached files.
        assert reply["text"] == "Echo: see attached [files: pixel.png, note.txt]"


async def test_an_inline_upload_whose_answer_was_lost_is_adopted_not_repeated(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    # The file is stored, then the connection drops before the answer is sent.
    standin.add_faults([{"kind": "drop_after", "method": "POST", "path": r"/files$", "times": 1}])
    event = await publish(
        channel,
        topology,
        conversation_id="c-lost-upload",
        text="my invoice",
        attachments=[{"filename": "invoice.txt", "content_base64": b64(NOTE)}],
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)

    assert [e["fault"] for e in standin.journal if e["fault"]] == ["drop_after"]
    [stored] = standin.files()
    assert standin.file_content(stored["id"]) == NOTE
    assert reply["text"] == "Echo: my invoice [files: invoice.txt]"
    file_id = await db.fetchval(
        "SELECT file_id FROM attachments WHERE event_id = $1", event["event_id"]
    )
    assert file_id == stored["id"]
    [message] = run_messages(standin, backend, reply)
    if backend == "responses":
        assert file_parts(message) == [("input_file", stored["id"])]
    else:
        assert [a["file_id"] for a in message["attachments"]] == [stored["id"]]


async def test_each_message_of_a_coalesced_batch_carries_its_own_attachments(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    c = "c-batch-files"
    first = await hold(channel, topology, standin, c)
    # Both at position 0, with the same name: only the event tells them apart.
    one = await publish(
        channel,
        topology,
        conversation_id=c,
        text="b",
        attachments=[{"filename": "scan.txt", "content_base64": b64(b"first scan")}],
        occurred_at=written(1),
    )
    two = await publish(
        channel,
        topology,
        conversation_id=c,
        text="c",
        attachments=[{"filename": "scan.txt", "content_base64": b64(b"second scan")}],
        occurred_at=written(2),
    )
    ids = {first["event_id"], one["event_id"], two["event_id"]}
    answered = by_events(await replies_for(channel, topology, ids))

    batch = answered[(one["event_id"], two["event_id"])]
    assert batch["text"] == "Echo: b [files: scan.txt] | c [files: scan.txt]"
    recorded = {
        r["event_id"]: r["file_id"]
        for r in await db.fetch("SELECT event_id, file_id FROM attachments WHERE position = 0")
    }
    assert standin.file_content(recorded[one["event_id"]]) == b"first scan"
    assert standin.file_content(recorded[two["event_id"]]) == b"second scan"
    assert len(standin.files()) == 2
    sent = run_messages(standin, backend, batch)
    assert [text_of(m) for m in sent] == ["b", "c"]
    if backend == "responses":
        got = [file_parts(m) for m in sent]
        assert got == [
            [("input_file", recorded[one["event_id"]])],
            [("input_file", recorded[two["event_id"]])],
        ]
    else:
        got = [[a["file_id"] for a in m["attachments"]] for m in sent]
        assert got == [[recorded[one["event_id"]]], [recorded[two["event_id"]]]]


async def test_an_attachment_naming_an_unknown_file_is_dead_lettered_before_any_run(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    event = await publish(
        channel,
        topology,
        conversation_id="c-no-file",
        text="look",
        attachments=[{"file_id": "file-doesnotexist"}],
    )
    [dead] = await wait_for_dead_letters(channel, topology, 1)

    assert dead.message_id == event["event_id"]
    assert dead.headers["x-aw-reason"] == "openai_rejected"
    assert standin.run_records() == []
    assert await drain(channel, topology.reply_queue) == []


# --- metadata and author ---------------------------------------------------------------------


async def test_metadata_reaches_the_api_with_the_workers_tags(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    metadata = {"ticket": "T-1", "channel": "email", "note": "Zoë 🙂"}
    event = await publish(
        channel, topology, conversation_id="c-meta", text="hello", metadata=metadata
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["text"] == "Echo: hello"
    batch_id = await batch_of(db, event["event_id"])
    if backend == "responses":
        assert standin.response(reply["run_id"])["metadata"] == {
            **metadata,
            "aw_batch_id": batch_id,
            "aw_attempt": "1",
        }
    else:
        [message] = run_messages(standin, backend, reply)
        assert message["metadata"] == {
            **metadata,
            "aw_event_id": event["event_id"],
            "aw_batch_id": batch_id,
        }
        assert standin.state.runs[reply["run_id"]].metadata["aw_batch_id"] == batch_id


async def test_metadata_at_its_limits_with_an_author_fits_the_apis_sixteen_pairs(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    # 12 pairs (the schema's maximum) of 64-character keys and 512-character values.
    metadata = {f"k{n:02d}".ljust(64, "x"): f"{n:02d}" * 256 for n in range(1, 13)}
    author = {"id": "a" * 128, "name": "N" * 256}
    event = await publish(
        channel,
        topology,
        conversation_id="c-meta-max",
        text="full",
        metadata=metadata,
        author=author,
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["status"] == "completed", reply["error"]
    found = answering_metadata(standin, backend, reply)
    assert len(found) == 16
    assert {k: v for k, v in found.items() if not k.startswith("aw_")} == metadata
    assert (found["aw_author_id"], found["aw_author_name"]) == (author["id"], author["name"])


async def test_author_is_carried_as_aw_author_metadata(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    named = await publish(
        channel,
        topology,
        conversation_id="c-author-named",
        text="from Zoë",
        author={"id": "cust-9", "name": "Zoë Ångström"},
    )
    anonymous = await publish(
        channel, topology, conversation_id="c-author-id", text="from 10", author={"id": "cust-10"}
    )
    plain = await publish(channel, topology, conversation_id="c-author-none", text="nobody")
    replies = await replies_for(
        channel, topology, {named["event_id"], anonymous["event_id"], plain["event_id"]}
    )
    got = {r["in_reply_to"][0]: answering_metadata(standin, backend, r) for r in replies}

    assert got[named["event_id"]]["aw_author_id"] == "cust-9"
    assert got[named["event_id"]]["aw_author_name"] == "Zoë Ångström"
    assert got[anonymous["event_id"]]["aw_author_id"] == "cust-10"
    assert "aw_author_name" not in got[anonymous["event_id"]]
    assert not {"aw_author_id", "aw_author_name"} & set(got[plain["event_id"]])
    assert {r["text"] for r in replies} == {"Echo: from Zoë", "Echo: from 10", "Echo: nobody"}


# --- occurred_at -----------------------------------------------------------------------------


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def test_occurred_at_orders_a_batch(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    first = await hold(channel, topology, standin, "c-order")
    now = datetime.now(UTC).replace(microsecond=0)
    # Published first, written later...
    later = await publish(
        channel,
        topology,
        conversation_id="c-order",
        text="second thought",
        occurred_at=rfc3339(now - timedelta(minutes=1)),
    )
    # ...published second, written earlier (and in another offset).
    earlier = await publish(
        channel,
        topology,
        conversation_id="c-order",
        text="first thought",
        occurred_at=(now - timedelta(minutes=2))
        .astimezone(timezone(timedelta(hours=2)))
        .isoformat(),
    )
    replies = await replies_for(
        channel, topology, {first["event_id"], later["event_id"], earlier["event_id"]}
    )
    answered = by_events(replies)

    assert set(answered) == {(first["event_id"],), (earlier["event_id"], later["event_id"])}
    batch = answered[(earlier["event_id"], later["event_id"])]
    assert batch["text"] == "Echo: first thought | second thought"
    assert [text_of(m) for m in run_messages(standin, backend, batch)] == [
        "first thought",
        "second thought",
    ]
    stored = await db.fetchval(
        "SELECT occurred_at FROM inbound_events WHERE event_id = $1", earlier["event_id"]
    )
    assert stored == now - timedelta(minutes=2)


# --- instructions ----------------------------------------------------------------------------


def run_instructions(standin: StandIn, backend: str, reply: Json) -> str:
    if backend == "responses":
        return str(standin.response(reply["run_id"])["instructions"])
    return standin.state.runs[reply["run_id"]].instructions


async def test_instructions_are_appended_for_the_run_that_answers_the_event(
    worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    first = await hold(channel, topology, standin, "c-instr")
    french = await publish(
        channel,
        topology,
        conversation_id="c-instr",
        text="b",
        instructions="Answer in French.",
        occurred_at=written(1),
    )
    signed = await publish(
        channel,
        topology,
        conversation_id="c-instr",
        text="c",
        instructions="Sign as Ana.",
        occurred_at=written(2),
    )
    answered = by_events(
        await replies_for(
            channel, topology, {first["event_id"], french["event_id"], signed["event_id"]}
        )
    )
    after = await publish(channel, topology, conversation_id="c-instr", text="d")
    [last] = await replies_for(channel, topology, {after["event_id"]})

    batch = answered[(french["event_id"], signed["event_id"])]
    assert batch["text"] == "Echo: b | c"
    with_extra = run_instructions(standin, backend, batch)
    plain = run_instructions(standin, backend, answered[(first["event_id"],)])
    assert run_instructions(standin, backend, last) == plain
    assert "French" not in plain
    assert "Ana" not in plain
    if backend == "responses":
        assert plain == settings.instructions
        assert with_extra == f"{settings.instructions}\n\nAnswer in French.\n\nSign as Ana."
    else:
        # additional_instructions: the stand-in appends them to the assistant's own.
        assert with_extra.startswith(plain)
        assert with_extra.endswith("Answer in French.\n\nSign as Ana.")


# --- assistant_id ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["assistants"])
async def test_assistant_id_answers_and_the_first_contacts_assistant_sticks(
    worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    async def answer(**event: Any) -> Json:
        sent = await publish(channel, topology, **event)
        [reply] = await replies_for(channel, topology, {sent["event_id"]})
        assert reply["in_reply_to"] == [sent["event_id"]]
        assert reply["status"] == "completed"
        run_assistant = standin.state.runs[reply["run_id"]].assistant_id
        assert run_assistant == reply["assistant_id"]
        return reply

    c = "c-sticky"
    assert (await answer(conversation_id=c, text="1", assistant_id="asst_first"))[
        "assistant_id"
    ] == "asst_first"
    assert (await answer(conversation_id=c, text="2"))["assistant_id"] == "asst_first"
    assert (await answer(conversation_id=c, text="3", assistant_id="asst_other"))[
        "assistant_id"
    ] == "asst_other"
    # One event's choice does not move the conversation: the first contact's assistant stays.
    assert (await answer(conversation_id=c, text="4"))["assistant_id"] == "asst_first"
    assert (await answer(conversation_id="c-default", text="x"))["assistant_id"] == (
        settings.assistant_id
    )
    assert settings.assistant_id not in ("asst_first", "asst_other")
    stored = await db.fetchval(
        "SELECT assistant_id FROM conversations WHERE conversation_id = $1", c
    )
    assert stored == "asst_first"


@pytest.mark.parametrize("backend", ["assistants"])
async def test_an_event_naming_another_assistant_is_answered_in_a_run_of_its_own(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    c = "c-own-run"
    first = await publish(
        channel, topology, conversation_id=c, text=f"hold {HOLD}", assistant_id="asst_first"
    )
    await until(lambda: len(standin.run_records()) == 1)
    other = await publish(channel, topology, conversation_id=c, text="b", assistant_id="asst_other")
    default = await publish(channel, topology, conversation_id=c, text="c")
    answered = by_events(
        await replies_for(
            channel, topology, {first["event_id"], other["event_id"], default["event_id"]}
        )
    )

    assert set(answered) == {(first["event_id"],), (other["event_id"],), (default["event_id"],)}
    assert answered[(other["event_id"],)]["assistant_id"] == "asst_other"
    assert answered[(default["event_id"],)]["assistant_id"] == "asst_first"
    assert len({r["run_id"] for r in answered.values()}) == 3
    for reply in answered.values():
        assert standin.state.runs[reply["run_id"]].assistant_id == reply["assistant_id"]


@pytest.mark.parametrize("backend", ["responses"])
async def test_assistant_id_is_refused_on_responses_and_nothing_reaches_the_api(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    standin.clear_journal()
    event = await publish(
        channel, topology, conversation_id="c-refused", text="hi", assistant_id="asst_x"
    )
    [dead] = await wait_for_dead_letters(channel, topology, 1)

    assert dead.headers["x-aw-reason"] == "field_unsupported"
    assert "/assistant_id" in dead.headers["x-aw-error"]
    assert dead.body == json.dumps(event).encode()
    assert standin.journal == []
    # The conversation itself is not spoiled: an event without the field is answered.
    ok = await publish(channel, topology, conversation_id="c-refused", text="again")
    [reply] = await replies_for(channel, topology, {ok["event_id"]})
    assert reply["in_reply_to"] == [ok["event_id"]]
    assert reply["text"] == "Echo: again"
    assert reply["assistant_id"] is None
    assert await drain(channel, topology.reply_queue) == []


# --- event_id and conversation_id ------------------------------------------------------------

ODD_IDS = [
    "<CAF=x+y@mail.example.com>",
    "inbox/42",
    'ticket 7 "quoted"',
    "Zoë-日本-🙂",
    # The same text decomposed (e + combining diaeresis): another ID, byte for byte.
    "Zoe\u0308-日本-🙂",
    "trailing space ",
    "日" * 85,  # 255 bytes in UTF-8, the limit
]


async def test_any_string_ids_are_answered_stored_and_echoed_byte_for_byte(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    assert len(ODD_IDS[-1].encode()) == 255
    # Each ID is used once as an event's ID and once as another event's conversation.
    conversation_of = {e: ODD_IDS[(n + 1) % len(ODD_IDS)] for n, e in enumerate(ODD_IDS)}
    for event_id, conversation_id in conversation_of.items():
        await publish(
            channel, topology, event_id=event_id, conversation_id=conversation_id, text=event_id
        )
    replies = await replies_for(channel, topology, set(ODD_IDS), timeout_s=30)

    assert sorted(r["in_reply_to"][0] for r in replies) == sorted(ODD_IDS)
    for reply in replies:
        [event_id] = reply["in_reply_to"]
        assert reply["conversation_id"] == conversation_of[event_id]
        assert reply["text"] == f"Echo: {event_id}"
    assert len({r["thread_id"] for r in replies}) == len(ODD_IDS)

    events = await db.fetch(
        "SELECT convert_to(event_id, 'UTF8') AS e, convert_to(conversation_id, 'UTF8') AS c"
        " FROM inbound_events"
    )
    assert sorted((r["e"], r["c"]) for r in events) == sorted(
        (e.encode(), c.encode()) for e, c in conversation_of.items()
    )
    conversations = await db.fetch(
        "SELECT convert_to(conversation_id, 'UTF8') AS c, thread_id FROM conversations"
    )
    assert {r["c"]: r["thread_id"] for r in conversations} == {
        r["conversation_id"].encode(): r["thread_id"] for r in replies
    }
    for reply in replies:
        if backend == "responses":
            tags = standin.state.conversations[reply["thread_id"]].metadata
        else:
            tags = standin.state.threads[reply["thread_id"]].metadata
            [message] = run_messages(standin, backend, reply)
            assert message["metadata"]["aw_event_id"] == reply["in_reply_to"][0]
        assert tags["aw_conversation_id"] == reply["conversation_id"]


# --- coalescing ------------------------------------------------------------------------------


async def test_occurred_at_in_lower_case_rfc3339_is_accepted(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    db: asyncpg.Connection,
    backend: str,
) -> None:
    # RFC 3339 allows a lower-case "t" and "z"; Python's parser takes only upper case.
    event = await publish(
        channel, topology, conversation_id="c-lower", text="hi", occurred_at="2026-11-25t10:00:00z"
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["status"] == "completed"
    stored = await db.fetchval(
        "SELECT occurred_at FROM inbound_events WHERE event_id = $1", event["event_id"]
    )
    assert stored == datetime(2026, 11, 25, 10, tzinfo=UTC)


async def test_events_coalesce_only_when_their_metadata_are_equal(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    backend: str,
) -> None:
    c = "c-coalesce"
    first = await hold(channel, topology, standin, c)
    # occurred_at fixes the order: intake may store events published back to back in any.
    billing = await publish(
        channel,
        topology,
        conversation_id=c,
        text="b",
        metadata={"queue": "billing"},
        occurred_at=written(1),
    )
    # Equal metadata, keys in another order.
    sales_1 = await publish(
        channel,
        topology,
        conversation_id=c,
        text="c",
        metadata={"queue": "sales", "tier": "gold"},
        occurred_at=written(2),
    )
    sales_2 = await publish(
        channel,
        topology,
        conversation_id=c,
        text="d",
        metadata={"tier": "gold", "queue": "sales"},
        occurred_at=written(3),
    )
    # Equal metadata, but another author: what a run applies to all its messages differs.
    authored = await publish(
        channel,
        topology,
        conversation_id=c,
        text="e",
        metadata={"queue": "sales", "tier": "gold"},
        author={"id": "cust-1"},
        occurred_at=written(4),
    )
    ids = {e["event_id"] for e in (first, billing, sales_1, sales_2, authored)}
    answered = by_events(await replies_for(channel, topology, ids))

    assert set(answered) == {
        (first["event_id"],),
        (billing["event_id"],),
        (sales_1["event_id"], sales_2["event_id"]),
        (authored["event_id"],),
    }
    assert len({r["run_id"] for r in answered.values()}) == 4
    assert answered[(authored["event_id"],)]["text"] == "Echo: e"
    billing_reply = answered[(billing["event_id"],)]
    sales_reply = answered[(sales_1["event_id"], sales_2["event_id"])]
    assert billing_reply["text"] == "Echo: b"
    assert sales_reply["text"] == "Echo: c | d"
    assert [text_of(m) for m in run_messages(standin, backend, sales_reply)] == ["c", "d"]
    if backend == "responses":
        assert standin.response(billing_reply["run_id"])["metadata"]["queue"] == "billing"
        sales_meta = standin.response(sales_reply["run_id"])["metadata"]
        assert (sales_meta["queue"], sales_meta["tier"]) == ("sales", "gold")
    else:
        [b] = run_messages(standin, backend, billing_reply)
        assert b["metadata"]["queue"] == "billing"
        for m in run_messages(standin, backend, sales_reply):
            assert (m["metadata"]["queue"], m["metadata"]["tier"]) == ("sales", "gold")
