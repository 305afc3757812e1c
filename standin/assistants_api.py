"""``/v1/assistants`` and ``/v1/threads`` (threads and their messages).

Every handler reads its body before touching state: after the last ``await``
the rest runs without yielding, so checks and mutations cannot interleave.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from standin.config import LiveConfig
from standin.content_parts import message_file_ids, parse_attachments, parse_message_part
from standin.errors import bad_request, invalid_type, not_found, unknown_parameter
from standin.models import Assistant, Message, Thread, new_id, text_block
from standin.pagination import PageQuery, list_body, paginate
from standin.params import (
    Json,
    metadata,
    opt_list,
    opt_str,
    read_json,
    req_str,
)
from standin.run_engine import RunEngine
from standin.state import StandInState, ensure_can_add_message
from standin.web_util import json_response, note_ids

_TOOL_TYPES = frozenset({"code_interpreter", "file_search", "function"})
# ModifyThreadRequest has additionalProperties: false.
_MODIFIABLE_THREAD_FIELDS = frozenset({"metadata", "tool_resources"})
# Each tool's resource list, and how many entries the API allows in it.
_TOOL_RESOURCE_LISTS = {
    "code_interpreter": ("file_ids", 20),
    "file_search": ("vector_store_ids", 1),
}


class AssistantsApi:
    def __init__(self, state: StandInState, runs: RunEngine, config: LiveConfig) -> None:
        self._state = state
        self._runs = runs
        self._config = config

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/assistants", self.create_assistant),
            web.get("/v1/assistants", self.list_assistants),
            web.get("/v1/assistants/{assistant_id}", self.retrieve_assistant),
            web.delete("/v1/assistants/{assistant_id}", self.delete_assistant),
            web.post("/v1/threads", self.create_thread),
            web.get("/v1/threads/{thread_id}", self.retrieve_thread),
            web.post("/v1/threads/{thread_id}", self.modify_thread),
            web.delete("/v1/threads/{thread_id}", self.delete_thread),
            web.post("/v1/threads/{thread_id}/messages", self.create_message),
            web.get("/v1/threads/{thread_id}/messages", self.list_messages),
            web.get("/v1/threads/{thread_id}/messages/{message_id}", self.retrieve_message),
        ]

    def _assistant(self, assistant_id: str) -> Assistant:
        config = self._config.current
        return self._state.assistant(
            assistant_id, auto_create=config.auto_assistants, model=config.default_model
        )

    async def create_assistant(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        assistant = Assistant(
            id=new_id("asst"),
            model=req_str(body, "model"),
            created_at=time.time(),
            name=opt_str(body, "name"),
            description=opt_str(body, "description"),
            instructions=opt_str(body, "instructions"),
            tools=parse_tools(body) or [],
            metadata=metadata(body),
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
        )
        self._state.assistants[assistant.id] = assistant
        return json_response(assistant.to_api())

    async def list_assistants(self, request: web.Request) -> web.Response:
        query = PageQuery.parse(request.query)
        page, has_more = paginate(list(self._state.assistants.values()), _id, query)
        return json_response(list_body([item.to_api() for item in page], has_more))

    async def retrieve_assistant(self, request: web.Request) -> web.Response:
        return json_response(self._assistant(request.match_info["assistant_id"]).to_api())

    async def delete_assistant(self, request: web.Request) -> web.Response:
        assistant = self._assistant(request.match_info["assistant_id"])
        del self._state.assistants[assistant.id]
        return json_response({"id": assistant.id, "object": "assistant.deleted", "deleted": True})

    async def create_thread(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        thread = build_thread(body)
        self._state.ensure_files(message_file_refs(thread.messages))
        self._state.threads[thread.id] = thread
        note_ids(request, thread_id=thread.id)
        return json_response(thread.to_api())

    async def retrieve_thread(self, request: web.Request) -> web.Response:
        return json_response(self._state.thread(request.match_info["thread_id"]).to_api())

    async def modify_thread(self, request: web.Request) -> web.Response:
        """Only what the body names changes; metadata is replaced as a whole, not merged."""
        body = await read_json(request)
        only_fields(body, _MODIFIABLE_THREAD_FIELDS)
        new_metadata = None if body.get("metadata") is None else metadata(body)
        tool_resources = parse_tool_resources(body.get("tool_resources"))
        thread = self._state.thread(request.match_info["thread_id"])
        if new_metadata is not None:
            thread.metadata = new_metadata
        if tool_resources is not None:
            thread.tool_resources = tool_resources
        return json_response(thread.to_api())

    async def delete_thread(self, request: web.Request) -> web.Response:
        thread = self._state.thread(request.match_info["thread_id"])
        self._runs.abandon(thread)
        del self._state.threads[thread.id]
        return json_response({"id": thread.id, "object": "thread.deleted", "deleted": True})

    async def create_message(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        thread = self._state.thread(request.match_info["thread_id"])
        message = parse_new_message(body, thread.id)
        self._state.ensure_files(message_file_refs([message]))
        ensure_can_add_message(thread)
        thread.messages.append(message)
        return json_response(message.to_api())

    async def list_messages(self, request: web.Request) -> web.Response:
        thread = self._state.thread(request.match_info["thread_id"])
        query = PageQuery.parse(request.query)
        run_id = request.query.get("run_id")
        messages = thread.messages
        if run_id:
            messages = [message for message in messages if message.run_id == run_id]
        page, has_more = paginate(messages, _id, query)
        return json_response(list_body([message.to_api() for message in page], has_more))

    async def retrieve_message(self, request: web.Request) -> web.Response:
        thread = self._state.thread(request.match_info["thread_id"])
        message_id = request.match_info["message_id"]
        for message in thread.messages:
            if message.id == message_id:
                return json_response(message.to_api())
        raise not_found("message", message_id)


def _id(item: Assistant | Message) -> str:
    return item.id


def build_thread(body: Json, param_prefix: str = "") -> Thread:
    """A thread with its initial messages, not yet stored.

    ``param_prefix`` is where ``body`` sits in the request (``thread.`` for
    create-thread-and-run), so errors name the full path.
    """
    thread = Thread(id=new_id("thread"), created_at=time.time(), metadata=metadata(body))
    raw_messages = opt_list(body, "messages") or []
    thread.messages = [
        parse_new_message(raw, thread.id, param=f"{param_prefix}messages[{index}]")
        for index, raw in enumerate(raw_messages)
    ]
    return thread


def parse_new_message(raw: Any, thread_id: str, param: str | None = None) -> Message:
    prefix = f"{param}." if param else ""
    if not isinstance(raw, dict):
        raise bad_request(f"'{param}' must be an object.", param=param)
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise bad_request("'role' must be 'user' or 'assistant'.", param=f"{prefix}role")
    return Message(
        id=new_id("msg"),
        thread_id=thread_id,
        role=role,
        content=_parse_content(raw.get("content"), f"{prefix}content"),
        created_at=time.time(),
        metadata=metadata(raw),
        attachments=parse_attachments(raw.get("attachments"), f"{prefix}attachments"),
    )


def _parse_content(content: object, param: str) -> list[Json]:
    if isinstance(content, str):
        return [text_block(content)]
    if not isinstance(content, list) or not content:
        raise bad_request("'content' must be a string or a non-empty array.", param=param)
    return [parse_message_part(part, f"{param}[{index}]") for index, part in enumerate(content)]


def message_file_refs(messages: Iterable[Message]) -> list[str]:
    """The uploaded files that new messages name, for ``StandInState.ensure_files``."""
    return [
        file_id
        for message in messages
        for file_id in message_file_ids(message.content, message.attachments)
    ]


def only_fields(body: Json, allowed: frozenset[str], param: str = "") -> None:
    """Refuse fields a request schema with ``additionalProperties: false`` does not name."""
    for key in body:
        if key not in allowed:
            raise unknown_parameter(f"{param}.{key}" if param else key)


def parse_tool_resources(raw: object) -> Json | None:
    """A thread's ``tool_resources`` (None when not given), checked against the reference."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid_type("tool_resources", "an object", raw)
    for tool, resources in raw.items():
        if tool not in _TOOL_RESOURCE_LISTS:
            raise unknown_parameter(f"tool_resources.{tool}")
        _check_resource_list(tool, resources)
    return raw


def _check_resource_list(tool: str, resources: object) -> None:
    param = f"tool_resources.{tool}"
    if not isinstance(resources, dict):
        raise invalid_type(param, "an object", resources)
    key, most = _TOOL_RESOURCE_LISTS[tool]
    for name, ids in resources.items():
        if name != key:
            raise unknown_parameter(f"{param}.{name}")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise invalid_type(f"{param}.{key}", "an array of strings", ids)
        if len(ids) > most:
            raise bad_request(
                f"'{param}.{key}' may hold at most {most} IDs.", param=f"{param}.{key}"
            )


def parse_tools(body: Json) -> list[Json] | None:
    tools = opt_list(body, "tools")
    if tools is None:
        return None
    for index, tool in enumerate(tools):
        valid = isinstance(tool, dict) and tool.get("type") in _TOOL_TYPES
        if valid and tool["type"] == "function":
            function = tool.get("function")
            valid = isinstance(function, dict) and isinstance(function.get("name"), str)
        if not valid:
            raise bad_request("Invalid tool definition.", param=f"tools[{index}]")
    return tools
