"""Serving the function calls of a run (`requires_action`): the profile's tools and the
built-in `handoff_to_human`.

Every call is recorded before its handler runs and again when it ends (the store's
tool_calls), so an owner that resumes the batch after a crash answers a call that ended with
the same output, runs again only a tool declared idempotent, and tells the model "outcome
unknown" for any other, never invoking it twice for one call ID.

`handoff_to_human` only records the request (through the turn); the conversation settles it
with the batch, so a run resumed by another owner hands off exactly once.

Traced, each call is an `execute_tool {gen_ai.tool.name}` span (GenAI semantic conventions) with
the call's ID and how it ended (`aw.tool.state`), never its arguments or output; an HTTP tool's
request is its child.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from opentelemetry.trace import Span

from worker import tracing
from worker.backends.base import ToolCall, ToolOutput
from worker.crashpoints import CrashPoint, maybe_crash
from worker.events import HandoffRequest, UserMessage
from worker.profiles.model import FunctionTool, Profile
from worker.relay.http_tools import ToolFailed
from worker.store.records import ToolCallRecord, ToolCallState
from worker.toolkit import Grant, ToolAuthor, ToolContext, TurnEvent

HANDOFF_TOOL = "handoff_to_human"
# What the agent reads; the model's words beyond this are cut.
_REASON_MAX, _SUMMARY_MAX = 1024, 4096
# A handler's output goes to the model as it is; beyond this it is refused, not cut, so the
# model never reads half a JSON document.
OUTPUT_MAX_CHARS = 64 * 1024

log = structlog.get_logger("worker.relay.tools")


class ToolJournal(Protocol):
    """The store's record of the batch's calls (begin before invoking, end after)."""

    async def begin(self, call: ToolCall) -> ToolCallRecord: ...

    async def end(
        self, call_id: str, state: ToolCallState, output: str, duration_ms: int | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class TurnTools:
    """What the tools of one run serve: its conversation, profile and messages, where their
    calls are recorded, and how the model hands off."""

    conversation_id: str
    profile: Profile
    messages: tuple[UserMessage, ...]
    journal: ToolJournal
    # Hands the conversation to a human once the run ends (recorded with the batch first).
    request_handoff: Callable[[HandoffRequest], Awaitable[None]]

    def tool(self, name: str) -> FunctionTool | None:
        """The profile's function of that name, or the built-in handoff."""
        if name == HANDOFF_TOOL:
            return FunctionTool(
                HANDOFF_TOOL,
                HANDOFF_DESCRIPTION,
                HANDOFF_PARAMETERS,
                self._handoff,
                # Recording the request twice records it once (it is kept with the batch).
                idempotent=True,
            )
        return self.profile.function(name)

    async def _handoff(self, arguments: dict[str, Any], _context: ToolContext) -> str:
        """Records the request; the handoff event goes out when the run's reply is recorded."""
        await self.request_handoff(
            HandoffRequest(
                reason=_text(arguments.get("reason"), _REASON_MAX) or "not given",
                summary=_text(arguments.get("summary"), _SUMMARY_MAX),
            )
        )
        return json.dumps(
            {
                "handed_off": True,
                "note": "A human agent will take over this conversation. Tell the customer "
                "so, briefly, and do not try to resolve the request yourself.",
            }
        )

    def context(self, tool: FunctionTool, call: ToolCall) -> ToolContext:
        """The handler's view of the turn: what its grants allow, nothing else."""
        last = self.messages[-1]
        grants = tool.grants
        return ToolContext(
            conversation_id=self.conversation_id,
            profile=self.profile.name,
            call_id=call.call_id,
            tool=tool.name,
            events=tuple(TurnEvent(m.event_id, m.text, m.occurred_at) for m in self.messages)
            if Grant.EVENTS in grants
            else None,
            author=ToolAuthor(last.author.id, last.author.name)
            if Grant.AUTHOR in grants and last.author is not None
            else None,
            metadata=dict(last.metadata) if Grant.METADATA in grants else None,
        )


async def serve_calls(calls: tuple[ToolCall, ...], turn: TurnTools) -> list[ToolOutput]:
    """The outputs of a round of calls, served together: a call that fails gets an error
    output, so the run can go on and the model can tell the customer, instead of hanging."""
    return list(await asyncio.gather(*(serve_call(call, turn) for call in calls)))


async def serve_call(call: ToolCall, turn: TurnTools) -> ToolOutput:
    tool = turn.tool(call.name)
    with tracing.span(*_span_of(tool, call)) as span:
        state, output = await _serve(call, tool, turn, span)
        tracing.set_attributes(span, {"aw.tool.state": state.value})
    return ToolOutput(call.call_id, output)


async def _serve(
    call: ToolCall, tool: FunctionTool | None, turn: TurnTools, span: Span
) -> tuple[ToolCallState, str]:
    record = await turn.journal.begin(call)
    if not record.began and record.state is not ToolCallState.STARTED:
        # It ended under an earlier owner: the same output again, without running it.
        tracing.set_attributes(span, {"aw.tool.replayed": True})
        return record.state, record.output or ""
    duration_ms: int | None = None
    if tool is None:
        tracing.failed(span, "unknown_tool")
        state, output = ToolCallState.ERROR, _error(f"unknown tool {call.name!r}")
    elif not record.began and not tool.idempotent:
        state, output = ToolCallState.UNKNOWN, _unknown_outcome(tool)
        log.warning("tool_outcome_unknown", tool=tool.name, call_id=call.call_id)
    else:
        started = time.monotonic()
        state, output = await _invoke(tool, call, turn, span)
        duration_ms = round((time.monotonic() - started) * 1000)
        maybe_crash(CrashPoint.AFTER_TOOL_RAN)
    await turn.journal.end(call.call_id, state, output, duration_ms)
    return state, output


def _span_of(tool: FunctionTool | None, call: ToolCall) -> tuple[str, dict[str, str]]:
    """The call's span name and attributes. A name the profile does not declare is the
    model's own text: neither names the span nor goes in it."""
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": call.call_id,
    }
    if tool is None:
        return "execute_tool", attributes
    return f"execute_tool {tool.name}", {**attributes, "gen_ai.tool.name": tool.name}


async def _invoke(
    tool: FunctionTool, call: ToolCall, turn: TurnTools, span: Span
) -> tuple[ToolCallState, str]:
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        tracing.failed(span, exc)
        return ToolCallState.ERROR, _error(f"arguments are not JSON: {exc.msg}")
    if not isinstance(arguments, dict):
        tracing.failed(span, "arguments_not_object")
        return ToolCallState.ERROR, _error("arguments are not a JSON object")
    try:
        async with asyncio.timeout(tool.timeout_s):
            output = _as_text(await tool.handler(arguments, turn.context(tool, call)))
    except TimeoutError as exc:
        tracing.failed(span, exc)
        log.warning("tool_timed_out", tool=tool.name, timeout_s=tool.timeout_s)
        return ToolCallState.ERROR, _error(f"tool {tool.name!r} timed out")
    except ToolFailed as exc:  # its text names statuses and kinds of failure, never content
        tracing.failed(span, exc)
        log.warning("tool_failed", tool=tool.name, reason=exc.reason)
        return ToolCallState.ERROR, _error(str(exc))
    except Exception as exc:  # noqa: BLE001 - a failing tool must not fail the run
        tracing.failed(span, exc)
        # The exception's text is the handler's: it may quote the customer.
        log.warning("tool_failed", tool=tool.name, error_class=type(exc).__name__)
        return ToolCallState.ERROR, _error(f"tool {tool.name!r} failed: {type(exc).__name__}")
    log.info("tool_called", tool=tool.name)
    if len(output) > OUTPUT_MAX_CHARS:
        tracing.failed(span, "output_too_large")
        return ToolCallState.ERROR, _error(
            f"tool {tool.name!r} answered {len(output)} characters, at most {OUTPUT_MAX_CHARS}"
        )
    return ToolCallState.OK, output


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _error(message: str) -> str:
    return json.dumps({"error": message})


def _unknown_outcome(tool: FunctionTool) -> str:
    return json.dumps(
        {
            "error": "outcome_unknown",
            "message": f"The call of {tool.name!r} was interrupted and its outcome is unknown; "
            "it is not idempotent, so it was not run again. Do not assume it took effect; "
            "tell the customer it may need checking.",
        }
    )


def _text(value: object, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


HANDOFF_DESCRIPTION = (
    "Hand the conversation to a human agent: when the customer asks for a person, when the "
    "request needs someone with authority (refunds, complaints, legal), or when you cannot "
    "help. A human agent answers from then on."
)
HANDOFF_PARAMETERS: dict[str, object] = {
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
}


def handoff_declaration() -> dict[str, object]:
    """`handoff_to_human` as an assistant object declares it (Assistants backend)."""
    return {
        "type": "function",
        "function": {
            "name": HANDOFF_TOOL,
            "description": HANDOFF_DESCRIPTION,
            "parameters": HANDOFF_PARAMETERS,
        },
    }
