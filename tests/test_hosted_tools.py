"""A profile's hosted tools end to end: file search answering from a vector store with a
citation, the code interpreter's file in the reply, web search, and remote MCP tools whose
approval requests the worker answers by the profile's policy. Real RabbitMQ and Postgres; the
API is the stand-in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import RunningWorker, start_worker
from tests.support import API_KEY, drain, publish, replies_for
from worker.profiles.config import profiles_of
from worker.profiles.load import ProfilesError
from worker.settings import BackendName, Settings, Topology

Json = dict[str, Any]

FAQ = (
    "Opening hours\n\nThe shop is open from nine to five on weekdays.\n\n"
    "Returns\n\nParcels can be returned within thirty days with the receipt."
)


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store_id(standin: StandIn) -> str:
    """A vector store holding one FAQ document, made as an operator would."""
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key=API_KEY) as client:
        file = await client.files.create(file=("faq.md", FAQ.encode()), purpose="assistants")
        store = await client.vector_stores.create(name="faq", file_ids=[file.id])
    return store.id


def _profiles(tmp_path: Path, backend: str, store_id: str) -> Path:
    hosted = f"""
[profiles.support.file_search]
vector_store_ids = ["{store_id}"]

[profiles.support.code_interpreter]
"""
    if backend == "responses":
        hosted += """
[profiles.support.web_search]

[profiles.support.mcp.wiki]
url = "https://mcp.example.com/mcp"
approve = ["read_page"]
unapproved = "handoff"
"""
    path = tmp_path / "profiles.toml"
    path.write_text(f'[profiles.support]\nmodel = "gpt-4o-mini"\ninstructions = "Help."\n{hosted}')
    return path


@pytest.fixture
async def hosted_worker(
    settings: Settings, tmp_path: Path, backend: str, store_id: str
) -> AsyncIterator[RunningWorker]:
    path = _profiles(tmp_path, backend, store_id)
    running = await start_worker(settings.model_copy(update={"profiles_file": path}))
    yield running
    await running.shutdown()


async def _answer(channel: AbstractChannel, topology: Topology, text: str, conv: str) -> Json:
    event = await publish(channel, topology, conversation_id=conv, text=text)
    [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)
    return reply


async def test_file_search_answers_from_the_store_and_cites_the_file(
    hosted_worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    store_id: str,
) -> None:
    reply = await _answer(channel, topology, "when can parcels be returned?", "c-fs")

    assert reply["status"] == "completed"
    assert "thirty days" in reply["text"]
    [faq] = standin.vector_store_files(store_id)
    citations = [a for m in reply["messages"] for a in m["annotations"]]
    assert [a["type"] for a in citations] == ["file_citation"]
    cited = citations[0].get("file_id") or citations[0]["file_citation"]["file_id"]
    assert cited == faq["id"]
    assert {"type": "file_search", "name": "file_search", "status": "ok"}.items() <= (
        reply["tool_calls"][0].items()
    )


async def test_the_code_interpreters_file_is_in_the_reply(
    hosted_worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    reply = await _answer(channel, topology, "chart it [[code_file:report.csv]]", "c-ci")

    assert reply["status"] == "completed"
    [message] = reply["messages"]
    [produced] = message["files"]
    kinds = {a["type"] for a in message["annotations"]}
    assert kinds & {"container_file_citation", "file_path"}
    assert produced in json.dumps(message["annotations"])
    assert "code_interpreter" in [c["type"] for c in reply["tool_calls"]]


@pytest.mark.parametrize("backend", ["responses"])
async def test_web_search_shows_in_the_tool_calls(
    hosted_worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    reply = await _answer(channel, topology, "what is new? [[web_search]]", "c-ws")

    assert reply["status"] == "completed"
    assert "web_search" in [c["type"] for c in reply["tool_calls"]]
    assert any(a["type"] == "url_citation" for m in reply["messages"] for a in m["annotations"])


@pytest.mark.parametrize("backend", ["responses"])
async def test_an_approved_mcp_tool_runs_and_another_is_denied_and_handed_off(
    hosted_worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
) -> None:
    allowed = await _answer(channel, topology, 'look [[mcp:wiki:read_page {"p": 1}]]', "c-m1")

    assert allowed["status"] == "completed"
    assert _mcp(allowed) == [
        {"type": "mcp", "name": "wiki.read_page", "status": "ok", "duration_ms": None}
    ]
    assert await drain(channel, topology.handoff_queue, quiet_s=0.3) == []

    denied = await _answer(channel, topology, "fix it [[mcp:wiki:edit_page {}]]", "c-m2")

    assert denied["status"] == "completed"
    assert _mcp(denied) == [
        {"type": "mcp", "name": "wiki.edit_page", "status": "denied", "duration_ms": None}
    ]
    assert "not approved" in denied["text"]
    calls = standin.mcp_calls()
    assert [c["name"] for c in calls] == ["read_page"]  # the denied tool never ran
    [handoff] = [m.json() for m in await drain(channel, topology.handoff_queue, quiet_s=0.3)]
    assert handoff["reason"] == "model_requested"
    assert handoff["in_reply_to"] == denied["in_reply_to"]
    assert "wiki.edit_page" in handoff["detail"]


def _mcp(reply: Json) -> list[Json]:
    # The profile's file search may run too: the stand-in searches on every turn.
    return [c for c in reply["tool_calls"] if c["type"] == "mcp"]


def test_assistants_refuses_what_it_cannot_carry(tmp_path: Path, settings: Settings) -> None:
    path = _profiles(tmp_path, "responses", "vs_1")
    on_assistants = settings.model_copy(
        update={"profiles_file": path, "backend": BackendName.ASSISTANTS}
    )

    with pytest.raises(ProfilesError, match="profile 'support', key web_search: the Assistants"):
        profiles_of(on_assistants)
