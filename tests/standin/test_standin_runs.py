"""Run lifecycle on the background clock, the thread lock, replies and cancel."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai.types.beta.threads.run_create_params import AdditionalMessage

from standin import StandIn
from tests.standin.support import wait_until

ASSISTANT = "asst_standin_tests"


async def _thread_with(client: openai.AsyncOpenAI, *texts: str) -> str:
    thread = await client.beta.threads.create(
        messages=[{"role": "user", "content": text} for text in texts]
    )
    return thread.id


async def _reply_texts(client: openai.AsyncOpenAI, thread_id: str) -> list[str]:
    page = await client.beta.threads.messages.list(thread_id, order="asc")
    texts = []
    for message in page.data:
        block = message.content[0]
        assert block.type == "text"
        if message.role == "assistant":
            texts.append(block.text.value)
    return texts


async def test_run_advances_on_the_clock_without_polling(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id = await _thread_with(client, "hello")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    assert run.status == "queued"
    assert run.usage is None
    assert run.expires_at == run.created_at + 600
    requests_before_sleep = len(standin.journal)

    await asyncio.sleep(0.3)
    # Nobody asked about the run meanwhile, yet it finished.
    assert len(standin.journal) == requests_before_sleep
    assert standin.state.runs[run.id].status == "completed"

    done = await client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert done.status == "completed"
    assert done.started_at is not None
    assert done.completed_at is not None
    assert done.usage is not None
    assert done.usage.completion_tokens == 2  # "Echo: hello"
    assert done.usage.total_tokens == done.usage.prompt_tokens + 2


async def test_run_is_in_progress_between_queue_and_outcome(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.update_config({"run_duration_ms": 400})
    thread_id = await _thread_with(client, "slow one")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    await asyncio.sleep(0.1)
    current = await client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert current.status == "in_progress"
    assert current.started_at is not None
    assert current.completed_at is None


async def test_reply_names_every_user_message_since_the_last_reply(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id = await _thread_with(client, "one", "two", "three")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    await wait_until(standin, run.id)
    await client.beta.threads.messages.create(thread_id, role="user", content="four")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    await wait_until(standin, run.id)

    assert await _reply_texts(client, thread_id) == ["Echo: one | two | three", "Echo: four"]
    replies = await client.beta.threads.messages.list(thread_id, run_id=run.id)
    assert [(m.role, m.run_id, m.assistant_id) for m in replies.data] == [
        ("assistant", run.id, ASSISTANT)
    ]
    assert standin.state.runs[run.id].batch == ["four"]


async def test_thread_lock_rejects_messages_and_runs_while_a_run_is_active(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    # Long enough that the assertions below meet the run still active, even on a busy box.
    standin.update_config({"run_duration_ms": 500})
    thread_id = await _thread_with(client, "hi")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)

    with pytest.raises(openai.BadRequestError) as message_error:
        await client.beta.threads.messages.create(thread_id, role="user", content="more")
    assert message_error.value.message.endswith(
        f"Can't add messages to {thread_id} while a run {run.id} is active."
    )
    assert message_error.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as run_error:
        await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    assert run_error.value.message.endswith(
        f"Thread {thread_id} already has an active run {run.id}."
    )

    await wait_until(standin, run.id)
    await client.beta.threads.messages.create(thread_id, role="user", content="more")
    await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)


async def test_additional_messages_are_added_with_the_run_or_not_at_all(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    # Long enough that the assertions below meet the run still active, even on a busy box.
    standin.update_config({"run_duration_ms": 500})
    thread = await client.beta.threads.create()
    extra: list[AdditionalMessage] = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    run = await client.beta.threads.runs.create(
        thread.id, assistant_id=ASSISTANT, additional_messages=extra
    )
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.runs.create(
            thread.id,
            assistant_id=ASSISTANT,
            additional_messages=[{"role": "user", "content": "c"}],
        )
    assert [m.text() for m in standin.state.threads[thread.id].messages] == ["a", "b"]

    await wait_until(standin, run.id)
    assert await _reply_texts(client, thread.id) == ["Echo: a | b"]


async def test_create_thread_and_run(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    run = await client.beta.threads.create_and_run(
        assistant_id=ASSISTANT,
        thread={"messages": [{"role": "user", "content": "hey"}], "metadata": {"ticket": "7"}},
    )
    await wait_until(standin, run.id)
    thread = await client.beta.threads.retrieve(run.thread_id)
    assert thread.metadata == {"ticket": "7"}
    assert await _reply_texts(client, run.thread_id) == ["Echo: hey"]


async def test_run_takes_model_and_instructions_from_the_assistant(
    client: openai.AsyncOpenAI,
) -> None:
    # The SDK marks the assistants resource itself deprecated, beyond the filtered warning.
    with pytest.deprecated_call():
        assistant = await client.beta.assistants.create(model="gpt-test", instructions="Be brief.")
    thread_id = await _thread_with(client, "x")
    run = await client.beta.threads.runs.create(
        thread_id,
        assistant_id=assistant.id,
        additional_instructions="Answer in French.",
        metadata={"job": "42"},
    )
    assert (run.model, run.instructions) == ("gpt-test", "Be brief.\nAnswer in French.")
    assert run.metadata == {"job": "42"}
    assert run.assistant_id == assistant.id


async def test_unknown_assistant_is_404_when_auto_assistants_is_off(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id = await _thread_with(client, "x")
    standin.update_config({"auto_assistants": False})
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.create(thread_id, assistant_id="asst_never_made")
    assert standin.state.threads[thread_id].runs == []

    standin.update_config({"auto_assistants": True})
    await client.beta.threads.runs.create(thread_id, assistant_id="asst_never_made")
    assert "asst_never_made" in standin.state.assistants
    with pytest.raises(openai.NotFoundError), pytest.deprecated_call():
        await client.beta.assistants.retrieve("not_an_assistant_id")


async def test_poll_after_header_only_while_the_run_is_active(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    # Long enough that the assertions below meet the run still active, even on a busy box.
    standin.update_config({"run_duration_ms": 500})
    thread_id = await _thread_with(client, "x")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    active = await client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread_id)
    assert active.headers.get("openai-poll-after-ms") == "500"

    await wait_until(standin, run.id)
    done = await client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread_id)
    assert "openai-poll-after-ms" not in done.headers

    standin.update_config({"poll_after_ms": None, "run_duration_ms": 1000})
    await client.beta.threads.messages.create(thread_id, role="user", content="y")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    quiet = await client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread_id)
    assert "openai-poll-after-ms" not in quiet.headers


async def test_sdk_poll_helper_follows_the_poll_after_header(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.update_config({"poll_after_ms": 20, "run_duration_ms": 150})
    thread_id = await _thread_with(client, "x")
    run = await client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=ASSISTANT
    )
    assert run.status == "completed"
    polls = [e for e in standin.journal if e["method"] == "GET" and e["run_id"] == run.id]
    # 160 ms of run at a 20 ms hint: several polls; the SDK's 1 s default would make 2.
    assert 4 <= len(polls) <= 15


async def test_cancel_goes_through_cancelling_and_unlocks_the_thread(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    standin.update_config({"run_duration_ms": 10_000, "cancel_ms": 300})
    thread_id = await _thread_with(client, "x")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    cancelling = await client.beta.threads.runs.cancel(run.id, thread_id=thread_id)
    assert cancelling.status == "cancelling"
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.messages.create(thread_id, role="user", content="y")

    assert await wait_until(standin, run.id) == "cancelled"
    cancelled = await client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert cancelled.cancelled_at is not None
    assert await _reply_texts(client, thread_id) == []
    await client.beta.threads.messages.create(thread_id, role="user", content="y")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel run with status 'cancelled'"):
        await client.beta.threads.runs.cancel(run.id, thread_id=thread_id)


async def test_runs_list_is_paginated_newest_first(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id = await _thread_with(client, "x")
    run_ids = []
    for _ in range(3):
        run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
        await wait_until(standin, run.id)
        run_ids.append(run.id)
    first = await client.beta.threads.runs.list(thread_id, limit=2)
    assert [run.id for run in first.data] == run_ids[:0:-1]
    assert first.has_more is True
    walked = [run.id async for run in client.beta.threads.runs.list(thread_id, limit=2)]
    assert walked == run_ids[::-1]


async def test_message_creation_step_points_at_the_reply(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id = await _thread_with(client, "x")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    await wait_until(standin, run.id)
    steps = await client.beta.threads.runs.steps.list(run.id, thread_id=thread_id)
    (step,) = steps.data
    assert step.type == "message_creation"
    assert step.step_details.type == "message_creation"
    reply = await client.beta.threads.messages.retrieve(
        step.step_details.message_creation.message_id, thread_id=thread_id
    )
    assert reply.run_id == run.id
    same = await client.beta.threads.runs.steps.retrieve(
        step.id, thread_id=thread_id, run_id=run.id
    )
    assert same.id == step.id


async def test_deleting_a_thread_stops_its_active_run(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    thread_id = await _thread_with(client, "[[outcome:hang]]")
    run = await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT)
    deleted = await client.beta.threads.delete(thread_id)
    assert deleted.deleted is True
    assert standin.state.runs[run.id].status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    await asyncio.sleep(0.1)
    assert standin.state.runs[run.id].status == "cancelled"


async def test_streaming_is_refused(client: openai.AsyncOpenAI) -> None:
    thread_id = await _thread_with(client, "x")
    with pytest.raises(openai.BadRequestError, match="streaming"):
        await client.beta.threads.runs.create(thread_id, assistant_id=ASSISTANT, stream=True)
