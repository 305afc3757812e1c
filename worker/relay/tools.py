"""Function tools the assistant may call during a run (`requires_action`).

`handoff_to_human` is built in: the model calls it to hand the conversation to a person. Its
handler only records the request (through the turn's context); the conversation settles it
with the batch, so a run resumed by another owner hands off exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from openai.types.responses import FunctionToolParam

from worker.backends.base import ToolCall, ToolOutput
from worker.events import HandoffRequest

HANDOFF_TOOL = "handoff_to_human"
# What the agent reads; the model's words beyond this are cut.
_REASON_MAX, _SUMMARY_MAX = 1024, 4096


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a handler may know of the turn it serves, and do for it."""

    conversation_id: str
    # Hands the conversation to a human once the run ends (recorded with the batch first).
    request_handoff: Callable[[HandoffRequest], Awaitable[None]]


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its declaration and the handler that serves it."""

    name: str
    description: str
    parameters: dict[str, object]
    handler: ToolHandler

    def assistants_declaration(self) -> dict[str, object]:
        """The same function as an assistant object declares it (Assistants backend)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def declaration(self) -> FunctionToolParam:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": False,
        }


log = structlog.get_logger("worker.relay.tools")


class ToolRegistry:
    """Dispatches tool calls to handlers. A call that cannot be served gets an error output,
    so the run can go on and the model can tell the customer, instead of the run hanging."""

    def __init__(self, tools: Iterable[Tool], timeout_s: float = 30.0) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._timeout_s = timeout_s

    def declarations(self) -> list[FunctionToolParam]:
        """For APIs that take the tools with every request (Responses)."""
        return [tool.declaration() for tool in self._tools.values()]

    async def run_all(self, calls: tuple[ToolCall, ...], context: ToolContext) -> list[ToolOutput]:
        return list(await asyncio.gather(*(self.run(call, context) for call in calls)))

    async def run(self, call: ToolCall, context: ToolContext) -> ToolOutput:
        tool = self._tools.get(call.name)
        if tool is None:
            return _error(call, f"unknown tool {call.name!r}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            return _error(call, f"arguments are not JSON: {exc}")
        try:
            async with asyncio.timeout(self._timeout_s):
                return ToolOutput(call.call_id, await tool.handler(arguments, context))
        except Exception as exc:  # noqa: BLE001 - a failing tool must not fail the run
            log.warning("tool_failed", tool=call.name, error=repr(exc))
            return _error(call, f"tool {call.name!r} failed: {type(exc).__name__}")


def _error(call: ToolCall, message: str) -> ToolOutput:
    return ToolOutput(call.call_id, json.dumps({"error": message}))


async def current_time(_arguments: dict[str, Any], _context: ToolContext) -> str:
    return json.dumps({"utc": datetime.now(UTC).isoformat()})


async def handoff_to_human(arguments: dict[str, Any], context: ToolContext) -> str:
    """Records the request; the handoff event goes out when the run's reply is recorded."""
    await context.request_handoff(
        HandoffRequest(
            reason=_text(arguments.get("reason"), _REASON_MAX) or "not given",
            summary=_text(arguments.get("summary"), _SUMMARY_MAX),
        )
    )
    return json.dumps(
        {
            "handed_off": True,
            "note": "A human agent will take over this conversation. Tell the customer so, "
            "briefly, and do not try to resolve the request yourself.",
        }
    )


def _text(value: object, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


HANDOFF = Tool(
    HANDOFF_TOOL,
    "Hand the conversation to a human agent: when the customer asks for a person, when the "
    "request needs someone with authority (refunds, complaints, legal), or when you cannot "
    "help. A human agent answers from then on.",
    {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "Why a human should take over."},
            "summary": {
                "type": "string",
                "description": "What the agent needs to know: the request and what was tried.",
            },
        },
        "required": ["reason", "summary"],
        "additionalProperties": False,
    },
    handoff_to_human,
)


def default_tools() -> ToolRegistry:
    return ToolRegistry(
        [
            Tool(
                "current_time",
                "The current date and time in UTC.",
                {"type": "object", "properties": {}, "additionalProperties": False},
                current_time,
            ),
            HANDOFF,
        ]
    )
