"""Threads and Conversations as objects: modify, delete (twice), adding to one that is gone."""

from __future__ import annotations

import openai
import pytest
from openai.types.beta import Thread, ThreadDeleted
from openai.types.conversations import ConversationDeletedResource

from standin import StandIn
from tests.standin.support import RawHttp


async def test_modify_thread_replaces_its_metadata(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread = await client.beta.threads.create(metadata={"a": "1", "b": "2"})
    updated = await client.beta.threads.update(thread.id, metadata={"b": "3", "c": "4"})
    # The answer is the thread object, with the new set as a whole (nothing merged).
    assert (updated.id, updated.metadata) == (thread.id, {"b": "3", "c": "4"})
    assert (await client.beta.threads.retrieve(thread.id)).metadata == {"b": "3", "c": "4"}
    assert standin.state.threads[thread.id].metadata == {"b": "3", "c": "4"}


async def test_modify_thread_changes_only_what_the_body_names(http: RawHttp) -> None:
    thread = (await http.post("/v1/threads", {"metadata": {"a": "1"}})).body
    path = f"/v1/threads/{thread['id']}"
    resources = {"code_interpreter": {"file_ids": ["file_1"]}}

    reply = await http.post(path, {"tool_resources": resources})

    assert reply.status == 200
    body = Thread.model_validate(reply.body)
    assert body.metadata == {"a": "1"}
    assert reply.body["tool_resources"] == resources
    assert (await http.get(path)).body == reply.body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x"}, "name"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"tool_resources": {"retrieval": {}}}, "tool_resources.retrieval"),
        (
            {"tool_resources": {"file_search": {"vector_store_ids": ["vs_1", "vs_2"]}}},
            "tool_resources.file_search.vector_store_ids",
        ),
    ],
)
async def test_modify_thread_refuses_what_the_reference_does_not_allow(
    http: RawHttp, body: dict[str, object], param: str
) -> None:
    thread = (await http.post("/v1/threads", {"metadata": {"a": "1"}})).body
    path = f"/v1/threads/{thread['id']}"

    reply = await http.post(path, body)

    assert (reply.status, reply.body["error"]["param"]) == (400, param)
    assert (await http.get(path)).body == thread


async def test_an_unknown_thread_is_404_to_modify_and_delete(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.update("thread_nope", metadata={"a": "1"})
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.delete("thread_nope")


async def test_a_thread_deleted_is_gone(http: RawHttp, standin: StandIn) -> None:
    thread_id = (await http.post("/v1/threads", {})).body["id"]
    path = f"/v1/threads/{thread_id}"

    deleted = (await http.delete(path)).body

    assert ThreadDeleted.model_validate(deleted).model_dump() == {
        "id": thread_id,
        "object": "thread.deleted",
        "deleted": True,
    }
    assert thread_id not in standin.state.threads
    for again in (http.delete(path), http.get(path), http.post(f"{path}/messages", _USER_HI)):
        reply = await again
        assert (reply.status, reply.body["error"]["type"]) == (404, "invalid_request_error")


async def test_a_conversation_deleted_is_gone(http: RawHttp, standin: StandIn) -> None:
    conversation_id = (await http.post("/v1/conversations", {})).body["id"]
    path = f"/v1/conversations/{conversation_id}"

    deleted = (await http.delete(path)).body

    assert ConversationDeletedResource.model_validate(deleted).model_dump() == {
        "id": conversation_id,
        "object": "conversation.deleted",
        "deleted": True,
    }
    assert conversation_id not in standin.state.conversations
    adding = http.post(f"{path}/items", {"items": [_USER_HI]})
    for again in (http.delete(path), http.get(path), adding):
        reply = await again
        assert (reply.status, reply.body["error"]["type"]) == (404, "invalid_request_error")


async def test_items_added_to_a_conversation_start_no_response(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()

    added = await client.conversations.items.create(
        conversation.id,
        items=[{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
    )

    assert [item.type for item in added.data] == ["message", "message"]
    assert [i["id"] for i in standin.conversation_items(conversation.id)] == [
        item.id for item in added.data
    ]
    assert standin.state.responses == {}


_USER_HI = {"role": "user", "content": "hi"}
