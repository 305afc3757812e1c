"""``/v1/responses``: background responses on the stand-in clock."""

from __future__ import annotations

from aiohttp import web

from standin.config import LiveConfig
from standin.conversation_items import items_file_ids, parse_input
from standin.errors import bad_request
from standin.pagination import PageQuery, list_body, paginate
from standin.params import (
    Json,
    metadata,
    opt_bool,
    opt_list,
    opt_str,
    read_json,
    reject_streaming,
    req_str,
)
from standin.response_engine import ResponseEngine, ResponseSpec
from standin.response_models import Conversation, ResponseRecord
from standin.response_options import parse_options
from standin.response_tools import check_tool_declaration
from standin.state import StandInState
from standin.web_util import json_response, note_ids, poll_headers


class ResponsesApi:
    def __init__(self, state: StandInState, responses: ResponseEngine, config: LiveConfig) -> None:
        self._state = state
        self._responses = responses
        self._config = config

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/responses", self.create),
            web.get("/v1/responses/{response_id}", self.retrieve),
            web.post("/v1/responses/{response_id}/cancel", self.cancel),
            web.get("/v1/responses/{response_id}/input_items", self.input_items),
        ]

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reject_streaming(body)
        background = opt_bool(body, "background") or False
        if background and opt_bool(body, "store") is not True:
            raise bad_request("Background mode requires store=true.", param="store")
        model = req_str(body, "model")
        options = parse_options(body, model)
        conversation = self._conversation(body)
        spec = ResponseSpec(
            model=model,
            instructions=opt_str(body, "instructions"),
            metadata=metadata(body),
            tools=_tools(body),
            background=background,
            input_items=self._input_items(body),
            options=options,
        )
        record = self._responses.create(spec, conversation)
        note_ids(request, response_id=record.id, **_conversation_ids(record))
        if not background:
            await record.settled.wait()
        return json_response(record.to_api())

    def _input_items(self, body: Json) -> list[Json]:
        if body.get("input") is None:
            return []
        items = parse_input(body["input"])
        self._state.ensure_files(items_file_ids(items))
        return items

    def _conversation(self, body: Json) -> Conversation | None:
        raw = body.get("conversation")
        if raw is None:
            return None
        conversation_id = raw.get("id") if isinstance(raw, dict) else raw
        if not isinstance(conversation_id, str):
            raise bad_request(
                "'conversation' must be an id or {\"id\": ...}.", param="conversation"
            )
        return self._state.conversation(conversation_id)

    def _record(self, request: web.Request) -> ResponseRecord:
        record = self._state.response(request.match_info["response_id"])
        note_ids(request, **_conversation_ids(record))
        return record

    async def retrieve(self, request: web.Request) -> web.Response:
        if request.query.get("stream") == "true":
            raise bad_request("The stand-in does not support streaming.", param="stream")
        record = self._record(request)
        return json_response(record.to_api(), headers=poll_headers(self._config, record.active))

    async def cancel(self, request: web.Request) -> web.Response:
        record = self._record(request)
        self._responses.cancel(record)
        return json_response(record.to_api())

    async def input_items(self, request: web.Request) -> web.Response:
        record = self._record(request)
        page, has_more = paginate(record.input_items, _item_id, PageQuery.parse(request.query))
        return json_response(list_body(page, has_more))


def _item_id(item: Json) -> str:
    return str(item["id"])


def _conversation_ids(record: ResponseRecord) -> dict[str, str]:
    return {"conversation_id": record.conversation_id} if record.conversation_id else {}


def _tools(body: Json) -> list[Json]:
    tools = opt_list(body, "tools") or []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request("Invalid tool definition.", param=f"tools[{index}]")
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            raise bad_request("Function tools need a 'name'.", param=f"tools[{index}]")
        check_tool_declaration(tool, f"tools[{index}]")
    return tools
