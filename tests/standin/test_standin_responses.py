"""Background responses in conversations: lifecycle, echo rule, lock, cancel."""

from __future__ import annotations

import asyncio
import itertools
import time

import openai
import pytest
from openai.types.responses import Response

from standin import StandIn
from tests.standin.support import wait_for, wait_until

MODEL = "gpt-test"


async def _start(
    client: openai.AsyncOpenAI,
    conversation_id: str,
    text: str,
    metadata: dict[str, str] | None = None,
) -> Response:
    return await client.responses.create(
        model=MODEL,
        background=True,
        store=True,
        conversation=conversation_id,
        input=text,
        metadata=metadata,
    )


async def _settled(client: openai.AsyncOpenAI, standin: StandIn, response_id: str) -> Response:
    await wait_until(standin, response_id)
    return await client.responses.retrieve(response_id)


async def test_background_response_advances_on_the_clock_without_polling(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    response = await _start(client, conversation.id, "hello")
    assert (response.status, response.background, response.usage) == ("queued", True, None)
    assert response.conversation is not None
    assert response.conversation.id == conversation.id
    requests_before_sleep = len(standin.journal)

    await asyncio.sleep(0.3)
    assert len(standin.journal) == requests_before_sleep
    done = await client.responses.retrieve(response.id)
    assert done.status == "completed"
    assert done.output_text == "Echo: hello"
    assert done.completed_at is not None
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens) == (1, 2)
    (message,) = done.output
    assert message.type == "message"
    assert (message.role, message.status) == ("assistant", "completed")


async def test_reply_names_user_inputs_since_the_last_assistant_output(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create(items=[{"role": "user", "content": "a"}])
    first = await client.responses.create(
        model=MODEL,
        background=True,
        store=True,
        conversation={"id": conversation.id},
        input=[{"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
    )
    assert (await _settled(client, standin, first.id)).output_text == "Echo: a | b | c"
    second = await _start(client, conversation.id, "d")
    assert (await _settled(client, standin, second.id)).output_text == "Echo: d"

    items = [item async for item in client.conversations.items.list(conversation.id, order="asc")]
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "user"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]


async def test_conversation_is_locked_while_a_response_runs(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    # Wide queued and in_progress windows, so each attempt below lands inside one.
    standin.update_config({"queue_ms": 300, "run_duration_ms": 300})
    conversation = await client.conversations.create()
    response = await _start(client, conversation.id, "one")
    for attempt in ("queued", "in_progress"):
        await wait_until(standin, response.id, frozenset({attempt}))
        with pytest.raises(openai.BadRequestError) as create_error:
            await _start(client, conversation.id, "two")
        assert create_error.value.code == "conversation_locked"
        assert create_error.value.message.endswith(
            "Another process is currently operating on this conversation. "
            "Please retry in a few seconds."
        )
        with pytest.raises(openai.BadRequestError) as items_error:
            await client.conversations.items.create(
                conversation.id, items=[{"role": "user", "content": "two"}]
            )
        assert items_error.value.code == "conversation_locked"

    await wait_until(standin, response.id)
    added = await client.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": "two"}]
    )
    assert len(added.data) == 1
    await _start(client, conversation.id, "three")


@pytest.mark.parametrize("store", [None, False])
async def test_background_needs_store(client: openai.AsyncOpenAI, store: bool | None) -> None:
    with pytest.raises(openai.BadRequestError, match="store"):
        await client.responses.create(model=MODEL, background=True, store=store, input="x")


async def test_foreground_response_answers_when_settled(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    response = await client.responses.create(model=MODEL, input="right away")
    assert (response.status, response.output_text) == ("completed", "Echo: right away")
    assert standin.state.responses[response.id].ended_at is not None


async def test_poll_after_header_only_while_active(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    response = await _start(client, conversation.id, "x [[delay_ms:500]]")
    active = await client.responses.with_raw_response.retrieve(response.id)
    assert active.headers.get("openai-poll-after-ms") == "500"
    await wait_until(standin, response.id)
    done = await client.responses.with_raw_response.retrieve(response.id)
    assert "openai-poll-after-ms" not in done.headers


async def test_cancel_is_idempotent_and_only_for_active_background_responses(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    response = await _start(client, conversation.id, "[[outcome:hang]]")
    first = await client.responses.cancel(response.id)
    again = await client.responses.cancel(response.id)
    assert (first.status, again.status) == ("cancelled", "cancelled")
    items = await client.conversations.items.list(conversation.id)
    assert items.data == []

    done = await _start(client, conversation.id, "fine")
    await wait_until(standin, done.id)
    with pytest.raises(openai.BadRequestError, match="status 'completed'"):
        await client.responses.cancel(done.id)

    foreground = asyncio.create_task(
        client.responses.create(model=MODEL, input="slow [[delay_ms:300]]")
    )
    await wait_for(
        lambda: any(not r.background for r in standin.state.responses.values()),
        "the foreground response",
    )
    (pending,) = [r for r in standin.state.responses.values() if not r.background]
    with pytest.raises(openai.BadRequestError, match="background=true"):
        await client.responses.cancel(pending.id)
    assert (await foreground).status == "completed"


async def test_deleting_a_conversation_stops_its_response(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    response = await _start(client, conversation.id, "[[outcome:hang]]")
    assert (await client.conversations.delete(conversation.id)).deleted is True
    assert standin.state.responses[response.id].status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError):
        await _start(client, conversation.id, "y")


async def test_conversation_items_paginate_and_can_be_fetched(
    client: openai.AsyncOpenAI,
) -> None:
    conversation = await client.conversations.create(
        items=[{"role": "user", "content": f"m{i}"} for i in range(20)]
    )
    more = await client.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": f"m{i}"} for i in range(20, 25)]
    )
    assert (more.first_id, more.last_id) == (more.data[0].id, more.data[-1].id)
    ascending = [
        i.id async for i in client.conversations.items.list(conversation.id, limit=7, order="asc")
    ]
    descending = [i.id async for i in client.conversations.items.list(conversation.id, limit=7)]
    assert len(ascending) == 25
    assert descending == ascending[::-1]
    fourth = ascending[3]
    assert fourth is not None
    item = await client.conversations.items.retrieve(fourth, conversation_id=conversation.id)
    assert item.type == "message"
    assert [part.text for part in item.content if part.type == "input_text"] == ["m3"]

    with pytest.raises(openai.BadRequestError, match="At most 20"):
        await client.conversations.create(
            items=[{"role": "user", "content": "x"} for _ in range(21)]
        )


async def test_conversation_metadata_and_journal_ids(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create(metadata={"ticket": "T-1"})
    assert (await client.conversations.retrieve(conversation.id)).metadata == {"ticket": "T-1"}
    updated = await client.conversations.update(conversation.id, metadata={"ticket": "T-2"})
    assert updated.metadata == {"ticket": "T-2"}
    response = await _start(client, conversation.id, "x")
    await client.responses.retrieve(response.id)

    ids = [(e["path"], e["conversation_id"], e["response_id"]) for e in standin.journal]
    assert ids[0] == ("/v1/conversations", conversation.id, None)
    assert ids[-2:] == [
        ("/v1/responses", conversation.id, response.id),
        (f"/v1/responses/{response.id}", conversation.id, response.id),
    ]


async def test_responses_and_runs_share_the_records_endpoint(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    for text in ("a", "b", "c"):
        response = await _start(client, conversation.id, text, metadata={"n": text})
        await wait_until(standin, response.id)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "t"}])
    run = await client.beta.threads.runs.create(thread.id, assistant_id="asst_x")

    records = standin.run_records()
    assert [(r["kind"], r["batch"]) for r in records] == [
        ("response", ["a"]),
        ("response", ["b"]),
        ("response", ["c"]),
        ("run", ["t"]),
    ]
    assert records[-1]["id"] == run.id
    for earlier, later in itertools.pairwise(records[:3]):
        assert earlier["conversation_id"] == conversation.id
        assert earlier["ended_at"] <= later["created_at"]


async def test_faults_apply_to_responses(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    conversation = await client.conversations.create()
    standin.add_faults([{"kind": "drop_after", "method": "POST", "path": "^/v1/responses$"}])
    with pytest.raises(openai.APIConnectionError):
        await _start(client, conversation.id, "x [[delay_ms:500]]")
    (response,) = standin.state.responses.values()
    assert standin.journal[-1]["response_id"] == response.id
    with pytest.raises(openai.BadRequestError, match="Another process"):
        await client.conversations.items.create(
            conversation.id, items=[{"role": "user", "content": "y"}]
        )


async def test_stop_answers_foreground_creates_that_would_never_settle(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    pending = asyncio.create_task(client.responses.create(model=MODEL, input="[[outcome:hang]]"))
    await wait_for(lambda: bool(standin.state.responses), "the response")
    (response_id,) = standin.state.responses
    await wait_until(standin, response_id, frozenset({"in_progress"}))
    started = time.monotonic()
    await standin.stop()
    assert time.monotonic() - started < 0.5
    assert (await pending).status == "in_progress"
