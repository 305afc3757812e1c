"""A profile's knowledge folder end to end, on both backends: `assistants sync` puts it into a
vector store, the worker reads what sync recorded at start, and a customer's question is
answered from the right document with a citation of its file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel
from rich.console import Console

from standin import StandIn
from tests.conftest import start_worker
from tests.support import publish, replies_for
from worker.ops.sync_cli import sync_command
from worker.profiles.load import ProfilesError
from worker.settings import BackendName, Settings, Topology

RETURNS = "Returns\n\nA parcel may be returned within thirty days, with its receipt."
HOURS = "Opening hours\n\nThe shop opens at nine and closes at five on weekdays."


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def profiles_file(tmp_path: Path) -> Path:
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    (knowledge / "returns.md").write_text(RETURNS)
    (knowledge / "hours.md").write_text(HOURS)
    path = tmp_path / "profiles.toml"
    path.write_text(
        '[profiles.care]\nmodel = "gpt-4o-mini"\ninstructions = "Answer from the documents."\n'
        '[profiles.care.file_search]\nknowledge = ["knowledge"]\n'
    )
    return path


async def _sync(settings: Settings, path: Path) -> str:
    out = io.StringIO()
    code = await sync_command(
        settings, path, dry_run=False, backend=settings.backend, out=Console(file=out)
    )
    assert code == 0, out.getvalue()
    return out.getvalue()


async def test_a_question_is_answered_from_the_knowledge_with_its_file_cited(
    settings: Settings,
    profiles_file: Path,
    standin: StandIn,
    channel: AbstractChannel,
    topology: Topology,
) -> None:
    await _sync(settings, profiles_file)
    [returns] = [f for f in standin.files() if f["filename"] == "returns.md" and not f["deleted"]]
    worker = await start_worker(settings.model_copy(update={"profiles_file": profiles_file}))
    try:
        event = await publish(
            channel, topology, conversation_id="c-kb", text="can a parcel be returned?"
        )
        [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=20)
    finally:
        await worker.shutdown()

    assert reply["status"] == "completed"
    assert "thirty days" in reply["text"]
    cited = [
        a.get("file_id") or a["file_citation"]["file_id"]
        for m in reply["messages"]
        for a in m["annotations"]
        if a["type"] == "file_citation"
    ]
    assert cited == [returns["id"]]
    if settings.backend is BackendName.ASSISTANTS:
        # Answered by the assistant sync made for the profile.
        [assistant] = [
            a for a in standin.state.assistants.values() if a.id == reply["assistant_id"]
        ]
        assert (assistant.metadata or {}).get("aw_profile") == "care"


async def test_a_worker_refuses_to_start_with_knowledge_never_synced(
    settings: Settings, profiles_file: Path
) -> None:
    with pytest.raises(
        ProfilesError, match=r"profile 'care', key file_search\.knowledge: not synced"
    ):
        await start_worker(settings.model_copy(update={"profiles_file": profiles_file}))
