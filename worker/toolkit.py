"""The public API for writing tools: what a handler receives, and how it declares itself.

A handler is an async callable ``(arguments, context) -> str | JSON value``. It is named in the
profiles file by reference (``module:attribute``), through the ``assistant_worker.tools``
entry-point group, or replaced by a URL (an HTTP tool). What it returns goes to the model as
the call's output; an exception or a timeout becomes an error output instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Grant(StrEnum):
    """A part of the turn a tool may see, beyond its conversation, call and profile."""

    EVENTS = "events"  # the customer messages the run answers: IDs, texts, times
    AUTHOR = "author"  # who wrote them on the helpdesk's side
    METADATA = "metadata"  # the events' metadata (inbox, channel, customer IDs...)


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One customer message of the turn, as a tool granted `events` sees it."""

    event_id: str
    text: str
    occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class ToolAuthor:
    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a handler may know of the turn it serves: only what its profile grants it.

    A part not granted is None (events, author, metadata), so a tool cannot come to depend on
    it by accident.
    """

    conversation_id: str
    profile: str
    call_id: str
    tool: str
    events: tuple[TurnEvent, ...] | None = None
    author: ToolAuthor | None = None
    metadata: Mapping[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        """The context as an HTTP tool receives it (parts not granted are left out)."""
        doc: dict[str, Any] = {
            "conversation_id": self.conversation_id,
            "profile": self.profile,
            "call_id": self.call_id,
            "tool": self.tool,
        }
        if self.events is not None:
            doc["events"] = [
                {
                    "event_id": e.event_id,
                    "text": e.text,
                    "occurred_at": None if e.occurred_at is None else e.occurred_at.isoformat(),
                }
                for e in self.events
            ]
        if self.author is not None:
            doc["author"] = {"id": self.author.id, "name": self.author.name}
        if self.metadata is not None:
            doc["metadata"] = dict(self.metadata)
        return doc


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool that ships its own declaration, for an entry point or a ``module:attribute``
    reference: the profile may then name it without repeating description and parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler
    idempotent: bool = False
    grants: frozenset[Grant] = field(default_factory=frozenset)


def tool(
    name: str,
    description: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotent: bool = False,
    grants: frozenset[Grant] | set[Grant] = frozenset(),
) -> Callable[[ToolHandler], ToolSpec]:
    """Declares a handler as a tool::

    @tool("order_status", "Look up the customer's order.", {"type": "object", ...},
          idempotent=True, grants={Grant.METADATA})
    async def order_status(arguments, context): ...
    """

    def declare(handler: ToolHandler) -> ToolSpec:
        return ToolSpec(
            name,
            description,
            parameters or {"type": "object", "properties": {}, "additionalProperties": False},
            handler,
            idempotent,
            frozenset(grants),
        )

    return declare
