"""Conversations stay on the backend that created their thread until an operator moves them;
what both backends promise the runner and the helpdesk's control events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import openai
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import start_worker
from tests.support import publish, replies_for, run_cli
from worker.backends.assistants import AssistantsBackend
from worker.backends.base import Backend, FindsTurnsByItems, RunRef, RunStatus, Turn
from worker.backends.responses import ResponsesBackend
from worker.errors import ThreadBusy
from worker.events import Attachment, Author, UserMessage
from worker.profiles.model import Profile
from worker.relay.attachments import FileKind, ModelFile
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
            AssistantsBackend(client) if name == "assistants" else ResponsesBackend(client)
        )
        thread_id = await backend.create_thread("c-cancel", PROFILE)
        turn = Turn(
            batch_id=uuid.uuid4(),
            attempt=1,
            conversation_id="c-cancel",
            messages=(UserMessage("e-1", "c-cancel", "hello"),),
            assistant_id="asst_default",
            add_messages=True,
            profile=PROFILE,
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


# Helpdesk control: deleting, retagging, and recording messages without a run.

_BACKENDS = ["assistants", "responses"]
# As the AW_MODEL shorthand makes it: on Assistants the assistant object decides.
PROFILE = Profile("default", "gpt-test", "", overrides_assistant=False)


@pytest.fixture
async def client(standin: StandIn) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-x", max_retries=0) as sdk:
        yield sdk


def _backend(client: openai.AsyncOpenAI, name: str) -> Backend:
    if name == "assistants":
        return AssistantsBackend(client)
    return ResponsesBackend(client)


async def _turn(
    backend: Backend,
    thread_id: str,
    messages: tuple[UserMessage, ...],
    files: Mapping[tuple[str, int], ModelFile] | None = None,
) -> Turn:
    # As the relay does: a Responses turn is looked for after the thread's newest item.
    after = await backend.watermark(thread_id) if isinstance(backend, FindsTurnsByItems) else None
    return Turn(
        batch_id=uuid.uuid4(),
        attempt=1,
        conversation_id="c-control",
        messages=messages,
        assistant_id="asst_default",
        add_messages=True,
        profile=PROFILE,
        after_item_id=after,
        files=files or {},
    )


_TWO = (
    UserMessage(
        "e-1",
        "c-control",
        "while the agent has it",
        metadata={"ticket": "T-9"},
        author=Author("cust-7", "Ada"),
    ),
    UserMessage("e-2", "c-control", "and a second one", metadata={"ticket": "T-9"}),
)


def _stored_metadata(standin: StandIn, thread_id: str) -> dict[str, str]:
    if thread_id.startswith("conv_"):
        return standin.state.conversations[thread_id].metadata
    return standin.state.threads[thread_id].metadata


def _user_texts(standin: StandIn, thread_id: str) -> list[str]:
    if thread_id.startswith("conv_"):
        items = standin.conversation_items(thread_id)
        return [p["text"] for i in items if i.get("role") == "user" for p in i["content"]]
    messages = standin.thread_messages(thread_id)
    return [p["text"]["value"] for m in messages if m["role"] == "user" for p in m["content"]]


@pytest.mark.parametrize("name", _BACKENDS)
async def test_deleting_a_thread_twice_is_no_error(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    thread_id = await backend.create_thread("c-control", PROFILE)

    await backend.delete_thread(thread_id)
    await backend.delete_thread(thread_id)  # already gone: counts as deleted

    assert thread_id not in standin.state.threads
    assert thread_id not in standin.state.conversations
    deletes = [e["status"] for e in standin.journal if e["method"] == "DELETE"]
    assert deletes == [200, 404]


@pytest.mark.parametrize("name", _BACKENDS)
async def test_update_metadata_sets_the_pairs_beside_the_worker_tag(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    thread_id = await backend.create_thread("c-control", PROFILE)

    await backend.update_metadata(thread_id, "c-control", {"ticket": "T-9", "queue": "billing"})
    first = _stored_metadata(standin, thread_id)
    await backend.update_metadata(thread_id, "c-control", {"queue": "refunds"})

    assert first == {"ticket": "T-9", "queue": "billing", "aw_conversation_id": "c-control"}
    # The whole set is sent: a pair left out is gone, the worker's tag stays.
    assert _stored_metadata(standin, thread_id) == {
        "queue": "refunds",
        "aw_conversation_id": "c-control",
    }


@pytest.mark.parametrize("name", _BACKENDS)
async def test_the_tag_is_the_conversation_id_cut_to_512_characters(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    long_id = "c" * 600
    thread_id = await backend.create_thread(long_id, PROFILE)

    await backend.update_metadata(thread_id, long_id, {})

    assert _stored_metadata(standin, thread_id) == {"aw_conversation_id": "c" * 512}


@pytest.mark.parametrize("name", _BACKENDS)
async def test_recorded_messages_join_the_thread_without_a_run(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    thread_id = await backend.create_thread("c-control", PROFILE)
    turn = await _turn(backend, thread_id, _TWO)
    assert await backend.find_recorded(thread_id, turn) == frozenset()

    await backend.record_messages(thread_id, turn, turn.messages)

    assert await backend.find_recorded(thread_id, turn) == {"e-1", "e-2"}
    assert _user_texts(standin, thread_id) == ["while the agent has it", "and a second one"]
    assert standin.run_records() == []  # context for later, nothing answered


@pytest.mark.parametrize("name", _BACKENDS)
async def test_recording_no_messages_makes_no_request(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    thread_id = await backend.create_thread("c-control", PROFILE)
    turn = await _turn(backend, thread_id, _TWO)
    standin.clear_journal()

    await backend.record_messages(thread_id, turn, ())

    assert standin.journal == []


async def test_assistants_find_a_partial_record_and_complete_it(
    standin: StandIn, client: openai.AsyncOpenAI
) -> None:
    backend = _backend(client, "assistants")
    thread_id = await backend.create_thread("c-control", PROFILE)
    turn = await _turn(backend, thread_id, _TWO)
    # An earlier attempt died between its two creates.
    await backend.record_messages(thread_id, turn, turn.messages[:1])

    recorded = await backend.find_recorded(thread_id, turn)
    assert recorded == {"e-1"}
    await backend.record_messages(
        thread_id, turn, [m for m in turn.messages if m.event_id not in recorded]
    )

    assert await backend.find_recorded(thread_id, turn) == {"e-1", "e-2"}
    assert _user_texts(standin, thread_id) == ["while the agent has it", "and a second one"]


async def test_responses_find_a_turn_recorded_whole_or_not_at_all(
    client: openai.AsyncOpenAI,
) -> None:
    backend = _backend(client, "responses")
    thread_id = await backend.create_thread("c-control", PROFILE)
    turn = await _turn(backend, thread_id, _TWO)
    # Only the first text is there (added by someone else): not this turn's record.
    await client.conversations.items.create(
        thread_id, items=[{"role": "user", "content": _TWO[0].text}]
    )

    assert await backend.find_recorded(thread_id, turn) == frozenset()


@pytest.mark.parametrize("name", _BACKENDS)
async def test_a_message_is_recorded_as_a_run_would_add_it(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    message = replace(_TWO[0], attachments=(Attachment(0, "f-img"), Attachment(1, "f-doc")))
    files = {
        ("e-1", 0): await _upload(client, backend, "screen.png", FileKind.IMAGE),
        ("e-1", 1): await _upload(client, backend, "invoice.pdf", FileKind.DOCUMENT),
    }
    recorded_on = await backend.create_thread("c-control", PROFILE)
    answered_on = await backend.create_thread("c-control", PROFILE)
    turn = await _turn(backend, recorded_on, (message,), files)

    await backend.record_messages(recorded_on, turn, turn.messages)
    run = await backend.start_run(answered_on, turn)

    # A response's input joins its Conversation only once the response is under way.
    answered = (
        _user_inputs(standin, answered_on)
        if name == "assistants"
        else _user_items(standin.response_input_items(run.run_id))
    )
    assert _user_inputs(standin, recorded_on) == answered
    assert [r["id"] for r in standin.run_records()] == [run.run_id]
    if name == "assistants":
        [stored] = standin.thread_messages(recorded_on)
        assert stored["metadata"] == {
            "ticket": "T-9",
            "aw_event_id": "e-1",
            "aw_batch_id": str(turn.batch_id),
            "aw_author_id": "cust-7",
            "aw_author_name": "Ada",
        }


@pytest.mark.parametrize("name", _BACKENDS)
async def test_recording_while_a_run_holds_the_thread_is_thread_busy(
    standin: StandIn, client: openai.AsyncOpenAI, name: str
) -> None:
    backend = _backend(client, name)
    thread_id = await backend.create_thread("c-control", PROFILE)
    hanging = await _turn(
        backend, thread_id, (UserMessage("e-0", "c-control", "[[outcome:hang]]"),)
    )
    await backend.start_run(thread_id, hanging)
    turn = await _turn(backend, thread_id, _TWO)

    with pytest.raises(ThreadBusy):
        await backend.record_messages(thread_id, turn, turn.messages)


async def _upload(
    client: openai.AsyncOpenAI, backend: Backend, filename: str, kind: FileKind
) -> ModelFile:
    uploaded = await client.files.create(file=(filename, b"bytes"), purpose=backend.purposes[kind])
    return ModelFile(uploaded.id, filename, kind)


def _user_inputs(standin: StandIn, thread_id: str) -> list[dict[str, Any]]:
    """The thread's user messages as the model reads them: IDs and times left out."""
    if thread_id.startswith("conv_"):
        return _user_items(standin.conversation_items(thread_id))
    return [
        {k: m[k] for k in ("content", "attachments", "metadata")}
        for m in standin.thread_messages(thread_id)
        if m["role"] == "user"
    ]


def _user_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"content": i["content"]} for i in items if i.get("role") == "user"]
