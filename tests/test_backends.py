"""Conversations stay on the backend that created their thread until an operator moves them;
what both backends promise the runner."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import start_worker
from tests.support import publish, replies_for, run_cli
from worker.backends.assistants import AssistantsBackend
from worker.backends.base import Backend, RunRef, RunStatus, Turn
from worker.backends.responses import ResponsesBackend
from worker.events import UserMessage
from worker.relay.runner import cancel_unless_ended
from worker.settings import BackendName, Settings, Topology


async def _answer(
    settings: Settings, channel: AbstractChannel, topology: Topology, text: str
) -> dict:  # type: ignore[type-arg]
    running = await start_worker(settings)
    try:
        event = await publish(channel, topology, conversation_id="c-move", text=text)
        [reply] = await replies_for(channel, topology, {event["event_id"]})
        return reply
    finally:
        await running.shutdown()


async def _cli(settings: Settings, *args: str) -> str:
    code, out, err = await run_cli(settings, *args)
    assert code == 0, err
    return out


async def test_a_conversation_keeps_its_backend_until_moved(
    settings: Settings, channel: AbstractChannel, topology: Topology
) -> None:
    on_assistants = settings.model_copy(update={"backend": BackendName.ASSISTANTS})
    on_responses = settings.model_copy(update={"backend": BackendName.RESPONSES})

    first = await _answer(on_assistants, channel, topology, "one")
    # The deployment switches its default; the existing conversation stays where it was.
    second = await _answer(on_responses, channel, topology, "two")
    assert (first["backend"], second["backend"]) == ("assistants", "assistants")
    assert second["thread_id"] == first["thread_id"]

    out = await _cli(on_responses, "conversations", "move", "--to", "responses", "--all")
    assert out.strip() == "moved 1 conversation(s) to responses; 0 busy, left as they are"

    third = await _answer(on_responses, channel, topology, "three")
    assert third["backend"] == "responses"
    assert third["thread_id"].startswith("conv_")
    assert third["text"] == "Echo: three"


async def test_move_needs_a_selection(settings: Settings) -> None:
    code, _, err = await run_cli(settings, "conversations", "move", "--to", "responses")
    assert code == 2
    assert "--conversation" in err


@pytest.mark.parametrize("name", ["assistants", "responses"])
async def test_cancelling_a_run_that_ended_on_its_own_leaves_it_be(
    standin: StandIn, name: str
) -> None:
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-x") as client:
        backend: Backend = (
            AssistantsBackend(client)
            if name == "assistants"
            else ResponsesBackend(client, model="gpt-test", instructions="", tools=[])
        )
        thread_id = await backend.create_thread("c-cancel")
        turn = Turn(
            batch_id=uuid.uuid4(),
            attempt=1,
            conversation_id="c-cancel",
            messages=(UserMessage("e-1", "c-cancel", "hello"),),
            assistant_id="asst_default",
            add_messages=True,
        )
        run = await backend.start_run(thread_id, turn)
        while not run.status.is_terminal:
            await asyncio.sleep(0.05)
            run = await backend.retrieve_run(RunRef(thread_id, run.run_id))

        assert await cancel_unless_ended(backend, RunRef(thread_id, run.run_id)) is False

        assert (
            await backend.retrieve_run(RunRef(thread_id, run.run_id))
        ).status is RunStatus.COMPLETED
        journal = [(e["method"], e["status"]) for e in standin.journal if "cancel" in e["path"]]
        assert journal == [("POST", 400)]  # the API was asked, and refused
