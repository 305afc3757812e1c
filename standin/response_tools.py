"""What a response does with its tools: the calls a turn's tool script asks for, and the
reply of the follow-up that answers them.

A turn's first response follows the markers in its newest user text (standin.tool_script)
and the ``requires_action`` outcome: built-in tools run and report in the reply, function
calls and MCP approval requests end the response for the client to answer. A follow-up,
whose input answers them (``function_call_output``, ``mcp_approval_response``), replies in
text and never calls again: markers only script the first response of a turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from standin.code_interpreter_tool import check_code_interpreter_tool, write_file
from standin.conversation_items import function_call_item, output_text
from standin.errors import bad_request
from standin.file_search_tool import check_file_search_tool, declared_file_search, search_files
from standin.mcp_tool import McpTurn, check_mcp_tool
from standin.models import Json, new_id
from standin.replies import ReplyNote, tool_said
from standin.response_models import TurnPlan
from standin.script import Script
from standin.state import StandInState
from standin.tool_arguments import scripted_arguments
from standin.tool_script import ScriptedCall, ToolScript, parse_tool_script
from standin.web_search_tool import (
    WEB_SEARCH_TYPES,
    check_web_search_tool,
    search_web,
    wants_web_search,
)

# Input items that answer calls a previous response made.
_ANSWER_TYPES = frozenset({"function_call_output", "mcp_approval_response"})
# Each built-in tool's own checks of its declaration in ``tools``.
_DECLARATION_CHECKS: dict[str, Callable[[Json, str], None]] = {
    "mcp": check_mcp_tool,
    "code_interpreter": check_code_interpreter_tool,
    "file_search": check_file_search_tool,
    **dict.fromkeys(WEB_SEARCH_TYPES, check_web_search_tool),
}


@dataclass(frozen=True)
class TurnContext:
    """What a response's tool use is decided from.

    ``marker_text`` is the newest user text of the request's input, where markers are
    read (as outcome markers are); ``query`` is the newest user text the response answers,
    which fills scripted arguments and search queries.
    """

    tools: Sequence[Json]
    options: Json
    history: Sequence[Json]
    input_items: Sequence[Json]
    marker_text: str | None
    query: str
    script: Script

    @property
    def items(self) -> list[Json]:
        return [*self.history, *self.input_items]


def check_tool_declaration(tool: Json, param: str) -> None:
    check = _DECLARATION_CHECKS.get(tool["type"])
    if check is not None:
        check(tool, param)


def plan_turn(context: TurnContext, state: StandInState) -> TurnPlan:
    if any(item["type"] in _ANSWER_TYPES for item in context.input_items):
        return _follow_up(context)
    tool_script = parse_tool_script(context.marker_text)
    if context.options.get("tool_choice") == "none":
        return TurnPlan()
    built_in, notes = _built_in_tools(context, tool_script, state)
    mcp = McpTurn(context.tools, context.history)
    mcp.call(tool_script.mcp_calls)
    calls = _function_calls(context, tool_script)
    return TurnPlan(
        tool_items=(*built_in, *mcp.items, *calls),
        notes=(*notes, *mcp.notes),
        replies=not (calls or mcp.awaits_approval),
    )


def _built_in_tools(
    context: TurnContext, tool_script: ToolScript, state: StandInState
) -> tuple[list[Json], list[ReplyNote]]:
    """The calls of the tools OpenAI runs itself, in output order, and their notes."""
    used: list[tuple[Json, ReplyNote | None]] = []
    file_search = declared_file_search(context.tools)
    if file_search is not None:
        used.append(search_files(state, file_search, context.query, context.options))
    if wants_web_search(context.marker_text, context.tools):
        used.append(search_web(context.query, context.options))
    if tool_script.code_file is not None:
        used.append(
            write_file(tool_script.code_file, context.tools, context.history, context.options)
        )
    return [call for call, _ in used], [note for _, note in used if note is not None]


def _follow_up(context: TurnContext) -> TurnPlan:
    """The reply to answered calls: function outputs first, then approved MCP calls run."""
    notes = _function_output_notes(context)
    mcp = McpTurn(context.tools, context.history)
    for item in context.input_items:
        if item["type"] == "mcp_approval_response":
            mcp.answer(item)
    return TurnPlan(tool_items=tuple(mcp.items), notes=(*notes, *mcp.notes))


def _function_calls(context: TurnContext, tool_script: ToolScript) -> list[Json]:
    """One function_call per scripted call, in order: the parallel calls of one turn."""
    scripted = list(tool_script.calls)
    if context.script.outcome == "requires_action" and context.script.tool_name:
        scripted.insert(0, ScriptedCall(context.script.tool_name, None))
    if context.options.get("parallel_tool_calls") is False:
        scripted = scripted[:1]
    return [
        function_call_item(new_id("call"), call.name, _arguments(call, context))
        for call in scripted
    ]


def _arguments(call: ScriptedCall, context: TurnContext) -> str:
    if call.arguments is not None:
        return call.arguments
    return scripted_arguments(call.name, context.tools, context.query)


def _function_output_notes(context: TurnContext) -> list[ReplyNote]:
    """A note per output, in input order; every call of the turn must have its output."""
    calls = {item["call_id"]: item for item in context.items if item["type"] == "function_call"}
    notes: list[ReplyNote] = []
    for item in context.input_items:
        if item["type"] != "function_call_output":
            continue
        call = calls.get(item["call_id"])
        if call is None:
            raise bad_request(
                f"No tool call found for function call output with call_id {item['call_id']}.",
                param="input",
            )
        notes.append(ReplyNote(tool_said(call["name"], output_text(item))))
    _ensure_calls_answered(context.items)
    return notes


def _ensure_calls_answered(items: Sequence[Json]) -> None:
    """The API refuses a follow-up that leaves any function call of the turn unanswered."""
    answered = {item["call_id"] for item in items if item["type"] == "function_call_output"}
    for item in _current_turn(items):
        if item["type"] == "function_call" and item["call_id"] not in answered:
            raise bad_request(
                f"No tool output found for function call {item['call_id']}.", param="input"
            )


def _current_turn(items: Sequence[Json]) -> Sequence[Json]:
    """The items after the newest assistant message."""
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if item["type"] == "message" and item["role"] == "assistant":
            return items[index + 1 :]
    return items
