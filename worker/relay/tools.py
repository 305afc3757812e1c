"""Function tools the assistant may call during a run (`requires_action`)."""

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

ToolHandler = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its declaration and the handler that serves it."""

    name: str
    description: str
    parameters: dict[str, object]
    handler: ToolHandler

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

    async def run_all(self, calls: tuple[ToolCall, ...]) -> list[ToolOutput]:
        return list(await asyncio.gather(*(self.run(call) for call in calls)))

    async def run(self, call: ToolCall) -> ToolOutput:
        tool = self._tools.get(call.name)
        if tool is None:
            return _error(call, f"unknown tool {call.name!r}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            return _error(call, f"arguments are not JSON: {exc}")
        try:
            async with asyncio.timeout(self._timeout_s):
                return ToolOutput(call.call_id, await tool.handler(arguments))
        except Exception as exc:  # noqa: BLE001 - a failing tool must not fail the run
            log.warning("tool_failed", tool=call.name, error=repr(exc))
            return _error(call, f"tool {call.name!r} failed: {type(exc).__name__}")


def _error(call: ToolCall, message: str) -> ToolOutput:
    return ToolOutput(call.call_id, json.dumps({"error": message}))


async def current_time(_arguments: dict[str, Any]) -> str:
    return json.dumps({"utc": datetime.now(UTC).isoformat()})


def default_tools() -> ToolRegistry:
    return ToolRegistry(
        [
            Tool(
                "current_time",
                "The current date and time in UTC.",
                {"type": "object", "properties": {}, "additionalProperties": False},
                current_time,
            )
        ]
    )
