"""Inbound validation against schemas/ and the shape of outbound replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from worker.errors import InvalidEvent, ReasonCode
from worker.events import (
    USER_MESSAGE,
    AssistantReply,
    Attachment,
    Author,
    ReplyMessage,
    RunError,
    Usage,
    parse_user_message,
    salvage_ids,
    validator,
)
from worker.settings import Topology

REPO = Path(__file__).resolve().parent.parent


def _event(**overrides: object) -> bytes:
    doc: dict[str, object] = {"event_id": "evt-1", "conversation_id": "conv-1", "text": "hello"}
    doc.update(overrides)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_the_worker_validates_against_the_published_schema_files() -> None:
    for name in ("user_message.v1", "assistant_reply.v1"):
        published = json.loads((REPO / "schemas" / f"{name}.json").read_text())
        assert validator(name).schema == published


def test_a_full_event_parses() -> None:
    event = parse_user_message(
        _event(
            author={"id": "u1", "name": "Ada"},
            occurred_at="2026-11-25T10:00:00Z",
            metadata={"ticket": "42"},
            assistant_id="asst_x",
            instructions="Be brief.",
            attachments=[{"file_id": "file-1"}],
        ),
        message_id="evt-1",
    )
    assert (event.event_id, event.conversation_id, event.text) == ("evt-1", "conv-1", "hello")
    assert event.metadata == {"ticket": "42"}
    assert event.assistant_id == "asst_x"
    assert event.author == Author("u1", "Ada")
    assert event.attachments == (Attachment(0, file_id="file-1"),)


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (b"{not json", ReasonCode.MALFORMED_JSON, "body is not JSON"),
        (b"\xff\xfe", ReasonCode.MALFORMED_JSON, "body is not JSON"),
        (_event(text=None), ReasonCode.SCHEMA_INVALID, "'text' is a required property"),
        (_event(text=""), ReasonCode.SCHEMA_INVALID, "should be non-empty (at /text)"),
        (
            _event(text="x" * 32001),
            ReasonCode.SCHEMA_INVALID,
            "is too long: 32001 characters, at most 32000 (at /text)",
        ),
        (_event(occurred_at="yesterday"), ReasonCode.SCHEMA_INVALID, "is not a 'date-time'"),
        (_event(colour="red"), ReasonCode.SCHEMA_INVALID, "'colour' was unexpected"),
        (_event(metadata={"k": 1}), ReasonCode.SCHEMA_INVALID, "(at /metadata/k)"),
        (b"[1, 2]", ReasonCode.SCHEMA_INVALID, "is not of type 'object'"),
    ],
)
def test_bad_input_is_refused_with_a_readable_reason(
    body: bytes, reason: ReasonCode, says: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_user_message(body)
    assert caught.value.reason is reason
    assert says in caught.value.detail


def test_message_id_must_match_event_id() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_user_message(_event(), message_id="other")
    assert caught.value.reason is ReasonCode.MESSAGE_ID_MISMATCH


def _reply(run_id: str = "run_1", error: RunError | None = None) -> AssistantReply:
    return AssistantReply(
        conversation_id="conv-1",
        in_reply_to=("evt-1", "evt-2"),
        status="completed" if error is None else "failed",
        messages=(ReplyMessage("msg_1", "Hi", ({"type": "file_citation", "text": "x"},)),),
        thread_id="thread_1",
        run_id=run_id,
        assistant_id="asst_1",
        backend="assistants",
        usage=Usage(3, 4, 7),
        error=error,
        sequence=3,
        metadata={"inbox": "sales"},
    )


def test_replies_validate_against_their_schema() -> None:
    for reply in (_reply(), _reply(error=RunError("server_error", "boom"))):
        doc = json.loads(reply.encode())
        errors = list(validator("assistant_reply.v1").iter_errors(doc))
        assert errors == []
        assert doc["in_reply_to"] == ["evt-1", "evt-2"]
        assert (doc["sequence"], doc["metadata"]) == (3, {"inbox": "sales"})


def test_reply_event_id_is_stable_per_run() -> None:
    assert _reply("run_1").event_id == _reply("run_1").event_id
    assert _reply("run_1").event_id != _reply("run_2").event_id


def test_asyncapi_document_points_at_the_schema_files_and_default_names() -> None:
    doc = yaml.safe_load((REPO / "schemas" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    for message in doc["components"]["messages"].values():
        ref = message["payload"].get("schema", {}).get("$ref")
        if ref is not None:
            assert (REPO / "schemas" / ref).is_file(), ref
    defaults = Topology()
    channels = doc["channels"]
    assert channels["userMessages"]["address"] == defaults.inbound_queue
    assert channels["assistantReplies"]["address"] == defaults.reply_routing_key
    assert channels["deadLetters"]["address"] == defaults.dead_letter_queue
    reasons = doc["components"]["messages"]["deadLetter"]["headers"]
    assert set(reasons["properties"]["x-aw-reason"]["enum"]) == {r.value for r in ReasonCode}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"event_id": "e1", "conversation_id": "c1", "text": 7}', ("e1", "c1", {})),
        (b'{"event_id": "e1", "metadata": {"inbox": "sales"}}', ("e1", None, {"inbox": "sales"})),
        (b'{"event_id": "", "conversation_id": 7, "metadata": {"n": 1}}', (None, None, {})),
        ('{"conversation_id": "%s"}' % ("é" * 200), (None, None, {})),  # 400 bytes
        (b'{"conversation_id": "\\ud800", "metadata": {"k": "\\ud800"}}', (None, None, {})),
        (b'["e1", "c1"]', (None, None, {})),
        (b"{not json", (None, None, {})),
    ],
)
def test_a_refused_event_keeps_only_the_ids_and_metadata_that_are_valid_in_it(
    body: bytes | str, expected: tuple[str | None, str | None, dict[str, str]]
) -> None:
    raw = body.encode() if isinstance(body, str) else body
    ids = salvage_ids(USER_MESSAGE, raw)
    assert (ids.event_id, ids.conversation_id, dict(ids.metadata)) == expected
