"""In-memory objects of the Responses + Conversations surface and their API shapes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from standin.mcp_tool import shown_tools
from standin.models import Json, seconds
from standin.replies import ReplyNote
from standin.response_options import shown_options
from standin.script import Script

ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]


@dataclass
class Conversation:
    id: str
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    # Stored in ConversationItem shape, oldest first.
    items: list[Json] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)

    def to_api(self) -> Json:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": seconds(self.created_at),
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class TurnPlan:
    """What a response puts in its output when it settles, decided when it is created so
    that a tool script the request cannot carry out is a 400 then.

    ``tool_items`` are the tool calls in output order; ``notes`` what the reply says about
    tool results after the echo; ``replies`` is False when the response stops at calls the
    client must answer (function calls, MCP approval requests) and so has no message.
    """

    tool_items: tuple[Json, ...] = ()
    notes: tuple[ReplyNote, ...] = ()
    replies: bool = True


@dataclass
class ResponseRecord:
    id: str
    conversation_id: str | None
    model: str
    instructions: str | None
    metadata: dict[str, str]
    tools: list[Json]
    created_at: float
    background: bool
    script: Script
    input_items: list[Json]
    # The user texts this response answers, and each as the echo names it (with files).
    batch: list[str]
    echoed: list[str]
    plan: TurnPlan = field(default_factory=TurnPlan)
    # The generation options the request set (response_options.parse_options).
    options: Json = field(default_factory=dict)
    status: ResponseStatus = "queued"
    started_at: float | None = None
    ended_at: float | None = None
    output: list[Json] = field(default_factory=list)
    error: Json | None = None
    incomplete_reason: str | None = None
    usage: Json | None = None
    # Set when the response settles; a non-background create waits on it.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return self.status in ("queued", "in_progress")

    def to_api(self) -> Json:
        return {
            "id": self.id,
            "object": "response",
            "created_at": seconds(self.created_at),
            "status": self.status,
            "background": self.background,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            "model": self.model,
            "instructions": self.instructions,
            "metadata": self.metadata,
            "tools": shown_tools(self.tools),
            "output": self.output,
            "error": self.error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.status == "incomplete" else None
            ),
            "usage": self.usage,
            "completed_at": seconds(self.ended_at) if self.status == "completed" else None,
            **shown_options(self.options, self.model),
        }

    def record(self) -> Json:
        """The analysis view: precise float times, for delay and overlap checks."""
        return {
            "id": self.id,
            "kind": "response",
            "thread_id": None,
            "conversation_id": self.conversation_id,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "metadata": self.metadata,
            "batch": self.batch,
        }
