"""A profile's tools and options in each API's wire form.

Built once per profile and sent as they are (Responses takes the tools with every request;
Assistants runs take them as an override of the assistant object's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.profiles.model import FunctionTool, Generation, McpServer, Profile
from worker.relay.tools import (
    HANDOFF_DESCRIPTION,
    HANDOFF_PARAMETERS,
    HANDOFF_TOOL,
    handoff_declaration,
)


def responses_tools(profile: Profile) -> list[dict[str, Any]]:
    """Function tools (the profile's and handoff_to_human), then the hosted ones."""
    tools: list[dict[str, Any]] = [_function(t) for t in profile.tools]
    tools.append(_flat_function(HANDOFF_TOOL, HANDOFF_DESCRIPTION, HANDOFF_PARAMETERS))
    hosted = profile.hosted
    search = hosted.file_search
    if search is not None and search.store_ids:
        tool: dict[str, Any] = {"type": "file_search", "vector_store_ids": list(search.store_ids)}
        if search.max_num_results is not None:
            tool["max_num_results"] = search.max_num_results
        tools.append(tool)
    if hosted.code_interpreter:
        tools.append({"type": "code_interpreter", "container": {"type": "auto"}})
    if hosted.web_search:
        tools.append({"type": "web_search"})
    tools.extend(_mcp(server) for server in hosted.mcp)
    return tools


def assistants_tools(profile: Profile) -> list[dict[str, Any]]:
    """The same on an assistant or a run (functions nested; no web search or MCP there)."""
    tools: list[dict[str, Any]] = [
        {"type": "function", "function": _declared(t.name, t.description, t.parameters)}
        for t in profile.tools
    ]
    tools.append(handoff_declaration())
    search = profile.hosted.file_search
    if search is not None:
        tool: dict[str, Any] = {"type": "file_search"}
        if search.max_num_results is not None:
            tool["file_search"] = {"max_num_results": search.max_num_results}
        tools.append(tool)
    if profile.hosted.code_interpreter:
        tools.append({"type": "code_interpreter"})
    return tools


def responses_options(profile: Profile) -> dict[str, Any]:
    """Generation options for responses.create; unset ones are left to the API."""
    return _options(profile.generation, "max_output_tokens", lambda e: {"reasoning": {"effort": e}})


def assistants_options(profile: Profile) -> dict[str, Any]:
    """The same for runs.create, in the Assistants API's words."""
    return _options(profile.generation, "max_completion_tokens", lambda e: {"reasoning_effort": e})


def _options(
    g: Generation, max_tokens: str, reasoning: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if g.temperature is not None:
        options["temperature"] = g.temperature
    if g.max_output_tokens is not None:
        options[max_tokens] = g.max_output_tokens
    if g.reasoning_effort is not None:
        options.update(reasoning(g.reasoning_effort))
    return options


def _function(tool: FunctionTool) -> dict[str, Any]:
    return _flat_function(tool.name, tool.description, tool.parameters)


def _flat_function(name: str, description: str, parameters: Any) -> dict[str, Any]:
    return {**_declared(name, description, parameters), "type": "function", "strict": False}


def _declared(name: str, description: str, parameters: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "parameters": dict(parameters)}


def _mcp(server: McpServer) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "type": "mcp",
        "server_label": server.label,
        "server_url": server.url,
        # Tools in `approve` run without asking; any other needs an approval, which the
        # worker answers by the profile's policy (worker/relay/approvals.py).
        "require_approval": {"never": {"tool_names": sorted(server.approve)}}
        if server.approve
        else "always",
    }
    if server.allowed_tools is not None:
        tool["allowed_tools"] = list(server.allowed_tools)
    if server.authorization is not None:
        tool["authorization"] = server.authorization
    return tool
