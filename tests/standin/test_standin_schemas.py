"""Raw bodies validate against the SDK's own pydantic models.

The SDK builds its objects without validation, so only ``model_validate`` on
the raw JSON proves the shapes are right.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pydantic
import pytest
from openai.types import FileDeleted, FileObject
from openai.types.beta import Assistant, AssistantDeleted, Thread, ThreadDeleted
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.runs import RunStep
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from openai.types.responses import Response

from standin import StandIn
from tests.standin.support import RawHttp, wait_until

# ConversationItem is a union, so it validates through a TypeAdapter.
_ITEM: pydantic.TypeAdapter[ConversationItem] = pydantic.TypeAdapter(ConversationItem)


def _validate_page(
    body: dict[str, Any], model: type[pydantic.BaseModel] | pydantic.TypeAdapter[Any]
) -> None:
    assert body["object"] == "list"
    assert isinstance(body["has_more"], bool)
    if isinstance(model, pydantic.TypeAdapter):
        for item in body["data"]:
            model.validate_python(item)
    elif model is ConversationItemList and body["data"]:
        model.model_validate(body)
    else:
        for item in body["data"]:
            model.model_validate(item)
    if body["data"]:
        assert (body["first_id"], body["last_id"]) == (
            body["data"][0]["id"],
            body["data"][-1]["id"],
        )


async def test_assistant_and_thread_shapes(http: RawHttp) -> None:
    assistant = (await http.post("/v1/assistants", {"model": "gpt-x", "name": "Desk"})).body
    Assistant.model_validate(assistant)
    Assistant.model_validate((await http.get(f"/v1/assistants/{assistant['id']}")).body)
    _validate_page((await http.get("/v1/assistants")).body, Assistant)
    AssistantDeleted.model_validate((await http.delete(f"/v1/assistants/{assistant['id']}")).body)

    thread = (await http.post("/v1/threads", {"metadata": {"a": "b"}})).body
    Thread.model_validate(thread)
    Thread.model_validate((await http.get(f"/v1/threads/{thread['id']}")).body)
    ThreadDeleted.model_validate((await http.delete(f"/v1/threads/{thread['id']}")).body)


async def _run_to(http: RawHttp, standin: StandIn, text: str, status: str) -> dict[str, Any]:
    thread = (await http.post("/v1/threads", {})).body
    body = {
        "assistant_id": "asst_schema",
        "additional_messages": [{"role": "user", "content": text}],
    }
    run = (await http.post(f"/v1/threads/{thread['id']}/runs", body)).body
    Run.model_validate(run)
    await wait_until(standin, run["id"], frozenset({status}))
    path = f"/v1/threads/{thread['id']}/runs/{run['id']}"
    settled: dict[str, Any] = (await http.get(path)).body
    return settled


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("hi", "completed"),
        ("[[outcome:failed:rate_limit_exceeded]]", "failed"),
        ("[[outcome:incomplete]]", "incomplete"),
        ("[[outcome:expired]]", "expired"),
        ("[[outcome:requires_action:lookup]]", "requires_action"),
        ("[[outcome:hang]]", "in_progress"),
    ],
)
async def test_run_message_and_step_shapes_in_every_status(
    http: RawHttp, standin: StandIn, text: str, status: str
) -> None:
    run = await _run_to(http, standin, text, status)
    assert Run.model_validate(run).status == status
    thread_path = f"/v1/threads/{run['thread_id']}"
    messages = (await http.get(f"{thread_path}/messages")).body
    _validate_page(messages, Message)
    for message in messages["data"]:
        Message.model_validate((await http.get(f"{thread_path}/messages/{message['id']}")).body)
    steps = (await http.get(f"{thread_path}/runs/{run['id']}/steps")).body
    _validate_page(steps, RunStep)
    _validate_page((await http.get(f"{thread_path}/runs")).body, Run)


async def test_cancelling_and_cancelled_run_shapes(http: RawHttp, standin: StandIn) -> None:
    run = await _run_to(http, standin, "[[outcome:hang]]", "in_progress")
    path = f"/v1/threads/{run['thread_id']}/runs/{run['id']}"
    assert Run.model_validate((await http.post(f"{path}/cancel")).body).status == "cancelling"
    await wait_until(standin, run["id"])
    assert Run.model_validate((await http.get(path)).body).status == "cancelled"


async def test_file_shapes(http: RawHttp, standin: StandIn) -> None:
    form = aiohttp.FormData()
    form.add_field("purpose", "assistants")
    form.add_field("file", b"ticket log", filename="log.txt")
    async with aiohttp.ClientSession() as session:
        url = standin.base_url + "/files"
        async with session.post(url, data=form) as response:
            uploaded = await response.json()
    stored = FileObject.model_validate(uploaded)
    assert (stored.bytes, stored.filename) == (10, "log.txt")
    FileObject.model_validate((await http.get(f"/v1/files/{stored.id}")).body)
    _validate_page((await http.get("/v1/files")).body, FileObject)
    FileDeleted.model_validate((await http.delete(f"/v1/files/{stored.id}")).body)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/threads/thread_missing", 404),
        ("GET", "/v1/no/such/route", 404),
        ("PATCH", "/v1/threads", 405),
        ("POST", "/v1/assistants", 400),
    ],
)
async def test_errors_use_the_openai_error_shape(
    http: RawHttp, method: str, path: str, status: int
) -> None:
    reply = await http.request(method, path, json={})
    assert reply.status == status
    assert set(reply.body) == {"error"}
    assert set(reply.body["error"]) == {"message", "type", "param", "code"}
    assert reply.body["error"]["message"]


async def _response_to(http: RawHttp, standin: StandIn, text: str, status: str) -> dict[str, Any]:
    conversation = (await http.post("/v1/conversations", {"metadata": {"k": "v"}})).body
    Conversation.model_validate(conversation)
    body = {
        "model": "gpt-x",
        "background": True,
        "store": True,
        "conversation": conversation["id"],
        "input": text,
        "tools": [{"type": "function", "name": "lookup", "parameters": {}, "strict": False}],
    }
    created = (await http.post("/v1/responses", body)).body
    Response.model_validate(created)
    await wait_until(standin, created["id"], frozenset({status}))
    settled: dict[str, Any] = (await http.get(f"/v1/responses/{created['id']}")).body
    return settled


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("hi", "completed"),
        ("[[outcome:failed:invalid_prompt]]", "failed"),
        ("[[outcome:incomplete]]", "incomplete"),
        ("[[outcome:requires_action:lookup]]", "completed"),
        ("[[outcome:hang]]", "in_progress"),
    ],
)
async def test_response_and_conversation_item_shapes(
    http: RawHttp, standin: StandIn, text: str, status: str
) -> None:
    response = await _response_to(http, standin, text, status)
    assert Response.model_validate(response).status == status
    conversation_path = f"/v1/conversations/{response['conversation']['id']}"
    items = (await http.get(f"{conversation_path}/items")).body
    _validate_page(items, ConversationItemList)
    for item in items["data"]:
        _ITEM.validate_python((await http.get(f"{conversation_path}/items/{item['id']}")).body)
    _validate_page((await http.get(f"/v1/responses/{response['id']}/input_items")).body, _ITEM)
    ConversationDeletedResource.model_validate((await http.delete(conversation_path)).body)


async def test_cancelled_response_and_added_items_shapes(http: RawHttp, standin: StandIn) -> None:
    response = await _response_to(http, standin, "[[outcome:hang]]", "in_progress")
    cancelled = (await http.post(f"/v1/responses/{response['id']}/cancel")).body
    assert Response.model_validate(cancelled).status == "cancelled"
    path = f"/v1/conversations/{response['conversation']['id']}/items"
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"role": "assistant", "content": "b"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
    ]
    added = (await http.post(path, {"items": items})).body
    assert len(ConversationItemList.model_validate(added).data) == 4
