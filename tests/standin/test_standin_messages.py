"""Messages: cursor pagination in both orders, the run_id filter, metadata."""

from __future__ import annotations

import openai
import pytest

from standin import StandIn
from tests.standin.support import RawHttp, wait_until


async def _thread_with_messages(client: openai.AsyncOpenAI, count: int) -> tuple[str, list[str]]:
    thread = await client.beta.threads.create()
    ids = []
    for index in range(count):
        message = await client.beta.threads.messages.create(
            thread.id, role="user", content=f"m{index}"
        )
        ids.append(message.id)
    return thread.id, ids


async def test_pages_walk_all_messages_in_both_orders(client: openai.AsyncOpenAI) -> None:
    thread_id, ids = await _thread_with_messages(client, 25)

    ascending = client.beta.threads.messages.list(thread_id, limit=10, order="asc")
    assert [m.id async for m in ascending] == ids
    descending = client.beta.threads.messages.list(thread_id, limit=10, order="desc")
    assert [m.id async for m in descending] == ids[::-1]

    default = await client.beta.threads.messages.list(thread_id)
    assert [m.id for m in default.data] == ids[::-1][:20]
    assert default.has_more is True


async def test_page_fields_and_cursors(client: openai.AsyncOpenAI, http: RawHttp) -> None:
    thread_id, ids = await _thread_with_messages(client, 25)
    path = f"/v1/threads/{thread_id}/messages"

    first = (await http.get(f"{path}?limit=10&order=asc")).body
    assert [m["id"] for m in first["data"]] == ids[:10]
    assert (first["object"], first["first_id"], first["last_id"]) == ("list", ids[0], ids[9])
    assert first["has_more"] is True

    last = (await http.get(f"{path}?limit=10&order=asc&after={ids[19]}")).body
    assert [m["id"] for m in last["data"]] == ids[20:]
    assert last["has_more"] is False

    # `before` returns the stretch right next to the cursor, still in the asked order.
    previous = (await http.get(f"{path}?limit=5&order=asc&before={ids[20]}")).body
    assert [m["id"] for m in previous["data"]] == ids[15:20]
    assert previous["has_more"] is True
    newer = (await http.get(f"{path}?limit=5&order=desc&before={ids[2]}")).body
    assert [m["id"] for m in newer["data"]] == ids[7:2:-1]


async def test_run_id_filter_keeps_only_that_runs_messages(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id, _ = await _thread_with_messages(client, 3)
    run = await client.beta.threads.runs.create(thread_id, assistant_id="asst_x")
    await wait_until(standin, run.id)

    only_run = await client.beta.threads.messages.list(thread_id, run_id=run.id)
    assert [(m.role, m.run_id) for m in only_run.data] == [("assistant", run.id)]
    everything = await client.beta.threads.messages.list(thread_id)
    assert len(everything.data) == 4


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten", "order=sideways"])
async def test_bad_list_parameters_are_400(
    client: openai.AsyncOpenAI, http: RawHttp, query: str
) -> None:
    thread_id, _ = await _thread_with_messages(client, 1)
    reply = await http.get(f"/v1/threads/{thread_id}/messages?{query}")
    assert reply.status == 400
    assert reply.body["error"]["param"] == query.split("=")[0]


async def test_unknown_cursor_is_400(client: openai.AsyncOpenAI) -> None:
    thread_id, _ = await _thread_with_messages(client, 1)
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.messages.list(thread_id, after="msg_unknown")


async def test_message_metadata_and_content_parts_are_kept(client: openai.AsyncOpenAI) -> None:
    thread = await client.beta.threads.create()
    created = await client.beta.threads.messages.create(
        thread.id,
        role="user",
        content=[{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}],
        metadata={"helpdesk_message_id": "m-1"},
    )
    fetched = await client.beta.threads.messages.retrieve(created.id, thread_id=thread.id)
    assert fetched.metadata == {"helpdesk_message_id": "m-1"}
    assert [block.text.value for block in fetched.content if block.type == "text"] == [
        "part one",
        "part two",
    ]
    assert (fetched.role, fetched.status, fetched.run_id) == ("user", "completed", None)


async def test_invalid_message_bodies_are_400(client: openai.AsyncOpenAI, http: RawHttp) -> None:
    thread = await client.beta.threads.create()
    path = f"/v1/threads/{thread.id}/messages"
    bad_bodies = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": []},
        {"role": "user", "content": "x", "metadata": {"k": 1}},
        {"role": "user", "content": "x", "metadata": {f"k{i}": "v" for i in range(17)}},
    ]
    for body in bad_bodies:
        reply = await http.post(path, body)
        assert reply.status == 400, body
        assert reply.body["error"]["type"] == "invalid_request_error"
    assert (await client.beta.threads.messages.list(thread.id)).data == []
