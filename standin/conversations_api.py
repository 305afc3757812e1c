"""``/v1/conversations`` and their items."""

from __future__ import annotations

import time

from aiohttp import web

from standin.conversation_items import items_file_ids, parse_input
from standin.errors import bad_request, not_found
from standin.models import Json, new_id
from standin.pagination import PageQuery, list_body, paginate
from standin.params import metadata, read_json
from standin.response_engine import ResponseEngine
from standin.response_models import Conversation
from standin.state import StandInState, ensure_conversation_unlocked
from standin.web_util import json_response, note_ids

_MAX_ITEMS_PER_REQUEST = 20


class ConversationsApi:
    def __init__(self, state: StandInState, responses: ResponseEngine) -> None:
        self._state = state
        self._responses = responses

    def routes(self) -> list[web.RouteDef]:
        path = "/v1/conversations/{conversation_id}"
        return [
            web.post("/v1/conversations", self.create),
            web.get(path, self.retrieve),
            web.post(path, self.update),
            web.delete(path, self.delete),
            web.get(f"{path}/items", self.list_items),
            web.post(f"{path}/items", self.add_items),
            web.get(f"{path}/items/{{item_id}}", self.retrieve_item),
        ]

    def _items(self, body: Json, *, required: bool) -> list[Json]:
        items = _parse_items(body, required=required)
        self._state.ensure_files(items_file_ids(items))
        return items

    def _conversation(self, request: web.Request) -> Conversation:
        return self._state.conversation(request.match_info["conversation_id"])

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        conversation = Conversation(
            id=new_id("conv"),
            created_at=time.time(),
            metadata=metadata(body),
            items=self._items(body, required=False),
        )
        self._state.conversations[conversation.id] = conversation
        note_ids(request, conversation_id=conversation.id)
        return json_response(conversation.to_api())

    async def retrieve(self, request: web.Request) -> web.Response:
        return json_response(self._conversation(request).to_api())

    async def update(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        conversation = self._conversation(request)
        conversation.metadata = metadata(body)
        return json_response(conversation.to_api())

    async def delete(self, request: web.Request) -> web.Response:
        conversation = self._conversation(request)
        self._responses.abandon(conversation)
        del self._state.conversations[conversation.id]
        return json_response(
            {"id": conversation.id, "object": "conversation.deleted", "deleted": True}
        )

    async def list_items(self, request: web.Request) -> web.Response:
        conversation = self._conversation(request)
        query = PageQuery.parse(request.query)
        page, has_more = paginate(conversation.items, _item_id, query)
        return json_response(list_body(page, has_more))

    async def add_items(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        conversation = self._conversation(request)
        items = self._items(body, required=True)
        ensure_conversation_unlocked(conversation)
        conversation.items.extend(items)
        return json_response(list_body(items, has_more=False))

    async def retrieve_item(self, request: web.Request) -> web.Response:
        conversation = self._conversation(request)
        item_id = request.match_info["item_id"]
        for item in conversation.items:
            if item["id"] == item_id:
                return json_response(item)
        raise not_found("item", item_id)


def _item_id(item: Json) -> str:
    return str(item["id"])


def _parse_items(body: Json, *, required: bool) -> list[Json]:
    raw = body.get("items")
    if raw is None and not required:
        return []
    if not isinstance(raw, list) or (required and not raw):
        raise bad_request("'items' must be a non-empty array.", param="items")
    if len(raw) > _MAX_ITEMS_PER_REQUEST:
        raise bad_request(
            f"At most {_MAX_ITEMS_PER_REQUEST} items can be added at a time.", param="items"
        )
    return parse_input(raw, "items")
