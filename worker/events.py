"""The wire contract: parse and validate inbound events, build outbound ones, from schemas/."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from worker.errors import InvalidEvent, ReasonCode

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
USER_MESSAGE = "user_message.v1"
ASSISTANT_REPLY = "assistant_reply.v1"
# Replies are named after their run, so a re-published reply keeps its event_id.
REPLY_ID_NAMESPACE = uuid.UUID("6f1d5a52-2a43-4f7e-9a57-1c0e4f3b8a10")

_formats = FormatChecker()


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str) or "T" not in value.upper():
        return False
    parsed = datetime.fromisoformat(value)
    return parsed.tzinfo is not None


_formats.checks("date-time", raises=ValueError)(_is_rfc3339)


@cache
def validator(name: str) -> Validator:
    """The validator for a schema file, of the JSON Schema draft the file declares."""
    schema = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=_formats)


@dataclass(frozen=True, slots=True)
class UserMessage:
    event_id: str
    conversation_id: str
    text: str
    attachments: tuple[dict[str, str], ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    assistant_id: str | None = None
    instructions: str | None = None
    author_name: str | None = None
    occurred_at: datetime | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> UserMessage:
        author = doc.get("author") or {}
        return cls(
            event_id=doc["event_id"],
            conversation_id=doc["conversation_id"],
            text=doc["text"],
            attachments=tuple(doc.get("attachments", ())),
            metadata=dict(doc.get("metadata", {})),
            assistant_id=doc.get("assistant_id"),
            instructions=doc.get("instructions"),
            author_name=author.get("name"),
            occurred_at=datetime.fromisoformat(doc["occurred_at"])
            if "occurred_at" in doc
            else None,
        )


def _describe(error: ValidationError) -> str:
    where = "/" + "/".join(str(p) for p in error.absolute_path)
    return f"{error.message} (at {where})"


def parse_user_message(body: bytes, message_id: str | None = None) -> UserMessage:
    """Turns delivery bytes into a UserMessage or raises InvalidEvent saying exactly why not."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(ReasonCode.MALFORMED_JSON, f"body is not JSON: {exc}") from None
    errors = sorted(validator(USER_MESSAGE).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        detail = "; ".join(_describe(e) for e in errors[:5])
        raise InvalidEvent(ReasonCode.SCHEMA_INVALID, f"not a valid {USER_MESSAGE}: {detail}")
    if message_id is not None and message_id != doc["event_id"]:
        raise InvalidEvent(
            ReasonCode.MESSAGE_ID_MISMATCH,
            f"AMQP message_id {message_id!r} differs from event_id {doc['event_id']!r}",
        )
    return UserMessage.from_json(doc)


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    id: str
    text: str
    annotations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class RunError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class AssistantReply:
    conversation_id: str
    in_reply_to: tuple[str, ...]
    status: str
    messages: tuple[ReplyMessage, ...]
    thread_id: str
    run_id: str
    assistant_id: str | None
    backend: str
    usage: Usage | None
    error: RunError | None

    @property
    def event_id(self) -> str:
        return f"reply_{uuid.uuid5(REPLY_ID_NAMESPACE, self.run_id).hex}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ASSISTANT_REPLY,
            "event_id": self.event_id,
            "conversation_id": self.conversation_id,
            "in_reply_to": list(self.in_reply_to),
            "status": self.status,
            "text": "\n\n".join(m.text for m in self.messages),
            "messages": [
                {"id": m.id, "text": m.text, "annotations": list(m.annotations)}
                for m in self.messages
            ],
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "assistant_id": self.assistant_id,
            "backend": self.backend,
            "usage": None if self.usage is None else vars_of(self.usage),
            "error": None if self.error is None else vars_of(self.error),
            "created_at": rfc3339(datetime.now(UTC)),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def rfc3339(when: datetime) -> str:
    """A UTC time as the contract writes it (`Z`, not `+00:00`)."""
    return when.isoformat().replace("+00:00", "Z")


def vars_of(value: Usage | RunError) -> dict[str, Any]:
    """A slotted value as a plain dict, for JSON columns and payloads."""
    return {name: getattr(value, name) for name in value.__slots__}
