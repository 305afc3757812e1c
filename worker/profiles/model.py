"""What a profile is, once loaded: plain frozen values the relay reads and never changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from worker.toolkit import Grant, ToolHandler


@dataclass(frozen=True, slots=True)
class Generation:
    """Generation options; None leaves the API's default."""

    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: str | None = None  # minimal, low, medium, high: reasoning models only


# What a function tool's call may take when its profile does not say.
DEFAULT_TOOL_TIMEOUT_S = 30.0


class HandlerKind(StrEnum):
    """How the profile names a function tool's handler (shown by `profiles check`)."""

    PYTHON = "python"  # `handler = "module:attribute"`
    ENTRY_POINT = "entry_point"  # `entry_point = "name"` in the assistant_worker.tools group
    HTTP = "http"  # `url = "..."`: an HTTP tool


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the model may call, served by the worker: a Python callable or a URL."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler
    grants: frozenset[Grant] = frozenset()
    # May run twice for one call ID (after a crash, or a retried HTTP request).
    idempotent: bool = False
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    # The reply's tool_calls summary shows the call's arguments (model output: may quote
    # the customer, so off unless the profile says so).
    show_arguments: bool = False
    handler_kind: HandlerKind = HandlerKind.PYTHON


@dataclass(frozen=True, slots=True)
class FileSearch:
    """File search over vector stores: ones named by ID, and the profile's knowledge, which
    `assistant-worker assistants sync` puts into a vector store of its own."""

    vector_store_ids: tuple[str, ...] = ()
    # Files and folders, resolved against the profiles file's folder.
    knowledge: tuple[Path, ...] = ()
    max_num_results: int | None = None
    # The vector store `assistants sync` made for the knowledge (filled in at start).
    knowledge_store_id: str | None = None

    @property
    def store_ids(self) -> tuple[str, ...]:
        extra = () if self.knowledge_store_id is None else (self.knowledge_store_id,)
        return (*self.vector_store_ids, *extra)


class Unapproved(StrEnum):
    """What becomes of an MCP approval request for a tool not in `approve`."""

    DENY = "deny"  # answered with a refusal; the run goes on without the tool
    HANDOFF = "handoff"  # denied, and the conversation handed to a human


@dataclass(frozen=True, slots=True)
class McpServer:
    """A remote MCP server the Responses API calls itself (the `mcp` tool)."""

    label: str
    url: str
    allowed_tools: tuple[str, ...] | None = None  # None: all the server offers
    approve: frozenset[str] = frozenset()  # tools that run without asking
    unapproved: Unapproved = Unapproved.DENY
    # Sent as the `authorization` of the tool; read from the environment at start.
    authorization: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HostedTools:
    """Tools the API runs itself."""

    file_search: FileSearch | None = None
    code_interpreter: bool = False
    web_search: bool = False
    mcp: tuple[McpServer, ...] = ()

    def beyond_assistants(self) -> tuple[str, ...]:
        """The keys of the tools in use that the Assistants API has no counterpart for."""
        used = (("web_search", self.web_search), ("mcp", bool(self.mcp)))
        return tuple(key for key, on in used if on)


@dataclass(frozen=True, slots=True)
class Profile:
    """One assistant: the model that answers, what it is told, and what it may use."""

    name: str
    model: str
    instructions: str
    generation: Generation = Generation()
    tools: tuple[FunctionTool, ...] = ()
    hosted: HostedTools = HostedTools()
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Assistants backend: the assistant object this profile maps to (else the one
    # `assistants sync` made for it).
    assistant_id: str | None = None
    # Assistants backend: runs carry the profile's model, instructions, tools and options,
    # overriding the assistant object's. Off for the AW_MODEL shorthand, where the assistant
    # object (AW_ASSISTANT_ID) decides, as it always has.
    overrides_assistant: bool = True

    def function(self, name: str) -> FunctionTool | None:
        return next((t for t in self.tools if t.name == name), None)


@dataclass(frozen=True, slots=True)
class Route:
    """Chooses `profile` for an event whose fields equal all of `when` (`metadata.<key>`,
    `author.id`; a list of values matches any of them)."""

    profile: str
    when: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Profiles:
    """Every profile of the deployment, the routes between them, and the default."""

    profiles: Mapping[str, Profile]
    default: str
    routes: tuple[Route, ...] = ()
    # Where the file was read from (None: the AW_MODEL / AW_INSTRUCTIONS shorthand).
    source: Path | None = None

    def __getitem__(self, name: str) -> Profile:
        return self.profiles[name]
