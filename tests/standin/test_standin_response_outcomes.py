"""Scripted outcomes for responses, including the function-call round trip."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai.types.responses import Response

from standin import StandIn
from tests.standin.support import wait_until

MODEL = "gpt-test"


async def _settle(
    client: openai.AsyncOpenAI,
    standin: StandIn,
    conversation_id: str,
    text: str,
    metadata: dict[str, str] | None = None,
) -> Response:
    response = await client.responses.create(
        model=MODEL,
        background=True,
        store=True,
        conversation=conversation_id,
        input=text,
        metadata=metadata,
    )
    await wait_until(standin, response.id)
    return await client.responses.retrieve(response.id)


async def _conversation(client: openai.AsyncOpenAI) -> str:
    return (await client.conversations.create()).id


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("[[outcome:failed]]", "server_error"),
        ("[[outcome:failed:rate_limit_exceeded]]", "rate_limit_exceeded"),
        ("[[outcome:failed:invalid_prompt]]", "invalid_prompt"),
    ],
)
async def test_failed_leaves_the_conversation_untouched(
    client: openai.AsyncOpenAI, standin: StandIn, marker: str, code: str
) -> None:
    conversation_id = await _conversation(client)
    failed = await _settle(client, standin, conversation_id, f"hi {marker}")
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == code
    assert failed.output == []
    assert (await client.conversations.items.list(conversation_id)).data == []


async def test_incomplete_keeps_a_partial_message(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    text = "tell me everything [[outcome:incomplete]]"
    response = await _settle(client, standin, await _conversation(client), text)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert f"Echo: {text}".startswith(response.output_text)
    assert 0 < len(response.output_text) < len(f"Echo: {text}")


async def test_hang_stays_in_progress(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    response = await client.responses.create(
        model=MODEL, background=True, store=True, input="[[outcome:hang]]"
    )
    await wait_until(standin, response.id, frozenset({"in_progress"}))
    await asyncio.sleep(0.2)
    assert (await client.responses.retrieve(response.id)).status == "in_progress"
    assert (await client.responses.cancel(response.id)).status == "cancelled"


async def test_failed_once_fails_only_the_first_response_of_the_conversation(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation_id = await _conversation(client)
    text = "flaky [[outcome:failed_once]]"
    assert (await _settle(client, standin, conversation_id, text)).status == "failed"
    retry = await _settle(client, standin, conversation_id, text)
    assert (retry.status, retry.output_text) == ("completed", f"Echo: {text}")


async def test_delay_marker_and_metadata_outcome(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    response = await client.responses.create(
        model=MODEL, background=True, store=True, input="wait [[delay_ms:400]]"
    )
    await asyncio.sleep(0.2)
    assert standin.state.responses[response.id].status == "in_progress"
    await wait_until(standin, response.id)

    scripted = await _settle(
        client,
        standin,
        await _conversation(client),
        "plain",
        metadata={"standin_outcome": "failed:rate_limit_exceeded"},
    )
    assert scripted.error is not None
    assert scripted.error.code == "rate_limit_exceeded"


async def test_run_only_outcomes_are_rejected(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="only for runs"):
        await client.responses.create(
            model=MODEL, background=True, store=True, input="[[outcome:expired]]"
        )


async def test_function_call_round_trip(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    conversation_id = await _conversation(client)
    text = "where is it [[outcome:requires_action:lookup_order]]"
    asking = await _settle(client, standin, conversation_id, text)
    assert asking.status == "completed"
    (call,) = asking.output
    assert call.type == "function_call"
    assert call.name == "lookup_order"
    assert json.loads(call.arguments) == {"query": text}

    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        await client.responses.create(
            model=MODEL,
            background=True,
            store=True,
            conversation=conversation_id,
            input=[{"type": "function_call_output", "call_id": "call_other", "output": "x"}],
        )
    answer = await client.responses.create(
        model=MODEL,
        background=True,
        store=True,
        conversation=conversation_id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}],
    )
    await wait_until(standin, answer.id)
    done = await client.responses.retrieve(answer.id)
    assert done.output_text == f"Echo: {text} | tool lookup_order said: shipped"

    items = await client.conversations.items.list(conversation_id, order="asc")
    assert [item.type for item in items.data] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
