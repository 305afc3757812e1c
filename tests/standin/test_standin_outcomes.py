"""Scripted outcomes chosen by markers in the newest user message or run metadata."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai.types.beta.threads import Run
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput

from standin import StandIn
from tests.standin.support import wait_until

ASSISTANT = "asst_outcomes"


async def _run(
    client: openai.AsyncOpenAI, *texts: str, metadata: dict[str, str] | None = None
) -> Run:
    thread = await client.beta.threads.create(
        messages=[{"role": "user", "content": text} for text in texts]
    )
    return await client.beta.threads.runs.create(
        thread.id, assistant_id=ASSISTANT, metadata=metadata
    )


async def _settled(client: openai.AsyncOpenAI, standin: StandIn, run: Run) -> Run:
    await wait_until(standin, run.id)
    return await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)


async def _assistant_texts(client: openai.AsyncOpenAI, thread_id: str) -> list[str]:
    page = await client.beta.threads.messages.list(thread_id, order="asc")
    return [
        block.text.value
        for message in page.data
        if message.role == "assistant"
        for block in message.content
        if block.type == "text"
    ]


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("[[outcome:failed]]", "server_error"),
        ("[[outcome:failed:rate_limit_exceeded]]", "rate_limit_exceeded"),
        ("[[outcome:failed:invalid_prompt]]", "invalid_prompt"),
    ],
)
async def test_failed_outcomes_carry_the_error_code(
    client: openai.AsyncOpenAI, standin: StandIn, marker: str, code: str
) -> None:
    run = await _settled(client, standin, await _run(client, f"please {marker}"))
    assert run.status == "failed"
    assert run.failed_at is not None
    assert run.last_error is not None
    assert run.last_error.code == code
    assert await _assistant_texts(client, run.thread_id) == []


async def test_outcome_marker_only_counts_in_the_newest_message(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    run = await _settled(client, standin, await _run(client, "[[outcome:failed]]", "fine now"))
    assert run.status == "completed"


async def test_incomplete_leaves_a_partial_reply(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    text = "tell me everything [[outcome:incomplete]]"
    run = await _settled(client, standin, await _run(client, text))
    assert run.status == "incomplete"
    assert run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_completion_tokens"
    page = await client.beta.threads.messages.list(run.thread_id, run_id=run.id)
    (partial,) = page.data
    assert partial.status == "incomplete"
    block = partial.content[0]
    assert block.type == "text"
    full = f"Echo: {text}"
    assert full.startswith(block.text.value)
    assert len(block.text.value) < len(full)


async def test_expired(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    run = await _settled(client, standin, await _run(client, "[[outcome:expired]]"))
    assert run.status == "expired"
    assert run.usage is not None


async def test_hang_stays_in_progress_until_cancelled(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    run = await _run(client, "[[outcome:hang]]")
    await wait_until(standin, run.id, frozenset({"in_progress"}))
    await asyncio.sleep(0.2)
    still = await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert still.status == "in_progress"

    await client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert (await _settled(client, standin, run)).status == "cancelled"


async def test_requires_action_round_trip(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    text = "where is my parcel [[outcome:requires_action:lookup_order]]"
    run = await _run(client, "earlier", text)
    await wait_until(standin, run.id, frozenset({"requires_action"}))
    waiting = await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert waiting.required_action is not None
    (call,) = waiting.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"query": text}
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.messages.create(run.thread_id, role="user", content="x")

    wrong_outputs: list[list[ToolOutput]] = [[{"tool_call_id": "call_wrong", "output": "x"}], []]
    for wrong in wrong_outputs:
        with pytest.raises(openai.BadRequestError):
            await client.beta.threads.runs.submit_tool_outputs(
                run.id, thread_id=run.thread_id, tool_outputs=wrong
            )
    resumed = await client.beta.threads.runs.submit_tool_outputs(
        run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": call.id, "output": "shipped"}],
    )
    assert resumed.status == "in_progress"

    done = await _settled(client, standin, run)
    assert done.status == "completed"
    assert await _assistant_texts(client, run.thread_id) == [
        f"Echo: earlier | {text} | tool lookup_order said: shipped"
    ]
    steps = await client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc")
    assert [(s.type, s.status) for s in steps.data] == [
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]
    details = steps.data[0].step_details
    assert details.type == "tool_calls"
    assert details.tool_calls[0].type == "function"
    assert details.tool_calls[0].function.output == "shipped"


async def test_submitting_tool_outputs_to_a_run_not_waiting_is_400(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    run = await _settled(client, standin, await _run(client, "hi"))
    with pytest.raises(openai.BadRequestError, match="do not accept tool outputs"):
        await client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": "call_x", "output": ""}]
        )


async def test_failed_once_fails_only_the_first_run_of_the_thread(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    first = await _settled(client, standin, await _run(client, "flaky [[outcome:failed_once]]"))
    assert first.status == "failed"
    assert first.last_error is not None
    assert first.last_error.code == "server_error"
    retry = await client.beta.threads.runs.create(first.thread_id, assistant_id=ASSISTANT)
    assert (await _settled(client, standin, retry)).status == "completed"
    assert await _assistant_texts(client, first.thread_id) == [
        "Echo: flaky [[outcome:failed_once]]"
    ]


async def test_delay_marker_overrides_the_run_duration(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    run = await _run(client, "take your time [[delay_ms:400]]")
    await asyncio.sleep(0.2)
    assert standin.state.runs[run.id].status == "in_progress"
    assert (await _settled(client, standin, run)).status == "completed"
    record = standin.state.runs[run.id]
    assert record.ended_at is not None
    assert record.started_at is not None
    assert record.ended_at - record.started_at >= 0.39


async def test_outcome_from_run_metadata(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    run = await _run(client, "plain text", metadata={"standin_outcome": "failed:invalid_prompt"})
    settled = await _settled(client, standin, run)
    assert settled.last_error is not None
    assert settled.last_error.code == "invalid_prompt"
    marker_run = await _run(client, "plain", metadata={"standin_outcome": "[[outcome:expired]]"})
    assert (await _settled(client, standin, marker_run)).status == "expired"


@pytest.mark.parametrize(
    "text",
    ["[[outcome:explode]]", "[[outcome:failed:teapot]]", "[[outcome:requires_action:]]"],
)
async def test_unknown_markers_are_rejected(
    client: openai.AsyncOpenAI, standin: StandIn, text: str
) -> None:
    with pytest.raises(openai.BadRequestError, match="stand-in"):
        await _run(client, text)
    assert standin.state.runs == {}
