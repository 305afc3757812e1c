"""Remote MCP servers (tools of type ``mcp``), as the Responses API runs them.

A ``[[mcp:LABEL:TOOL {json}]]`` marker calls TOOL on the declared server LABEL. The first
time a conversation uses a server, the response lists its tools (``mcp_list_tools``).
Then, per ``require_approval`` (default ``always``), the call either runs at once
(``mcp_call`` with its output, and the reply reports it) or the response stops at an
``mcp_approval_request`` that the client answers in a follow-up with an
``mcp_approval_response``: approved, the call runs then; denied, the reply says so.

The stand-in's MCP servers have exactly the tools a test names (scripted ones plus
``allowed_tools``), none annotated read-only, so a ``read_only`` filter matches none of
them. A tool ``allowed_tools`` leaves out is unknown to the model, and calling it fails
as an MCP server answers an unknown tool (JSON-RPC -32602).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from standin.errors import (
    bad_request,
    invalid_type,
    invalid_value,
    missing_parameter,
    unknown_parameter,
)
from standin.models import Json, new_id
from standin.replies import ReplyNote
from standin.tool_script import ScriptedMcpCall

if TYPE_CHECKING:
    from standin.response_models import ResponseRecord

_APPROVAL_MODES = ("always", "never")
_FILTER_FIELDS = frozenset({"tool_names", "read_only"})
_SERVER_LOCATORS = ("server_url", "connector_id", "tunnel_id")
_UNKNOWN_TOOL = -32602


def check_mcp_tool(tool: Json, param: str) -> None:
    """The declaration's own checks: a label, a server, and well-formed filters."""
    if not isinstance(tool.get("server_label"), str):
        raise missing_parameter(f"{param}.server_label")
    if not any(isinstance(tool.get(field), str) for field in _SERVER_LOCATORS):
        raise bad_request(
            "One of 'server_url', 'connector_id' or 'tunnel_id' must be provided.", param=param
        )
    _check_allowed_tools(tool.get("allowed_tools"), f"{param}.allowed_tools")
    _check_require_approval(tool.get("require_approval"), f"{param}.require_approval")


def _check_allowed_tools(value: Any, param: str) -> None:
    if value is None:
        return
    if isinstance(value, list):
        _check_names(value, param)
    else:
        _check_filter(value, param)


def _check_require_approval(value: Any, param: str) -> None:
    if value is None:
        return
    if isinstance(value, str):
        if value not in _APPROVAL_MODES:
            raise invalid_value(value, _APPROVAL_MODES, param)
        return
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    for key, tool_filter in value.items():
        if key not in _APPROVAL_MODES:
            raise unknown_parameter(f"{param}.{key}")
        _check_filter(tool_filter, f"{param}.{key}")


def _check_filter(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    for key in value:
        if key not in _FILTER_FIELDS:
            raise unknown_parameter(f"{param}.{key}")
    if value.get("tool_names") is not None:
        _check_names(value["tool_names"], f"{param}.tool_names")


def _check_names(value: Any, param: str) -> None:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise invalid_type(param, "an array of strings", value)


class McpTurn:
    """The MCP part of one response: its output items and what the reply says."""

    def __init__(self, tools: Sequence[Json], history: Sequence[Json]) -> None:
        self._servers = {tool["server_label"]: tool for tool in tools if tool.get("type") == "mcp"}
        self._history = history
        self.items: list[Json] = []
        self.notes: list[ReplyNote] = []
        self.awaits_approval = False

    def call(self, calls: Sequence[ScriptedMcpCall]) -> None:
        """The scripted calls of a turn's first response, after each new server's listing."""
        for label in dict.fromkeys(call.server_label for call in calls):
            server = self._server(label)
            if not self._listed_before(label):
                scripted = [call.tool for call in calls if call.server_label == label]
                self.items.append(_list_tools_item(server, scripted))
        for call in calls:
            self._call(self._server(call.server_label), call.tool, call.arguments)

    def answer(self, approval: Json) -> None:
        """An ``mcp_approval_response`` in a follow-up's input."""
        request = self._approval_request(approval["approval_request_id"])
        label, tool = request["server_label"], request["name"]
        if not approval["approve"]:
            reason = f": {approval['reason']}" if approval.get("reason") else ""
            self.notes.append(ReplyNote(f"mcp {label}.{tool} was not approved{reason}"))
            return
        self._run(self._server(label), tool, request["arguments"], request["id"])

    def _call(self, server: Json, tool: str, arguments: str) -> None:
        if _allowed(server, tool) and _needs_approval(server, tool):
            self.items.append(_approval_request_item(server["server_label"], tool, arguments))
            self.awaits_approval = True
        else:
            self._run(server, tool, arguments, None)

    def _run(self, server: Json, tool: str, arguments: str, request_id: str | None) -> None:
        label = server["server_label"]
        item = _call_item(label, tool, arguments, request_id)
        if _allowed(server, tool):
            item.update(output=mcp_output(tool, arguments), status="completed")
            self.notes.append(ReplyNote(f"mcp {label}.{tool} said: {item['output']}"))
        else:
            message = f"Unknown tool: {tool}"
            item.update(
                error={"type": "mcp_protocol_error", "code": _UNKNOWN_TOOL, "message": message},
                status="failed",
            )
            self.notes.append(ReplyNote(f"mcp {label}.{tool} failed: {message}"))
        self.items.append(item)

    def _server(self, label: str) -> Json:
        server = self._servers.get(label)
        if server is None:
            raise bad_request(
                f"No mcp tool with server_label '{label}' is declared in 'tools'.", param="tools"
            )
        return server

    def _listed_before(self, label: str) -> bool:
        return any(
            item["type"] == "mcp_list_tools" and item["server_label"] == label
            for item in self._history
        )

    def _approval_request(self, request_id: str) -> Json:
        for item in self._history:
            if item["type"] == "mcp_approval_request" and item["id"] == request_id:
                return item
        raise bad_request(f"No MCP approval request found with id '{request_id}'.", param="input")


def shown_tools(tools: Sequence[Json]) -> list[Json]:
    """The declarations as the response object shows them. For MCP servers the API keeps
    neither the ``authorization`` token nor header values, and drops ``server_url``'s path,
    since an authenticated URL may carry a secret there."""
    return [_shown_mcp_tool(tool) if tool["type"] == "mcp" else tool for tool in tools]


def _shown_mcp_tool(tool: Json) -> Json:
    shown = {key: value for key, value in tool.items() if key != "authorization"}
    if "headers" in shown:
        shown["headers"] = None
    if isinstance(shown.get("server_url"), str):
        url = urlsplit(shown["server_url"])
        shown["server_url"] = f"{url.scheme}://{url.netloc}"
    return shown


def mcp_output(tool: str, arguments: str) -> str:
    """What the stand-in's MCP servers answer: the call itself, so a test can check it."""
    return f"result of {tool}({arguments})"


def mcp_calls(responses: Iterable[ResponseRecord]) -> list[Json]:
    """Every MCP call settled responses made, oldest response first, with where it went.

    Whether an ``authorization`` token or which ``headers`` were sent is kept, never their
    values: they are secrets.
    """
    calls: list[Json] = []
    for record in responses:
        servers = {tool["server_label"]: tool for tool in record.tools if tool["type"] == "mcp"}
        for item in record.output:
            if item["type"] == "mcp_call":
                calls.append(_call_record(record.id, servers[item["server_label"]], item))
    return calls


def _call_record(response_id: str, server: Json, item: Json) -> Json:
    return {
        "response_id": response_id,
        "server_label": item["server_label"],
        "server_url": server.get("server_url"),
        "name": item["name"],
        "arguments": json.loads(item["arguments"]),
        "approval_request_id": item["approval_request_id"],
        "output": item["output"],
        "error": item["error"],
        "authorization_sent": server.get("authorization") is not None,
        "header_names": sorted(server.get("headers") or {}),
    }


def _allowed(server: Json, tool: str) -> bool:
    names = _allowed_names(server)
    return names is None or tool in names


def _allowed_names(server: Json) -> list[str] | None:
    """The names ``allowed_tools`` lets through, or None when it restricts nothing."""
    allowed = server.get("allowed_tools")
    if allowed is None:
        return None
    return list(allowed if isinstance(allowed, list) else allowed.get("tool_names") or [])


def _needs_approval(server: Json, tool: str) -> bool:
    """``always`` unless the policy says ``never`` for all tools or names this one under
    ``never`` (and not under ``always``, which wins)."""
    policy = server.get("require_approval")
    if policy is None or isinstance(policy, str):
        return policy != "never"
    if _names(policy.get("always"), tool):
        return True
    return not _names(policy.get("never"), tool)


def _names(tool_filter: Json | None, tool: str) -> bool:
    return tool_filter is not None and tool in (tool_filter.get("tool_names") or [])


def _list_tools_item(server: Json, scripted: Sequence[str]) -> Json:
    known = dict.fromkeys([*scripted, *(_allowed_names(server) or [])])
    names = [name for name in known if _allowed(server, name)]
    return {
        "id": new_id("mcpl"),
        "type": "mcp_list_tools",
        "server_label": server["server_label"],
        "tools": [
            {
                "name": name,
                "input_schema": {"type": "object"},
                "description": None,
                "annotations": {"read_only": False},
            }
            for name in names
        ],
        "error": None,
    }


def _approval_request_item(label: str, tool: str, arguments: str) -> Json:
    return {
        "id": new_id("mcpr"),
        "type": "mcp_approval_request",
        "server_label": label,
        "name": tool,
        "arguments": arguments,
    }


def _call_item(label: str, tool: str, arguments: str, request_id: str | None) -> Json:
    return {
        "id": new_id("mcp"),
        "type": "mcp_call",
        "server_label": label,
        "name": tool,
        "arguments": arguments,
        "approval_request_id": request_id,
        "output": None,
        "error": None,
        "status": "completed",
    }
