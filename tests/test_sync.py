"""`assistant-worker assistants sync`: knowledge into vector stores, profiles into assistants,
idempotent, never touching what it did not make; and the worker's profiles filled from it."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner

from standin import StandIn
from tests.support import API_KEY
from worker.ops.cli import app
from worker.ops.sync_cli import EXIT_FAILED, EXIT_SYNCED, EXIT_USAGE, sync_command
from worker.profiles.load import ProfilesError, load_profiles
from worker.profiles.synced import NOT_SYNCED, with_synced_ids
from worker.settings import BackendName, Settings

DOCUMENTS = {
    "knowledge/faq.md": "# FAQ\n\nOrders ship within two working days.\n",
    "knowledge/policies/returns.md": "# Returns\n\nReturns are free for 30 days.\n",
    "knowledge/policies/warranty.md": "# Warranty\n\nTwo years on every product.\n",
}


def write_profiles(
    folder: Path, extra: str = "", instructions: str = "Help Acme's customers."
) -> Path:
    path = folder / "profiles.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            default = "support"

            [profiles.support]
            model = "gpt-4o-mini"
            instructions = "{instructions}"
            metadata = {{ team = "care" }}

            [profiles.support.file_search]
            knowledge = ["knowledge"]
            """
        )
        + textwrap.dedent(extra)
    )
    return path


@pytest.fixture
def profiles_file(tmp_path: Path) -> Path:
    for relative, text in DOCUMENTS.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    return write_profiles(tmp_path)


def sync_settings(standin: StandIn, database_url: str, backend: str = "responses") -> Settings:
    return Settings(
        backend=BackendName(backend),
        database_url=SecretStr(database_url),
        openai_base_url=standin.base_url,
        openai_api_key=SecretStr(API_KEY),
    )


async def sync(
    standin: StandIn,
    database_url: str,
    profiles_file: Path,
    *,
    dry_run: bool = False,
    backend: str = "responses",
    terminal: bool = False,
) -> tuple[int, str]:
    """Runs the command's function; returns its exit code and everything it printed."""
    printed = io.StringIO()
    console = Console(file=printed, width=240, force_terminal=terminal, highlight=False)
    settings = sync_settings(standin, database_url, backend)
    code = await sync_command(
        settings, profiles_file, dry_run=dry_run, backend=None, out=console, err=console
    )
    return code, printed.getvalue()


def changes(standin: StandIn) -> list[tuple[str, str]]:
    """Every request since the journal was cleared that was not a read."""
    return [(e["method"], e["path"]) for e in standin.journal if e["method"] != "GET"]


def uploads(standin: StandIn) -> list[tuple[str, str]]:
    return [c for c in changes(standin) if c == ("POST", "/v1/files")]


def managed_store(standin: StandIn) -> dict[str, Any]:
    (store,) = [s for s in standin.vector_stores() if s["metadata"].get("aw_managed") == "true"]
    return store


def store_documents(standin: StandIn, store_id: str) -> dict[str, bytes]:
    """The store's files by their `aw_path` attribute, with their content."""
    return {
        f["attributes"]["aw_path"]: standin.file_content(f["id"])
        for f in standin.vector_store_files(store_id)
    }


async def synced_rows(database_url: str) -> dict[tuple[str, str, str], tuple[str, str | None]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT profile, kind, key, object_id, content_sha256 FROM synced_objects"
        )
    finally:
        await conn.close()
    return {
        (r["profile"], r["kind"], r["key"]): (r["object_id"], r["content_sha256"]) for r in rows
    }


async def test_a_first_sync_uploads_each_document_and_a_second_changes_nothing(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_SYNCED, printed
    store = managed_store(standin)
    assert store["name"] == "aw-support-knowledge"
    assert store["metadata"] == {"aw_profile": "support", "aw_managed": "true"}
    assert store_documents(standin, store["id"]) == {k: v.encode() for k, v in DOCUMENTS.items()}
    assert len(uploads(standin)) == 3
    rows = await synced_rows(database_url)
    assert rows[("support", "vector_store", "knowledge")] == (store["id"], None)
    attached = {f["attributes"]["aw_path"]: f for f in standin.vector_store_files(store["id"])}
    for key in DOCUMENTS:
        file_id, sha256 = rows[("support", "knowledge_file", key)]
        assert file_id == attached[key]["id"]
        assert sha256 == attached[key]["attributes"]["aw_sha256"]
    assert "support: create vector store aw-support-knowledge" in printed
    assert "support: upload knowledge/faq.md (" in printed
    assert "synced 1 profile: 1 vector store created, 3 uploaded" in printed

    standin.clear_journal()
    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_SYNCED, printed
    assert changes(standin) == []
    assert "support: 3 documents unchanged" in printed
    assert await synced_rows(database_url) == rows


async def test_a_changed_document_is_replaced_a_removed_one_removed_and_a_new_one_added(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    await sync(standin, database_url, profiles_file)
    store_id = managed_store(standin)["id"]
    before = {f["attributes"]["aw_path"]: f["id"] for f in standin.vector_store_files(store_id)}
    folder = profiles_file.parent
    (folder / "knowledge/policies/returns.md").write_text("# Returns\n\nNow 60 days.\n")
    (folder / "knowledge/policies/warranty.md").unlink()
    (folder / "knowledge/shipping.md").write_text("# Shipping\n\nFree over 50 EUR.\n")
    standin.clear_journal()

    # A terminal shows the progress bar over the uploads.
    code, printed = await sync(standin, database_url, profiles_file, terminal=True)

    assert code == EXIT_SYNCED, printed
    assert len(uploads(standin)) == 2
    after = {f["attributes"]["aw_path"]: f["id"] for f in standin.vector_store_files(store_id)}
    assert set(after) == {
        "knowledge/faq.md",
        "knowledge/policies/returns.md",
        "knowledge/shipping.md",
    }
    assert after["knowledge/faq.md"] == before["knowledge/faq.md"]
    assert after["knowledge/policies/returns.md"] != before["knowledge/policies/returns.md"]
    assert (
        standin.file_content(after["knowledge/policies/returns.md"])
        == b"# Returns\n\nNow 60 days.\n"
    )
    deleted = {f["id"] for f in standin.files() if f["deleted"]}
    assert deleted == {
        before["knowledge/policies/returns.md"],
        before["knowledge/policies/warranty.md"],
    }
    rows = await synced_rows(database_url)
    assert ("support", "knowledge_file", "knowledge/policies/warranty.md") not in rows
    assert (
        rows[("support", "knowledge_file", "knowledge/policies/returns.md")][0]
        == after["knowledge/policies/returns.md"]
    )

    standin.clear_journal()
    assert (await sync(standin, database_url, profiles_file))[0] == EXIT_SYNCED
    assert changes(standin) == []


async def test_a_dry_run_prints_the_plan_and_changes_nothing(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    code, printed = await sync(standin, database_url, profiles_file, dry_run=True)

    assert code == EXIT_SYNCED
    assert changes(standin) == []
    assert await synced_rows(database_url) == {}
    assert "support: create vector store aw-support-knowledge" in printed
    assert "support: upload knowledge/policies/warranty.md (" in printed
    assert "dry run, nothing changed: 1 profile: 1 vector store created, 3 uploaded" in printed

    await sync(standin, database_url, profiles_file)
    (profiles_file.parent / "knowledge/faq.md").write_text("# FAQ\n\nShipping takes a day.\n")
    (profiles_file.parent / "knowledge/policies/warranty.md").unlink()
    standin.clear_journal()
    code, printed = await sync(standin, database_url, profiles_file, dry_run=True)

    assert code == EXIT_SYNCED
    assert changes(standin) == []
    assert "support: replace knowledge/faq.md (" in printed
    assert "support: remove the old version of knowledge/faq.md (file" in printed
    assert "support: remove knowledge/policies/warranty.md (file" in printed
    assert "support: 1 document unchanged" in printed


async def test_objects_sync_did_not_make_are_never_touched(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    client = openai.AsyncOpenAI(base_url=standin.base_url, api_key=API_KEY)
    async with client:
        document = await client.files.create(file=("faq.md", b"# Mine"), purpose="assistants")
        # Named as sync names its store, one without tags and one with half of them.
        untagged = await client.vector_stores.create(name="aw-support-knowledge")
        half = await client.vector_stores.create(
            name="aw-support-knowledge", metadata={"aw_profile": "support"}
        )
        for store in (untagged, half):
            await client.vector_stores.files.create(
                store.id,
                file_id=document.id,
                attributes={"aw_path": "knowledge/faq.md", "aw_sha256": "0" * 64},
            )
    handmade = {s["id"]: s for s in standin.vector_stores()}

    code, printed = await sync(standin, database_url, profiles_file)
    await sync(standin, database_url, profiles_file)

    assert code == EXIT_SYNCED, printed
    now = {s["id"]: s for s in standin.vector_stores()}
    for store_id, shown in handmade.items():
        assert now[store_id] == shown
        assert [f["id"] for f in standin.vector_store_files(store_id)] == [document.id]
    assert not next(f for f in standin.files() if f["id"] == document.id)["deleted"]
    assert managed_store(standin)["id"] not in handmade


async def test_a_store_the_profiles_no_longer_use_is_named_not_deleted(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    await sync(standin, database_url, profiles_file)
    store = managed_store(standin)
    (profiles_file.parent / "profiles.toml").write_text(
        '[profiles.support]\nmodel = "gpt-4o-mini"\ninstructions = "Hi."\n'
    )
    standin.clear_journal()

    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_SYNCED, printed
    assert changes(standin) == []
    assert managed_store(standin) == store
    assert f"support: warning: no longer used, left as it is: vector store {store['id']}" in printed


async def test_a_lost_database_is_rebuilt_from_the_tags_without_uploading_again(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    await sync(standin, database_url, profiles_file)
    rows = await synced_rows(database_url)
    conn = await asyncpg.connect(database_url)
    await conn.execute("DELETE FROM synced_objects")
    await conn.close()
    standin.clear_journal()

    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_SYNCED, printed
    assert changes(standin) == []
    assert await synced_rows(database_url) == rows
    assert "support: record vector store vs_" in printed
    assert "support: record knowledge/faq.md (file" in printed


async def test_a_sync_stopped_midway_is_finished_by_the_next_without_duplicates(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    # The second document's File is uploaded and recorded, then adding it to the store fails.
    standin.add_faults(
        [
            {
                "kind": "status",
                "status": 400,
                "method": "POST",
                "path": r"/vector_stores/[^/]+/files$",
                "after": 1,
                "times": 1,
            }
        ]
    )
    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_FAILED
    assert (
        "support: error: HTTP 400: Injected fault: HTTP 400.; this profile's sync stopped"
        in printed
    )
    store_id = managed_store(standin)["id"]
    assert len(standin.vector_store_files(store_id)) == 1

    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_SYNCED, printed
    assert store_documents(standin, store_id) == {k: v.encode() for k, v in DOCUMENTS.items()}
    live = [f for f in standin.files() if not f["deleted"]]
    assert len(live) == len(DOCUMENTS)
    assert "support: delete an earlier upload of knowledge/policies/returns.md (file" in printed


async def test_assistants_are_made_tagged_and_updated_only_when_the_profile_changes(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    code, printed = await sync(standin, database_url, profiles_file, backend="assistants")

    assert code == EXIT_SYNCED, printed
    store_id = managed_store(standin)["id"]
    (assistant,) = standin.state.assistants.values()
    shown = assistant.to_api()
    assert shown["name"] == "aw-support"
    assert shown["instructions"] == "Help Acme's customers."
    assert {k: v for k, v in shown["metadata"].items() if k != "aw_spec"} == {
        "team": "care",
        "aw_profile": "support",
        "aw_managed": "true",
    }
    assert shown["tool_resources"] == {"file_search": {"vector_store_ids": [store_id]}}
    assert [t["type"] for t in shown["tools"]] == ["function", "file_search"]
    rows = await synced_rows(database_url)
    assert rows[("support", "assistant", "assistant")] == (assistant.id, None)
    assert "support: create assistant aw-support" in printed

    standin.clear_journal()
    code, printed = await sync(standin, database_url, profiles_file, backend="assistants")
    assert changes(standin) == []
    assert f"support: assistant aw-support ({assistant.id}) unchanged" in printed

    write_profiles(profiles_file.parent, instructions="Help Acme's customers, briefly.")
    code, printed = await sync(standin, database_url, profiles_file, backend="assistants")

    assert code == EXIT_SYNCED, printed
    assert changes(standin) == [("POST", f"/v1/assistants/{assistant.id}")]
    assert standin.state.assistants[assistant.id].instructions == "Help Acme's customers, briefly."
    assert f"support: update assistant aw-support ({assistant.id}): instructions" in printed


async def test_a_missing_named_vector_store_is_an_error_and_the_profile_is_left_alone(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    write_profiles(profiles_file.parent, extra='vector_store_ids = ["vs_missing"]\n')

    code, printed = await sync(standin, database_url, profiles_file)

    assert code == EXIT_FAILED
    assert (
        "support: error: key file_search.vector_store_ids[0]: vector store vs_missing not found"
        in printed
    )
    assert changes(standin) == []
    assert await synced_rows(database_url) == {}


async def test_what_the_assistants_api_cannot_hold_is_said(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    standin.update_config({"auto_assistants": False})
    write_profiles(
        profiles_file.parent,
        extra="""
        [profiles.sales]
        model = "gpt-4o-mini"
        instructions = "Sell."
        assistant_id = "asst_gone"

        [profiles.sales.web_search]
        """,
    )

    code, printed = await sync(standin, database_url, profiles_file, backend="assistants")

    assert code == EXIT_FAILED
    assert "sales: error: key assistant_id: assistant asst_gone not found" in printed
    assert "sales: warning: the Assistants API has no web_search tool" in printed
    assert "support: create assistant aw-support" in printed


async def test_the_worker_gets_the_ids_sync_recorded_and_refuses_unsynced_knowledge(
    standin: StandIn, database_url: str, profiles_file: Path
) -> None:
    profiles = load_profiles(profiles_file, {})
    with pytest.raises(ProfilesError) as refused:
        await with_synced_ids(profiles, database_url)
    assert str(refused.value) == (
        f"profiles file {profiles_file}: profile 'support', key file_search.knowledge: {NOT_SYNCED}"
    )

    await sync(standin, database_url, profiles_file, backend="assistants")
    filled = (await with_synced_ids(profiles, database_url))["support"]

    assert filled.hosted.file_search is not None
    assert filled.hosted.file_search.store_ids == (managed_store(standin)["id"],)
    (assistant_id,) = standin.state.assistants
    assert filled.assistant_id == assistant_id


def test_without_a_profiles_file_the_command_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AW_PROFILES_FILE", raising=False)
    result = CliRunner().invoke(
        app, ["assistants", "sync"], env={"AW_OPENAI_API_KEY": API_KEY, "COLUMNS": "200"}
    )

    assert result.exit_code == EXIT_USAGE
    assert "no profiles file: pass --profiles-file or set AW_PROFILES_FILE" in result.output
