"""Hostile input: bodies, headers and attachments built to break the worker, and customer text
planted everywhere to catch it leaking into logs or dead-letter headers.

Every delivery must get the worker's own verdict on its first delivery (never RabbitMQ's
delivery-limit dead-lettering, never a wedged conversation), and nothing the customer wrote may
travel into a log line or an `x-aw-*` header.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel
from pamqp.common import FieldValue

from standin import StandIn
from tests.conftest import RunningWorker, start_worker
from tests.support import (
    Message,
    drain,
    publish,
    replies_for,
    wait_for_dead_letters,
    worker_env,
)
from worker.settings import Settings, Topology

REPO = Path(__file__).resolve().parent.parent
HEADER_MAX_BYTES = 1024
# RabbitMQ's own dead-lettering (delivery limit, rejection) leaves these behind.
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-reason", "x-last-death-reason")
BOTH_BACKENDS = ["assistants", "responses"]


async def publish_body(
    channel: AbstractChannel,
    topology: Topology,
    body: bytes,
    *,
    message_id: str | None = None,
    headers: dict[str, FieldValue] | None = None,
) -> None:
    """Raw bytes onto the inbound exchange, as a careless or hostile publisher sends them."""
    exchange = await channel.get_exchange(topology.inbound_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            body,
            message_id=message_id,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=topology.inbound_routing_key,
    )


def header_text(value: Any) -> str:
    """A header value as text, for searching it (bytes as received, nested values included)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def assert_aw_headers_bounded(dead: Message) -> None:
    for key, value in dead.headers.items():
        if key.startswith("x-aw-"):
            size = len(header_text(value).encode("utf-8", "surrogatepass"))
            assert size <= HEADER_MAX_BYTES, f"{key} is {size} bytes, over {HEADER_MAX_BYTES}"


def assert_first_verdict_of_the_worker(dead: Message) -> None:
    """The worker dead-lettered it itself, on the first delivery."""
    for name in BROKER_DEATH_HEADERS:
        assert name not in dead.headers, f"RabbitMQ dead-lettered it ({name}: {dead.headers})"
    assert dead.headers.get("x-aw-attempts") == 1, dead.headers
    assert_aw_headers_bounded(dead)


# --- 1. hostile bodies --------------------------------------------------------------------


@dataclass(frozen=True)
class HostileBody:
    body: bytes
    reason: str
    message_id: str | None = None
    # Part of the x-aw-error that says what is wrong (and where).
    says: str = ""


HOSTILE_BODIES = {
    "nested_100000_deep": HostileBody(b"[" * 100_000, "malformed_json", says="nested too deeply"),
    "lone_surrogate_in_text": HostileBody(
        b'{"event_id":"e","conversation_id":"c","text":"\\ud800"}',
        "schema_invalid",
        message_id="e",
        says="lone UTF-16 surrogate at character 0, which UTF-8 cannot carry (at /text)",
    ),
    "not_utf8": HostileBody(
        b'{"event_id":"e-bin","conversation_id":"c","text":"caf\xe9 \xff\xfe"}',
        "malformed_json",
        says="not UTF-8",
    ),
    "nul_in_event_id": HostileBody(
        b'{"event_id":"\\u0000","conversation_id":"c","text":"hi"}',
        "schema_invalid",
        says="contains a NUL character (at /event_id)",
    ),
    # As the helpdesk publishes every event: message_id = event_id, NUL and all.
    "nul_in_event_id_and_message_id": HostileBody(
        b'{"event_id":"\\u0000","conversation_id":"c","text":"hi"}',
        "schema_invalid",
        message_id="\x00",
        says="contains a NUL character (at /event_id)",
    ),
    "event_id_of_300_utf8_bytes": HostileBody(
        json.dumps({"event_id": "é" * 150, "conversation_id": "c", "text": "hi"}).encode(),
        "schema_invalid",
        says="event_id is 300 bytes in UTF-8, at most 255 (at /event_id)",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
async def test_a_hostile_body_gets_the_workers_verdict_on_first_delivery(
    case: str, worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    hostile = HOSTILE_BODIES[case]
    await publish_body(channel, topology, hostile.body, message_id=hostile.message_id)

    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == hostile.reason, dead.headers
    assert dead.body == hostile.body
    assert hostile.says in dead.headers["x-aw-error"]
    assert_first_verdict_of_the_worker(dead)

    later = await publish(channel, topology, conversation_id="c", text="after the hostile one")
    [reply] = await replies_for(channel, topology, {later["event_id"]})
    assert reply["status"] == "completed"
    assert reply["in_reply_to"] == [later["event_id"]]
    # One verdict, and no second one from the broker later.
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []


# --- 2. headers Postgres cannot store ------------------------------------------------------


class NotUtf8(str):
    """A long-string header whose bytes on the wire are not UTF-8 (as other clients send)."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"caf\xe9 \xff\xfe\x00"


HOSTILE_HEADERS: dict[str, dict[str, FieldValue]] = {
    "nul_in_value_and_key": {
        "x-note": "a\x00b",
        "x-nested": {"k\x00": ["\x00", "ok"]},
        "x-nul\x00key": "v",
    },
    "long_string_not_utf8": {"x-raw": NotUtf8("raw")},
    # AMQP field type 'x': the client hands it over as a bytearray.
    "byte_array_not_utf8": {"x-bytes": bytearray(b"\xff\xfe\x00\xc3")},
}


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
async def test_an_event_with_headers_postgres_cannot_store_is_answered(
    case: str,
    backend: str,
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    db: asyncpg.Connection,
) -> None:
    headers = HOSTILE_HEADERS[case]
    event = {"event_id": f"evt-h-{uuid.uuid4().hex[:8]}", "conversation_id": "c-h", "text": "hi"}
    await publish_body(
        channel,
        topology,
        json.dumps(event).encode(),
        message_id=event["event_id"],
        headers=headers,
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["status"] == "completed"
    assert reply["text"] == "Echo: hi"
    status = await db.fetchval(
        "SELECT status::text FROM inbound_events WHERE event_id = $1", event["event_id"]
    )
    assert status == "answered"


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
async def test_an_invalid_event_with_headers_postgres_cannot_store_is_dead_lettered(
    case: str, worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    body = b'{"event_id":"evt-hi","text":"no conversation"}'
    await publish_body(channel, topology, body, message_id="evt-hi", headers=HOSTILE_HEADERS[case])
    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == "schema_invalid", dead.headers
    assert dead.body == body
    assert_first_verdict_of_the_worker(dead)


# --- 3. attachment_invalid at intake -------------------------------------------------------

FILE_MAX = 1024
EVENT_MAX = 2048
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# A valid inline file first: a worker that uploads as it checks would upload it.
FIRST = {"filename": "fine.txt", "content_base64": b64(b"a perfectly fine file")}
BAD_ATTACHMENTS: dict[str, tuple[list[dict[str, str]], str]] = {
    "not_base64": (
        [FIRST, {"filename": "secretname.txt", "content_base64": "abc"}],
        "content_base64 is not valid base64 (at /attachments/1)",
    ),
    "exe": (
        [FIRST, {"filename": "secretname.exe", "content_base64": b64(b"MZ\x90\x00")}],
        "file type '.exe' is not accepted",
    ),
    "png_that_is_not_a_png": (
        [FIRST, {"filename": "secretname.png", "content_base64": b64(b"GIF89a not a png")}],
        "the content is not a png image, as its name says (at /attachments/1)",
    ),
    "over_the_per_file_limit": (
        [FIRST, {"filename": "secretname.txt", "content_base64": b64(b"x" * (FILE_MAX + 1))}],
        f"the file is {FILE_MAX + 1} bytes decoded, at most {FILE_MAX} bytes (at /attachments/1)",
    ),
    "over_the_per_event_limit": (
        [
            FIRST,
            {"filename": "secretname.txt", "content_base64": b64(b"y" * 1020)},
            {"filename": "secretname.png", "content_base64": b64(PNG + b"z" * 980)},
        ],
        # Each file is within the limit; together (21 + 1020 + 1020 bytes) they are not.
        f"attachments are 2061 bytes decoded in all, at most {EVENT_MAX} bytes per event "
        "(at /attachments)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ATTACHMENTS))
async def test_an_invalid_attachment_is_refused_before_anything_is_stored(
    case: str,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
) -> None:
    attachments, says = BAD_ATTACHMENTS[case]
    limits = {"attachment_max_bytes": FILE_MAX, "event_attachments_max_bytes": EVENT_MAX}
    running = await start_worker(settings.model_copy(update=limits))
    try:
        bad = await publish(
            channel, topology, conversation_id="c-att", text="see files", attachments=attachments
        )
        [dead] = await wait_for_dead_letters(channel, topology, 1)
        assert dead.headers["x-aw-reason"] == "attachment_invalid", dead.headers
        error = dead.headers["x-aw-error"]
        assert says in error
        assert re.search(r"\(at /attachments(/\d+)?\)", error), error
        assert "secretname" not in error, error
        assert "fine" not in error, error
        assert dead.json() == bad
        assert_first_verdict_of_the_worker(dead)
        # Nothing of the turn was stored or sent.
        assert (
            await db.fetchval(
                "SELECT count(*) FROM inbound_events WHERE event_id = $1", bad["event_id"]
            )
            == 0
        )
        assert await db.fetchval("SELECT count(*) FROM attachments") == 0
        assert (
            await db.fetchval("SELECT count(*) FROM conversations WHERE conversation_id = 'c-att'")
            == 0
        )
        assert standin.files() == []

        later = await publish(channel, topology, conversation_id="c-att", text="and now?")
        [reply] = await replies_for(channel, topology, {later["event_id"]})
    finally:
        await running.shutdown()
    assert reply["status"] == "completed"
    assert reply["in_reply_to"] == [later["event_id"]]
    assert reply["text"] == "Echo: and now?"
    assert standin.files() == []
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []


# --- 4. customer text never leaks ----------------------------------------------------------

CANARY = "CANARY-7f3a9"
CANARY_FILE = f"notes of {CANARY}, private\n".encode()
CANARY_B64 = b64(CANARY_FILE)
# What must never appear: the canary (any case) and the inline content as it was sent.
NEEDLES = (CANARY.lower(), CANARY_B64.lower())


def canary_fields(text: str) -> dict[str, Any]:
    """Every optional field of user_message.v1, each carrying the canary."""
    return {
        "text": text,
        "metadata": {"note": CANARY, "ticket": f"T-1 {CANARY}"},
        "author": {"id": f"u-{CANARY}", "name": f"Ms {CANARY}"},
        "attachments": [{"filename": f"{CANARY}-notes.txt", "content_base64": CANARY_B64}],
        "instructions": f"Be kind to {CANARY}.",
    }


def leaks(text: str) -> list[str]:
    low = text.lower()
    return [needle for needle in NEEDLES if needle in low]


class WorkerProcess:
    """`python -m worker run` with every line it writes (stdout and stderr) kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    async def wait_for_log(self, event: str, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(f'"event": "{event}"' in line for line in self.lines):
                if self.proc.returncode is not None:
                    raise AssertionError("worker exited early:\n" + "".join(self.lines))
                await asyncio.sleep(0.05)

    async def stop(self, timeout_s: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code


@pytest.fixture
async def worker_process(settings: Settings) -> AsyncIterator[WorkerProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=worker_env(settings, AW_LOG_LEVEL="debug", AW_LOG_FORMAT="json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
    )
    running = WorkerProcess(proc)
    try:
        await running.wait_for_log("worker_started")
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
async def test_customer_text_never_reaches_a_log_line_or_a_dead_letter_header(
    backend: str,
    worker_process: WorkerProcess,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
) -> None:
    tag = uuid.uuid4().hex[:8]
    too_long = "x" * 16_000 + CANARY + "y" * 16_000
    invalid = {
        # Refused by the schema: text over 32,000 characters, and a field it does not know.
        "schema": {
            "event_id": f"evt-schema-{tag}",
            "conversation_id": "c-leak-schema",
            **canary_fields(too_long),
            "extra": f"{CANARY} in a field nobody asked for",
        },
        # Schema-valid, refused at the attachment check: content that is not base64.
        "not_base64": {
            "event_id": f"evt-b64-{tag}",
            "conversation_id": "c-leak-b64",
            **canary_fields(f"hello from {CANARY}"),
            "attachments": [{"filename": f"{CANARY}.txt", "content_base64": f"{CANARY}=="}],
        },
        # ...and a type the worker does not send.
        "exe": {
            "event_id": f"evt-exe-{tag}",
            "conversation_id": "c-leak-exe",
            **canary_fields(f"hello from {CANARY}"),
            "attachments": [{"filename": f"{CANARY}.exe", "content_base64": CANARY_B64}],
        },
    }
    for event in invalid.values():
        await publish_body(
            channel, topology, json.dumps(event).encode(), message_id=event["event_id"]
        )
    # The message_id disagrees with the event_id.
    mismatch = {
        "event_id": f"evt-mm-{tag}",
        "conversation_id": "c-leak-mm",
        **canary_fields(CANARY),
    }
    await publish_body(channel, topology, json.dumps(mismatch).encode(), message_id=f"other-{tag}")
    dead = await wait_for_dead_letters(channel, topology, 4)
    by_reason = {d.headers["x-aw-reason"]: d for d in dead}
    assert sorted(d.headers["x-aw-reason"] for d in dead) == sorted(
        ["schema_invalid", "attachment_invalid", "attachment_invalid", "message_id_mismatch"]
    ), [d.headers for d in dead]
    schema_error = by_reason["schema_invalid"].headers["x-aw-error"]
    assert re.search(
        r"is too long: 32\d{3} characters, at most 32000 \(at /text\)", schema_error
    ), schema_error
    assert "'extra' was unexpected" in schema_error

    # A valid event whose run fails...
    failing = await publish(
        channel,
        topology,
        event_id=f"evt-fail-{tag}",
        conversation_id="c-leak-fail",
        **canary_fields(f"{CANARY} asks [[outcome:failed:invalid_prompt]]"),
    )
    [reply] = await replies_for(channel, topology, {failing["event_id"]})
    assert reply["status"] == "failed"
    # ...and one whose batch the API rejects.
    standin.add_faults(
        [
            {
                "kind": "status",
                "status": 400,
                "method": "POST",
                "path": r"/responses$|/runs$",
                "times": 1,
            }
        ]
    )
    rejected = await publish(
        channel,
        topology,
        event_id=f"evt-rej-{tag}",
        conversation_id="c-leak-rej",
        **canary_fields(f"{CANARY} again"),
    )
    [refused] = await wait_for_dead_letters(channel, topology, 1)
    assert refused.headers["x-aw-reason"] == "openai_rejected", refused.headers
    assert refused.json() == rejected
    assert [e["fault"] for e in standin.journal if e["fault"]] == ["status"]
    # The canary did go through the worker: its files reached the API under their names.
    assert [f["filename"] for f in standin.files()] == [f"{CANARY}-notes.txt"] * 2

    await asyncio.sleep(0.5)  # the relay logs what it published
    assert await worker_process.stop() == 0
    lines = worker_process.lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    events = [r.get("event") for r in records]
    # The capture saw the pipeline: every refusal, both turns and the shutdown.
    assert events.count("event_invalid") == 4, events
    logged_ids = {r.get("event_id") for r in records}
    assert {failing["event_id"], rejected["event_id"]} <= logged_ids, events
    assert "worker_stopped" in events

    leaking = [line for line in lines if leaks(line)]
    assert leaking == [], f"{len(leaking)} log lines carry customer content: {leaking[:3]}"
    for message in [*dead, refused]:
        assert_first_verdict_of_the_worker(message)
        for key, value in message.headers.items():
            assert not leaks(key + header_text(value)), f"{key} leaks customer content"
