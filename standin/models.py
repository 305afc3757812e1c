"""In-memory objects of the Assistants v2 surface and their API shapes.

Timestamps are kept as float epoch seconds so the analysis endpoint can report
precise intervals; the API shapes truncate them to the integer seconds the real
API uses.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from standin.file_search import Hit
from standin.script import Script
from standin.tool_script import ToolScript

Json = dict[str, Any]
RunStatus = Literal[
    "queued",
    "in_progress",
    "requires_action",
    "cancelling",
    "cancelled",
    "failed",
    "completed",
    "incomplete",
    "expired",
]
# requires_action and cancelling still hold the thread lock, like the real API.
ACTIVE_RUN_STATUSES: frozenset[RunStatus] = frozenset(
    {"queued", "in_progress", "requires_action", "cancelling"}
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def seconds(epoch: float | None) -> int | None:
    return None if epoch is None else int(epoch)


def text_block(value: str, annotations: Sequence[Json] = ()) -> Json:
    return {"type": "text", "text": {"value": value, "annotations": list(annotations)}}


def tool_types(tools: Sequence[Json]) -> frozenset[str]:
    return frozenset(str(tool.get("type")) for tool in tools)


def file_search_store_ids(tool_resources: Json) -> list[str]:
    """The vector stores ``tool_resources`` give the file_search tool."""
    ids = tool_resources.get("file_search", {}).get("vector_store_ids", [])
    return [str(vector_store_id) for vector_store_id in ids]


@dataclass
class Assistant:
    id: str
    model: str
    created_at: float
    name: str | None = None
    description: str | None = None
    instructions: str | None = None
    tools: list[Json] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    temperature: float | None = None
    top_p: float | None = None
    response_format: str | Json | None = None
    # Runs inherit it; AssistantObject has no field to show it in.
    reasoning_effort: str | None = None
    tool_resources: Json = field(default_factory=dict)

    def to_api(self) -> Json:
        return {
            "id": self.id,
            "object": "assistant",
            "created_at": seconds(self.created_at),
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "metadata": self.metadata,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "response_format": self.response_format or "auto",
            "tool_resources": self.tool_resources,
        }


@dataclass
class Message:
    id: str
    thread_id: str
    role: Literal["user", "assistant"]
    content: list[Json]
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    attachments: list[Json] = field(default_factory=list)
    assistant_id: str | None = None
    run_id: str | None = None
    status: Literal["in_progress", "incomplete", "completed"] = "completed"
    incomplete_reason: str | None = None

    def text(self) -> str:
        return "\n".join(part["text"]["value"] for part in self.content if part["type"] == "text")

    def to_api(self) -> Json:
        incomplete = self.status == "incomplete"
        return {
            "id": self.id,
            "object": "thread.message",
            "created_at": seconds(self.created_at),
            "thread_id": self.thread_id,
            "role": self.role,
            "content": self.content,
            "assistant_id": self.assistant_id,
            "run_id": self.run_id,
            "attachments": self.attachments,
            "metadata": self.metadata,
            "status": self.status,
            "completed_at": None if incomplete else seconds(self.created_at),
            "incomplete_at": seconds(self.created_at) if incomplete else None,
            "incomplete_details": {"reason": self.incomplete_reason} if incomplete else None,
        }


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    output: str | None = None

    def required_action_api(self) -> Json:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def step_api(self, *, with_content: bool = False) -> Json:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments, "output": self.output},
        }


@dataclass
class FileSearchCall:
    """A file_search call: the passages found, best first."""

    id: str
    ranking_options: Json
    hits: tuple[Hit, ...]

    def step_api(self, *, with_content: bool = False) -> Json:
        """``with_content``: the ``include`` of the passages' text, as the steps endpoints take."""
        results = []
        for hit in self.hits:
            result: Json = {"file_id": hit.file_id, "file_name": hit.filename, "score": hit.score}
            if with_content:
                result["content"] = [{"type": "text", "text": hit.text}]
            results.append(result)
        return {
            "id": self.id,
            "type": "file_search",
            "file_search": {"ranking_options": self.ranking_options, "results": results},
        }


@dataclass
class CodeInterpreterCall:
    """A code interpreter call: the code it ran and the logs it printed."""

    id: str
    code: str
    logs: str

    def step_api(self, *, with_content: bool = False) -> Json:
        # with_content, as every step's call takes it, concerns file_search results only.
        return {
            "id": self.id,
            "type": "code_interpreter",
            "code_interpreter": {
                "input": self.code,
                "outputs": [{"type": "logs", "logs": self.logs}],
            },
        }


StepToolCall = ToolCall | FileSearchCall | CodeInterpreterCall


@dataclass
class RunStep:
    id: str
    run_id: str
    thread_id: str
    assistant_id: str
    type: Literal["message_creation", "tool_calls"]
    created_at: float
    status: Literal["in_progress", "cancelled", "failed", "completed", "expired"]
    message_id: str | None = None
    tool_calls: list[StepToolCall] = field(default_factory=list)
    ended_at: float | None = None

    def _details(self, with_content: bool) -> Json:
        if self.type == "message_creation":
            return {"type": "message_creation", "message_creation": {"message_id": self.message_id}}
        calls = [call.step_api(with_content=with_content) for call in self.tool_calls]
        return {"type": "tool_calls", "tool_calls": calls}

    def to_api(self, *, with_search_content: bool = False) -> Json:
        ended = seconds(self.ended_at)
        return {
            "id": self.id,
            "object": "thread.run.step",
            "created_at": seconds(self.created_at),
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "type": self.type,
            "status": self.status,
            "step_details": self._details(with_search_content),
            "completed_at": ended if self.status == "completed" else None,
            "cancelled_at": ended if self.status == "cancelled" else None,
            "failed_at": ended if self.status == "failed" else None,
            "expired_at": ended if self.status == "expired" else None,
            "last_error": None,
            "metadata": {},
            "usage": None,
        }


@dataclass
class Run:
    id: str
    thread_id: str
    assistant_id: str
    model: str
    instructions: str
    tools: list[Json]
    metadata: dict[str, str]
    created_at: float
    expires_at: float
    script: Script
    # The user texts this run answers, and each as the echo names it (with files).
    batch: list[str]
    echoed: list[str]
    # Request fields the stand-in does not act on but echoes back, as the API does.
    options: Json = field(default_factory=dict)
    status: RunStatus = "queued"
    started_at: float | None = None
    ended_at: float | None = None
    last_error: Json | None = None
    incomplete_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Json | None = None
    steps: list[RunStep] = field(default_factory=list)
    # The tools the newest user text scripts, and the file search made when the run
    # was created (None when its tools or resources give it nothing to search).
    tool_script: ToolScript = field(default_factory=ToolScript)
    file_search: FileSearchCall | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    def record(self) -> Json:
        """The analysis view: precise float times, for delay and overlap checks."""
        return {
            "id": self.id,
            "kind": "run",
            "thread_id": self.thread_id,
            "conversation_id": None,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "metadata": self.metadata,
            "batch": self.batch,
        }

    def _required_action(self) -> Json | None:
        if self.status != "requires_action":
            return None
        calls = [call.required_action_api() for call in self.tool_calls]
        return {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}

    def to_api(self) -> Json:
        ended = seconds(self.ended_at)
        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": seconds(self.created_at),
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "status": self.status,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "metadata": self.metadata,
            "started_at": seconds(self.started_at),
            "expires_at": seconds(self.expires_at),
            "completed_at": ended if self.status == "completed" else None,
            "failed_at": ended if self.status == "failed" else None,
            "cancelled_at": ended if self.status == "cancelled" else None,
            "last_error": self.last_error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.status == "incomplete" else None
            ),
            "required_action": self._required_action(),
            "usage": self.usage,
            "parallel_tool_calls": self.options.get("parallel_tool_calls", True),
            "response_format": self.options.get("response_format") or "auto",
            "tool_choice": self.options.get("tool_choice") or "auto",
            "truncation_strategy": self.options.get("truncation_strategy")
            or {"type": "auto", "last_messages": None},
            "temperature": self.options.get("temperature", 1.0),
            "top_p": self.options.get("top_p", 1.0),
            "max_completion_tokens": self.options.get("max_completion_tokens"),
            "max_prompt_tokens": self.options.get("max_prompt_tokens"),
        }


@dataclass
class Thread:
    id: str
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    # Echoed as given; file_search searches its vector stores with the assistant's.
    tool_resources: Json = field(default_factory=dict)

    def to_api(self) -> Json:
        return {
            "id": self.id,
            "object": "thread",
            "created_at": seconds(self.created_at),
            "metadata": self.metadata,
            "tool_resources": self.tool_resources,
        }


# What ``{"type": "auto"}`` chunking stands for, as the reference documents it.
AUTO_CHUNKING: Json = {
    "type": "static",
    "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
}
_DAY_S = 86_400


Attributes = dict[str, str | float | bool]


@dataclass
class VectorStoreFile:
    """A File attached to a vector store; it shares the File's id."""

    file_id: str
    vector_store_id: str
    created_at: float
    usage_bytes: int
    chunking_strategy: Json
    attributes: Attributes | None = None
    # Real files are in_progress while they are chunked and embedded; the stand-in
    # indexes nothing, so a file is ready at once and tests need not wait for it.
    status: Literal["in_progress", "completed", "cancelled", "failed"] = "completed"

    def to_api(self) -> Json:
        return {
            "id": self.file_id,
            "object": "vector_store.file",
            "usage_bytes": self.usage_bytes,
            "created_at": seconds(self.created_at),
            "vector_store_id": self.vector_store_id,
            "status": self.status,
            "last_error": None,
            "chunking_strategy": self.chunking_strategy,
            "attributes": self.attributes,
        }


@dataclass
class VectorStore:
    """A vector store: its files in the order they were attached."""

    id: str
    name: str
    created_at: float
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # Echoed with the expiry it implies; the stand-in never expires a store.
    expires_after: Json | None = None
    files: dict[str, VectorStoreFile] = field(default_factory=dict)

    def _expires_at(self) -> int | None:
        if self.expires_after is None:
            return None
        return seconds(self.created_at + self.expires_after["days"] * _DAY_S)

    def to_api(self) -> Json:
        count = len(self.files)
        return {
            "id": self.id,
            "object": "vector_store",
            "created_at": seconds(self.created_at),
            "name": self.name,
            "description": self.description,
            "usage_bytes": sum(attached.usage_bytes for attached in self.files.values()),
            "file_counts": {
                "in_progress": 0,
                "completed": count,
                "failed": 0,
                "cancelled": 0,
                "total": count,
            },
            "status": "completed",
            "expires_after": self.expires_after,
            "expires_at": self._expires_at(),
            # Nothing here tracks use, so the store was last active when it was made.
            "last_active_at": seconds(self.created_at),
            "metadata": self.metadata,
        }


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: float
    # A deleted file is gone from the API but kept here, for inspection and for
    # the names in echo replies to messages that named it before.
    deleted: bool = False

    def inspect(self) -> Json:
        """The test view: what was uploaded and whether it was deleted since."""
        return {
            "id": self.id,
            "filename": self.filename,
            "purpose": self.purpose,
            "bytes": len(self.content),
            "created_at": self.created_at,
            "deleted": self.deleted,
        }

    def to_api(self) -> Json:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": seconds(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
