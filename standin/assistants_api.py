"""``/v1/assistants`` and ``/v1/threads`` (threads and their messages).

Every handler reads its body before touching state: after the last ``await``
the rest runs without yielding, so checks and mutations cannot interleave.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from standin.config import LiveConfig
from standin.content_parts import message_file_ids, parse_attachments, parse_message_part
from standin.errors import (
    bad_request,
    invalid_type,
    invalid_value,
    missing_parameter,
    not_found,
    unknown_parameter,
)
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
# These request schemas have additionalProperties: false.
_MODIFIABLE_THREAD_FIELDS = frozenset({"metadata", "tool_resources"})
_NEW_THREAD_FIELDS = frozenset({"messages", "metadata", "tool_resources"})
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
            web.post("/v1/assistants/{assistant_id}", self.modify_assistant),
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
        fields = _assistant_fields(body)
        if "model" not in fields:
            raise missing_parameter("model")
        self._state.ensure_tool_resources(fields.get("tool_resources", {}))
        assistant = Assistant(id=new_id("asst"), model=fields.pop("model"), created_at=time.time())
        assistant = dataclasses.replace(assistant, **fields)
        self._state.assistants[assistant.id] = assistant
        return json_response(assistant.to_api())

    async def modify_assistant(self, request: web.Request) -> web.Response:
        """Only what the body names changes; a null clears a nullable field."""
        body = await read_json(request)
        fields = _assistant_fields(body)
        self._state.ensure_tool_resources(fields.get("tool_resources", {}))
        assistant = dataclasses.replace(
            self._assistant(request.match_info["assistant_id"]), **fields
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
        self._state.ensure_tool_resources(thread.tool_resources)
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
        self._state.ensure_tool_resources(tool_resources or {})
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
    only_fields(body, _NEW_THREAD_FIELDS, param_prefix.removesuffix("."))
    thread = Thread(
        id=new_id("thread"),
        created_at=time.time(),
        metadata=metadata(body),
        tool_resources=parse_tool_resources(
            body.get("tool_resources"), f"{param_prefix}tool_resources"
        )
        or {},
    )
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


def parse_tool_resources(raw: object, param: str = "tool_resources") -> Json | None:
    """``tool_resources`` (None when not given), checked against the reference.

    Whether the stores and files they name exist is
    ``StandInState.ensure_tool_resources``'s to check.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    for tool, resources in raw.items():
        if tool not in _TOOL_RESOURCE_LISTS:
            raise unknown_parameter(f"{param}.{tool}")
        _check_resource_list(tool, resources, f"{param}.{tool}")
    return raw


def _check_resource_list(tool: str, resources: object, param: str) -> None:
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
        if tool["type"] == "file_search":
            _check_file_search_settings(tool.get("file_search"), f"tools[{index}].file_search")
    return tools


def _check_file_search_settings(raw: object, param: str) -> None:
    """``AssistantToolsFileSearch.file_search``: how many passages, and how good."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    only_fields(raw, frozenset({"max_num_results", "ranking_options"}), param)
    if raw.get("max_num_results") is not None:
        _integer_in(1, _MAX_SEARCH_RESULTS)(raw["max_num_results"], f"{param}.max_num_results")
    ranking = raw.get("ranking_options")
    if ranking is None:
        return
    if not isinstance(ranking, dict):
        raise invalid_type(f"{param}.ranking_options", "an object", ranking)
    only_fields(ranking, frozenset({"ranker", "score_threshold"}), f"{param}.ranking_options")
    if "score_threshold" not in ranking:
        raise missing_parameter(f"{param}.ranking_options.score_threshold")
    _number_in(0, 1)(ranking["score_threshold"], f"{param}.ranking_options.score_threshold")
    if ranking.get("ranker") is not None:
        _choice(_RANKERS)(ranking["ranker"], f"{param}.ranking_options.ranker")


# Generation options, shared by assistants and runs. Each parser takes the value and
# its parameter's path, and returns the value to keep or raises the API's 400.
OptionParser = Callable[[Any, str], Any]
_MAX_SEARCH_RESULTS = 50
_MIN_TOKEN_LIMIT = 256
_RANKERS = ("auto", "default_2024_08_21")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_TOOL_CHOICE_MODES = ("none", "auto", "required")
_NAMED_TOOL_CHOICES = ("function", "code_interpreter", "file_search")
_TRUNCATION_TYPES = ("auto", "last_messages")
_RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def _number_in(low: float, high: float) -> Callable[[Any, str], float]:
    def parse(value: Any, param: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid_type(param, "a number", value)
        if not low <= value <= high:
            raise bad_request(f"'{param}' must be between {low} and {high}.", param=param)
        return value

    return parse


def _integer_in(low: int, high: int | None = None) -> Callable[[Any, str], int]:
    def parse(value: Any, param: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_type(param, "an integer", value)
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise bad_request(f"'{param}' must be {bounds}.", param=param)
        return value

    return parse


def _choice(allowed: Sequence[str]) -> Callable[[Any, str], str]:
    def parse(value: Any, param: str) -> str:
        if value not in allowed:
            raise invalid_value(value, allowed, param)
        return str(value)

    return parse


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise invalid_type(param, "a boolean", value)
    return value


def _tool_choice(value: Any, param: str) -> str | Json:
    if isinstance(value, str):
        return _choice(_TOOL_CHOICE_MODES)(value, param)
    if not isinstance(value, dict):
        raise invalid_type(param, "a string or an object", value)
    only_fields(value, frozenset({"type", "function"}), param)
    kind = _choice(_NAMED_TOOL_CHOICES)(value.get("type"), f"{param}.type")
    function = value.get("function")
    if kind == "function" and not (isinstance(function, dict) and "name" in function):
        raise missing_parameter(f"{param}.function.name")
    named: Json = value
    return named


def _truncation_strategy(value: Any, param: str) -> Json:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    only_fields(value, frozenset({"type", "last_messages"}), param)
    kind = _choice(_TRUNCATION_TYPES)(value.get("type"), f"{param}.type")
    last = value.get("last_messages")
    if last is not None:
        _integer_in(1)(last, f"{param}.last_messages")
    return {"type": kind, "last_messages": last}


def _response_format(value: Any, param: str) -> str | Json:
    if value == "auto":
        return "auto"
    if not isinstance(value, dict):
        raise invalid_type(param, "'auto' or an object", value)
    kind = _choice(_RESPONSE_FORMAT_TYPES)(value.get("type"), f"{param}.type")
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise missing_parameter(f"{param}.json_schema.name")
    response_format: Json = value
    return response_format


_OPTION_PARSERS: dict[str, OptionParser] = {
    "temperature": _number_in(0, 2),
    "top_p": _number_in(0, 1),
    "max_prompt_tokens": _integer_in(_MIN_TOKEN_LIMIT),
    "max_completion_tokens": _integer_in(_MIN_TOKEN_LIMIT),
    "parallel_tool_calls": _boolean,
    "reasoning_effort": _choice(_REASONING_EFFORTS),
    "tool_choice": _tool_choice,
    "truncation_strategy": _truncation_strategy,
    "response_format": _response_format,
}


def generation_options(body: Json, names: Iterable[str]) -> Json:
    """The options among ``names`` that ``body`` sets, checked; a null sets nothing."""
    return {
        name: _OPTION_PARSERS[name](body[name], name)
        for name in names
        if body.get(name) is not None
    }


def _option(name: str) -> Callable[[Json], Any]:
    return lambda body: generation_options(body, [name]).get(name)


# CreateAssistantRequest and ModifyAssistantRequest name the same fields; model is
# required on create only. Each entry reads its field from a body that names it.
_ASSISTANT_FIELDS: dict[str, Callable[[Json], Any]] = {
    "model": lambda body: req_str(body, "model"),
    "name": lambda body: opt_str(body, "name"),
    "description": lambda body: opt_str(body, "description"),
    "instructions": lambda body: opt_str(body, "instructions"),
    "tools": lambda body: parse_tools(body) or [],
    "tool_resources": lambda body: parse_tool_resources(body["tool_resources"]) or {},
    "metadata": metadata,
    "temperature": _option("temperature"),
    "top_p": _option("top_p"),
    "response_format": _option("response_format"),
    "reasoning_effort": _option("reasoning_effort"),
}


def _assistant_fields(body: Json) -> dict[str, Any]:
    """The assistant fields ``body`` names, parsed; a null ``metadata`` changes nothing."""
    only_fields(body, frozenset(_ASSISTANT_FIELDS))
    return {
        name: read(body)
        for name, read in _ASSISTANT_FIELDS.items()
        if name in body and not (name == "metadata" and body[name] is None)
    }
