"""Scripted tool use: markers in the newest user text that make the stand-in's "model" call
tools, so a test can drive a turn through function calls, MCP and the code interpreter.

- ``[[call:NAME {"key": "value"}]]`` calls function NAME with exactly those arguments (the
  JSON object is optional: without it every declared string parameter gets the user's text).
  Several call markers in one text are parallel calls of one turn, in order.
- ``[[mcp:LABEL:TOOL {"key": "value"}]]`` calls TOOL on the MCP server labelled LABEL.
- ``[[code_file:NAME]]`` has the code interpreter write a file called NAME.

Markers only script the first response (or run) of a turn; the follow-up that carries the
outputs answers in text. A marker with bad JSON is refused with a 400, so a test never passes
by a typo.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from standin.errors import bad_request

_CALL = re.compile(r"\[\[call:([A-Za-z0-9_-]{1,64})(?: (\{.*?\}))?\]\]")
_MCP = re.compile(r"\[\[mcp:([A-Za-z0-9_-]{1,64}):([A-Za-z0-9_.-]{1,64})(?: (\{.*?\}))?\]\]")
_CODE_FILE = re.compile(r"\[\[code_file:([A-Za-z0-9_.-]{1,128})\]\]")


@dataclass(frozen=True)
class ScriptedCall:
    """A function call: ``arguments`` is JSON text, or None to fill from the declaration."""

    name: str
    arguments: str | None


@dataclass(frozen=True)
class ScriptedMcpCall:
    server_label: str
    tool: str
    arguments: str


@dataclass(frozen=True)
class ToolScript:
    calls: tuple[ScriptedCall, ...] = ()
    mcp_calls: tuple[ScriptedMcpCall, ...] = ()
    code_file: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.calls or self.mcp_calls or self.code_file)


def parse_tool_script(text: str | None) -> ToolScript:
    text = text or ""
    calls = tuple(ScriptedCall(m[1], _object(m[2])) for m in _CALL.finditer(text))
    mcp_calls = tuple(
        ScriptedMcpCall(m[1], m[2], _object(m[3]) or "{}") for m in _MCP.finditer(text)
    )
    code = _CODE_FILE.search(text)
    return ToolScript(calls, mcp_calls, code[1] if code else None)


def _object(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad_request(f"The stand-in tool marker's arguments are not JSON: {exc.msg}.") from exc
    if not isinstance(value, dict):
        raise bad_request("The stand-in tool marker's arguments must be a JSON object.")
    return json.dumps(value)
