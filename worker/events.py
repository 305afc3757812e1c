"""The wire contract: parse and validate inbound events, build outbound ones, from schemas/."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, cast

from jsonschema import FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from worker.errors import InvalidEvent, ReasonCode

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
USER_MESSAGE = "user_message.v1"
CONVERSATION_CONTROL = "conversation_control.v1"
ASSISTANT_REPLY = "assistant_reply.v1"
ASSISTANT_HANDOFF = "assistant_handoff.v1"
# Replies are named after their run, so a re-published reply keeps its event_id.
REPLY_ID_NAMESPACE = uuid.UUID("6f1d5a52-2a43-4f7e-9a57-1c0e4f3b8a10")

_formats = FormatChecker()


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str) or "T" not in value.upper():
        return False
    # RFC 3339 allows a lower-case "t" and "z"; Python's parser takes only upper case.
    parsed = datetime.fromisoformat(value.upper())
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
class Attachment:
    """A file for the model: the ID of one already uploaded, or inline content to upload once."""

    position: int
    file_id: str | None = None
    filename: str | None = None
    content_base64: str | None = None

    @property
    def inline(self) -> bool:
        return self.content_base64 is not None


@dataclass(frozen=True, slots=True)
class Author:
    """Who wrote a message on the helpdesk's side: sent to the API as metadata tags, not text."""

    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A `user_message.v1` that passed the schema and the checks: the only form of an inbound
    event the relay sees."""

    event_id: str
    conversation_id: str
    text: str
    attachments: tuple[Attachment, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    assistant_id: str | None = None
    instructions: str | None = None
    author: Author | None = None
    occurred_at: datetime | None = None
    profile: str | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> UserMessage:
        author = doc.get("author")
        return cls(
            event_id=doc["event_id"],
            conversation_id=doc["conversation_id"],
            text=doc["text"],
            attachments=tuple(
                Attachment(n, a.get("file_id"), a.get("filename"), a.get("content_base64"))
                for n, a in enumerate(doc.get("attachments", ()))
            ),
            metadata=dict(doc.get("metadata", {})),
            assistant_id=doc.get("assistant_id"),
            instructions=doc.get("instructions"),
            author=None if author is None else Author(author["id"], author.get("name")),
            occurred_at=_occurred_at(doc),
            profile=doc.get("profile"),
        )

    @property
    def batch_key(self) -> str | None:
        """What a run applies to all of its messages: events coalesce only when it is equal.

        On Responses the metadata and author go on the response, not on each message, and an
        event's assistant or profile answers a run of its own; None when the event sets none.
        """
        shared = {
            "metadata": self.metadata or None,
            "author": None if self.author is None else [self.author.id, self.author.name],
            "assistant_id": self.assistant_id,
        }
        if self.profile is not None:  # only when set: keys stored before profiles stay equal
            shared["profile"] = self.profile
        if not any(shared.values()):
            return None
        canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ControlAction(StrEnum):
    """What the helpdesk tells the worker to do with a conversation (conversation_control.v1)."""

    TAKEOVER = "takeover"
    RELEASE = "release"
    CANCEL = "cancel"
    CLOSE = "close"
    ERASE = "erase"
    UPDATE_METADATA = "update_metadata"

    @property
    def interrupts(self) -> bool:
        """Stops the active run at once, ahead of the events queued before it."""
        return self in _INTERRUPTING

    @property
    def withholds_reply(self) -> bool:
        """The stopped run's reply is not published: a human, or nobody, answers now."""
        return self in _WITHHOLDING


_WITHHOLDING = frozenset({ControlAction.TAKEOVER, ControlAction.CLOSE, ControlAction.ERASE})
_INTERRUPTING = _WITHHOLDING | {ControlAction.CANCEL}


@dataclass(frozen=True, slots=True)
class ConversationControl:
    """The helpdesk steering a conversation; taken in order with its user messages."""

    event_id: str
    conversation_id: str
    action: ControlAction
    metadata: dict[str, str] | None = None
    occurred_at: datetime | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ConversationControl:
        return cls(
            event_id=doc["event_id"],
            conversation_id=doc["conversation_id"],
            action=ControlAction(doc["action"]),
            metadata=dict(doc["metadata"]) if "metadata" in doc else None,
            occurred_at=_occurred_at(doc),
        )

    @property
    def batch_key(self) -> str:
        """Unique: a control event is a batch of its own, never coalesced with messages."""
        return f"control:{self.event_id}"


# AMQP carries message_id as a short string: at most 255 bytes.
MAX_ID_BYTES = 255
_ID_FIELDS = ("event_id", "conversation_id")


def parse_user_message(body: bytes, message_id: str | None = None) -> UserMessage:
    """Turns delivery bytes into a UserMessage or raises InvalidEvent saying exactly why not.

    The reason names fields and sizes, never values: an event is customer content, and the
    reason travels into logs and dead-letter headers.
    """
    return UserMessage.from_json(_validated(USER_MESSAGE, body, message_id))


def parse_control(body: bytes, message_id: str | None = None) -> ConversationControl:
    """As parse_user_message, for conversation_control.v1."""
    return ConversationControl.from_json(_validated(CONVERSATION_CONTROL, body, message_id))


def _validated(schema: str, body: bytes, message_id: str | None) -> dict[str, Any]:
    doc = _json(body)
    errors = sorted(validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        detail = "; ".join(describe(e) for e in errors[:5])
        raise InvalidEvent(ReasonCode.SCHEMA_INVALID, f"not a valid {schema}: {detail}")
    _check_carriable(doc)
    if message_id is not None and message_id != doc["event_id"]:
        raise InvalidEvent(
            ReasonCode.MESSAGE_ID_MISMATCH,
            f"AMQP message_id ({_size(message_id)}) differs from event_id "
            f"({_size(doc['event_id'])})",
        )
    return dict(doc)


@dataclass(frozen=True, slots=True)
class SalvagedIds:
    """What an event the worker refused still says validly: whose it is, for the dead letter's
    headers and the handoff. Each field is checked against its own schema, or left out."""

    event_id: str | None = None
    conversation_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def salvage_ids(schema: str, body: bytes) -> SalvagedIds:
    """The IDs and metadata of `body` that pass their own part of `schema`, however invalid
    the rest is; nothing from a body that is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return SalvagedIds()
    if not isinstance(doc, dict):
        return SalvagedIds()
    valid = {name: doc[name] for name in (*_ID_FIELDS, "metadata") if _field_ok(schema, doc, name)}
    return SalvagedIds(
        valid.get("event_id"), valid.get("conversation_id"), valid.get("metadata", {})
    )


def _field_ok(schema: str, doc: dict[str, Any], name: str) -> bool:
    whole = validator(schema)
    part = cast(dict[str, Any], whole.schema)["properties"].get(name)
    if name not in doc or part is None or not whole.evolve(schema=part).is_valid(doc[name]):
        return False
    if name in _ID_FIELDS:
        return _utf8(doc[name]) and len(doc[name].encode("utf-8")) <= MAX_ID_BYTES
    return all(_utf8(k) and _utf8(v) for k, v in doc[name].items())


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _occurred_at(doc: dict[str, Any]) -> datetime | None:
    # RFC 3339 allows a lower-case "t" and "z"; Python's parser takes only upper case.
    return datetime.fromisoformat(doc["occurred_at"].upper()) if "occurred_at" in doc else None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidEvent(
            ReasonCode.MALFORMED_JSON, "body is nested too deeply to be parsed"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            ReasonCode.MALFORMED_JSON,
            f"body is not JSON: not UTF-8 (byte {exc.start} of {len(body)})",
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            ReasonCode.MALFORMED_JSON,
            f"body is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        ) from None


def _check_carriable(doc: dict[str, Any]) -> None:
    """What the schema cannot say: IDs fit AMQP's 255 bytes, and every string is valid UTF-8.

    JSON can spell a lone UTF-16 surrogate (`"\\ud800"`); no UTF-8 system can carry it on.
    """
    for name in _ID_FIELDS:
        size = len(doc[name].encode("utf-8", "surrogatepass"))
        if size > MAX_ID_BYTES:
            raise InvalidEvent(
                ReasonCode.SCHEMA_INVALID,
                f"{name} is {size} bytes in UTF-8, at most {MAX_ID_BYTES} (at /{name})",
            )
    for path, value in _strings(doc, ""):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEvent(
                ReasonCode.SCHEMA_INVALID,
                f"contains a lone UTF-16 surrogate at character {exc.start}, which UTF-8 "
                f"cannot carry (at {path or '/'})",
            ) from None


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    # Keys too: metadata keys are strings the API is sent.
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield path, key
            yield from _strings(item, f"{path}/{_step(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}/{index}")


def _step(key: object) -> str:
    """A path step as shown in errors: field and metadata key names, bounded; never values."""
    # A lone surrogate in a key must not make the error itself unencodable.
    text = str(key).encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= 64 else f"{text[:64]}..."


def _size(value: object) -> str:
    if isinstance(value, str):
        return f"{len(value)} characters"
    if isinstance(value, list):
        return f"{len(value)} items"
    if isinstance(value, dict):
        return f"{len(value)} properties"
    return type(value).__name__


_JSON_TYPES = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _where(error: ValidationError) -> str:
    return "/" + "/".join(_step(step) for step in error.absolute_path)


def describe(error: ValidationError) -> str:
    """A schema violation in words that carry no part of the value itself."""
    value, limit = error.instance, error.validator_value
    messages: dict[str, Callable[[], str]] = {
        "required": lambda: error.message,  # names the missing field, from the schema
        "additionalProperties": lambda: _unexpected(error),
        "type": lambda: f"is not of type {limit!r} (it is {_json_type(value)!r})",
        "minLength": lambda: (
            "should be non-empty"
            if limit == 1
            else f"is too short: {_size(value)}, at least {limit}"
        ),
        "maxLength": lambda: f"is too long: {_size(value)}, at most {limit}",
        "maxItems": lambda: f"has too many items: {_size(value)}, at most {limit}",
        "minItems": lambda: f"has too few items: {_size(value)}, at least {limit}",
        "maxProperties": lambda: f"has too many entries: {_size(value)}, at most {limit}",
        "propertyNames": lambda: "has a key that is too long or not a string",
        "pattern": lambda: _pattern(limit),
        "format": lambda: f"is not a {limit!r}",
        "const": lambda: f"must be {limit!r}",
        "enum": lambda: f"is not one of {', '.join(str(v) for v in cast(list[Any], limit))}",
        # The only `not` in the schemas: a field the event's other fields rule out.
        "not": lambda: "is not allowed with the event's other fields (see the schema)",
        "oneOf": lambda: (
            "is neither a file reference ({file_id}) nor inline content "
            "({filename, content_base64})"
        ),
    }
    text = messages.get(str(error.validator), lambda: f"fails the schema's {error.validator}")()
    if "propertyNames" in error.schema_path and error.validator == "maxLength":
        text = f"has a key that {text}"
    return f"{text} (at {_where(error)})"


def _pattern(pattern: object) -> str:
    if pattern == "^(?!aw_)":
        return "has a key with the prefix 'aw_', reserved for the worker's own tags"
    return "contains a NUL character"


def _unexpected(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = set(schema.get("properties", {}))
    extra = sorted(set(error.instance) - allowed) if isinstance(error.instance, dict) else []
    names = ", ".join(repr(_step(name)) for name in extra[:5])
    verb = "was" if len(extra) == 1 else "were"
    return f"Additional properties are not allowed ({names} {verb} unexpected)"


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    """One assistant message of a reply, with the annotations (citations) the API attached
    and the IDs of the files the assistant produced for it (code interpreter outputs, images)."""

    id: str
    text: str
    annotations: tuple[dict[str, Any], ...] = ()
    files: tuple[str, ...] = ()


class ToolKind(StrEnum):
    FUNCTION = "function"  # served by the worker (the profile's tools, handoff_to_human)
    FILE_SEARCH = "file_search"  # run by the API itself, from here on
    CODE_INTERPRETER = "code_interpreter"
    WEB_SEARCH = "web_search"
    MCP = "mcp"


class ToolOutcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    # Begun by a worker that died before it ended; not run again (not idempotent).
    UNKNOWN = "unknown"
    # An MCP approval request the profile's policy refused.
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class ToolCallSummary:
    """One tool call of the run, for the reply's `tool_calls`: what ran, and how it went."""

    kind: ToolKind
    name: str
    outcome: ToolOutcome
    duration_ms: int | None = None
    # Model output, which may quote the customer: only where the profile shows arguments.
    arguments: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.kind.value,
            "name": self.name,
            "status": self.outcome.value,
            "duration_ms": self.duration_ms,
        }
        if self.arguments is not None:
            doc["arguments"] = self.arguments
        return doc


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens a run used, as the API counted them; passed on in the reply for accounting."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run did not complete, in the API's words; passed on in a reply that is not
    `completed`, so the helpdesk can tell the customer."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class AssistantReply:
    """An `assistant_reply.v1` before encoding: one per run, its event_id derived from the run, so
    a reply published again after a crash is recognisably the same reply."""

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
    # The conversation's count of replies, this one included.
    sequence: int
    metadata: Mapping[str, str]
    tool_calls: tuple[ToolCallSummary, ...] = ()

    @property
    def event_id(self) -> str:
        return f"reply_{uuid.uuid5(REPLY_ID_NAMESPACE, self.run_id).hex}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ASSISTANT_REPLY,
            "event_id": self.event_id,
            "conversation_id": self.conversation_id,
            "in_reply_to": list(self.in_reply_to),
            "sequence": self.sequence,
            "metadata": dict(self.metadata),
            "status": self.status,
            "text": "\n\n".join(m.text for m in self.messages),
            "messages": [
                {
                    "id": m.id,
                    "text": m.text,
                    "annotations": list(m.annotations),
                    "files": list(m.files),
                }
                for m in self.messages
            ],
            "tool_calls": [call.to_json() for call in self.tool_calls],
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


class HandoffReason(StrEnum):
    """Why a human should answer: the `reason` of an assistant_handoff.v1."""

    MODEL_REQUESTED = "model_requested"
    RUN_FAILED = "run_failed"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """The model called handoff_to_human: why, and what the agent should know."""

    reason: str
    summary: str

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "summary": self.summary}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HandoffRequest:
        return cls(str(doc["reason"]), str(doc["summary"]))


@dataclass(frozen=True, slots=True)
class AssistantHandoff:
    """An `assistant_handoff.v1`: customer messages nobody answered, for a human to take.

    One per batch (its event_id is derived from the batch), so re-publishing it after a crash
    is recognisably the same handoff.
    """

    # The batch; for a message refused at intake, an ID derived from it and its replay round.
    batch_id: uuid.UUID
    conversation_id: str
    in_reply_to: tuple[str, ...]
    reason: HandoffReason
    detail: str
    thread_id: str | None
    run_id: str | None
    metadata: Mapping[str, str]
    # model_requested: the model's summary for the agent.
    summary: str | None = None

    @property
    def event_id(self) -> str:
        return f"handoff_{uuid.uuid5(REPLY_ID_NAMESPACE, str(self.batch_id)).hex}"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ASSISTANT_HANDOFF,
            "event_id": self.event_id,
            "conversation_id": self.conversation_id,
            "in_reply_to": list(self.in_reply_to),
            "reason": self.reason.value,
            "detail": self.detail[:1024],
            "summary": None if self.summary is None else self.summary[:4096],
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "metadata": dict(self.metadata),
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
