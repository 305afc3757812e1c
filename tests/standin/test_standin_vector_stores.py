"""Vector stores and their files through the SDK, and the search the file_search tool runs."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types import VectorStore, VectorStoreDeleted
from openai.types.vector_stores import VectorStoreFile, VectorStoreFileDeleted

from standin import StandIn
from standin.errors import ApiError
from standin.file_search import Hit, search
from tests.standin.support import RawHttp, upload

GUIDE = b"""Parcels ship within two days of the order.

Refunds reach the card within five working days of the return.

Our shop is closed on public holidays."""


async def test_a_store_counts_its_files_and_their_bytes(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    first = await upload(client, "a.txt", b"12345", purpose="assistants")
    second = await upload(client, "b.txt", b"123", purpose="assistants")
    store = await client.vector_stores.create(
        name="Help centre",
        file_ids=[first, second],
        metadata={"team": "care"},
        expires_after={"anchor": "last_active_at", "days": 7},
        chunking_strategy={"type": "auto"},
    )
    assert (store.name, store.status, store.usage_bytes) == ("Help centre", "completed", 8)
    assert store.file_counts.model_dump() == {
        "in_progress": 0,
        "completed": 2,
        "failed": 0,
        "cancelled": 0,
        "total": 2,
    }
    assert store.metadata == {"team": "care"}
    assert store.expires_after is not None
    assert store.expires_after.days == 7
    assert store.expires_at == store.created_at + 7 * 86_400
    assert (await client.vector_stores.retrieve(store.id)).model_dump() == store.model_dump()

    files = [f async for f in client.vector_stores.files.list(store.id, order="asc")]
    assert [(f.id, f.status, f.usage_bytes, f.vector_store_id) for f in files] == [
        (first, "completed", 5, store.id),
        (second, "completed", 3, store.id),
    ]
    assert files[0].chunking_strategy is not None
    assert files[0].chunking_strategy.type == "static"
    assert [s["id"] for s in standin.vector_stores()] == [store.id]
    assert [f["id"] for f in standin.vector_store_files(store.id)] == [first, second]


async def test_list_pages_like_the_other_list_endpoints(
    client: openai.AsyncOpenAI, http: RawHttp
) -> None:
    ids = [(await client.vector_stores.create(name=f"s{i}")).id for i in range(5)]
    first_page = await client.vector_stores.list(limit=2)
    assert ([s.id for s in first_page.data], first_page.has_more) == ([ids[4], ids[3]], True)
    assert [s.id async for s in client.vector_stores.list(limit=2, order="asc")] == ids
    page = (await http.get(f"/v1/vector_stores?order=asc&after={ids[0]}&before={ids[3]}")).body
    assert [s["id"] for s in page["data"]] == ids[1:3]
    reply = await http.get("/v1/vector_stores?limit=101")
    assert (reply.status, reply.body["error"]["param"]) == (400, "limit")


async def test_modify_changes_only_what_it_names(client: openai.AsyncOpenAI) -> None:
    store = await client.vector_stores.create(
        name="old", metadata={"a": "1"}, expires_after={"anchor": "last_active_at", "days": 3}
    )
    renamed = await client.vector_stores.update(store.id, name="new")
    assert (renamed.name, renamed.metadata, renamed.expires_after) == (
        "new",
        {"a": "1"},
        store.expires_after,
    )
    changed = await client.vector_stores.update(store.id, metadata={"b": "2"}, expires_after=None)
    assert (changed.name, changed.metadata, changed.expires_after) == ("new", {"b": "2"}, None)
    assert changed.expires_at is None


async def test_deleting_a_store_forgets_it(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    kept = await client.vector_stores.create(name="kept")
    gone = await client.vector_stores.create(name="gone")
    deleted = await client.vector_stores.delete(gone.id)
    assert (deleted.id, deleted.deleted) == (gone.id, True)
    for call in (client.vector_stores.retrieve, client.vector_stores.delete):
        with pytest.raises(
            openai.NotFoundError, match=f"No vector store found with id '{gone.id}'"
        ):
            await call(gone.id)
    assert [s.id async for s in client.vector_stores.list()] == [kept.id]
    assert [s["id"] for s in standin.vector_stores()] == [kept.id]
    with pytest.raises(KeyError):
        standin.vector_store_files(gone.id)


async def test_file_attributes_filter_and_content(client: openai.AsyncOpenAI) -> None:
    store = await client.vector_stores.create(name="docs")
    file_id = await upload(client, "guide.txt", GUIDE, purpose="assistants")
    attached = await client.vector_stores.files.create(
        vector_store_id=store.id,
        file_id=file_id,
        attributes={"lang": "en", "version": 2, "public": True},
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100},
        },
    )
    assert attached.attributes == {"lang": "en", "version": 2, "public": True}
    assert attached.chunking_strategy is not None
    assert attached.chunking_strategy.type == "static"
    assert attached.chunking_strategy.static.max_chunk_size_tokens == 200

    completed = client.vector_stores.files.list(store.id, filter="completed")
    assert [f.id async for f in completed] == [file_id]
    failed = client.vector_stores.files.list(store.id, filter="failed")
    assert [f.id async for f in failed] == []

    updated = await client.vector_stores.files.update(
        file_id, vector_store_id=store.id, attributes={"lang": "fr"}
    )
    assert updated.attributes == {"lang": "fr"}
    again = await client.vector_stores.files.retrieve(file_id, vector_store_id=store.id)
    assert again.attributes == {"lang": "fr"}

    pages = client.vector_stores.files.content(file_id, vector_store_id=store.id)
    assert [(part.type, part.text) async for part in pages] == [("text", GUIDE.decode())]


async def test_detaching_a_file_keeps_the_file(client: openai.AsyncOpenAI) -> None:
    file_id = await upload(client, "a.txt", b"abc", purpose="assistants")
    store = await client.vector_stores.create(file_ids=[file_id])
    detached = await client.vector_stores.files.delete(file_id, vector_store_id=store.id)
    assert (detached.id, detached.deleted) == (file_id, True)
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.files.retrieve(file_id, vector_store_id=store.id)
    assert (await client.files.retrieve(file_id)).id == file_id
    emptied = await client.vector_stores.retrieve(store.id)
    assert (emptied.file_counts.total, emptied.usage_bytes) == (0, 0)


async def test_deleting_a_file_takes_it_out_of_every_store(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    file_id = await upload(client, "a.txt", b"abcd", purpose="assistants")
    other = await upload(client, "b.txt", b"xy", purpose="assistants")
    stores = [await client.vector_stores.create(file_ids=[file_id, other]) for _ in range(2)]
    await client.files.delete(file_id)
    for store in stores:
        current = await client.vector_stores.retrieve(store.id)
        assert (current.file_counts.completed, current.usage_bytes) == (1, 2)
        assert [f["id"] for f in standin.vector_store_files(store.id)] == [other]


async def test_poll_helpers_return_the_completed_file(client: openai.AsyncOpenAI) -> None:
    store = await client.vector_stores.create(name="polled")
    file_id = await upload(client, "a.txt", b"abc", purpose="assistants")
    created = await client.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id)
    assert created.status == "completed"
    uploaded = await client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("b.txt", b"hello")
    )
    assert (uploaded.status, uploaded.usage_bytes) == ("completed", 5)
    assert (await client.files.retrieve(uploaded.id)).filename == "b.txt"
    assert (await client.vector_stores.retrieve(store.id)).file_counts.total == 2


async def test_raw_bodies_match_the_sdk_models(client: openai.AsyncOpenAI, http: RawHttp) -> None:
    file_id = await upload(client, "a.txt", b"abc", purpose="assistants")
    store = (await http.post("/v1/vector_stores", {"file_ids": [file_id]})).body
    VectorStore.model_validate(store)
    path = f"/v1/vector_stores/{store['id']}"
    for attached in (await http.get(f"{path}/files")).body["data"]:
        VectorStoreFile.model_validate(attached)
    VectorStoreFile.model_validate((await http.get(f"{path}/files/{file_id}")).body)
    VectorStoreFileDeleted.model_validate((await http.delete(f"{path}/files/{file_id}")).body)
    VectorStoreDeleted.model_validate((await http.delete(path)).body)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/vector_stores", {"nmae": "typo"}, "nmae"),
        ("/v1/vector_stores", {"file_ids": "file_x"}, "file_ids"),
        ("/v1/vector_stores", {"expires_after": {"anchor": "created_at", "days": 1}}, None),
        ("/v1/vector_stores", {"expires_after": {"anchor": "last_active_at", "days": 0}}, None),
        ("/v1/vector_stores", {"chunking_strategy": {"type": "fancy"}}, None),
        ("/v1/vector_stores", {"metadata": {"k": 1}}, "metadata"),
        ("STORE/files", {}, "file_id"),
        ("STORE/files", {"file_id": "FILE", "attributes": {str(i): i for i in range(17)}}, None),
        ("STORE/files", {"file_id": "FILE", "attributes": {"k": ["list"]}}, "attributes.k"),
        ("STORE/files", {"file_id": "FILE", "attributes": {"k": "v" * 513}}, "attributes.k"),
        ("STORE/files", {"file_id": "FILE", "attributes": {"k" * 65: "v"}}, "attributes"),
        (
            "STORE/files",
            {
                "file_id": "FILE",
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101},
                },
            },
            None,
        ),
        ("STORE/files/FILE", {}, "attributes"),
        ("STORE", {"file_ids": []}, "file_ids"),
    ],
)
async def test_malformed_requests_are_400_naming_the_field(
    client: openai.AsyncOpenAI, http: RawHttp, path: str, body: dict[str, Any], param: str | None
) -> None:
    file_id = await upload(client, "a.txt", b"abc", purpose="assistants")
    store = await client.vector_stores.create(file_ids=[file_id])
    resolved = path.replace("STORE", f"/v1/vector_stores/{store.id}").replace("FILE", file_id)
    filled = {
        key: value.replace("FILE", file_id) if isinstance(value, str) else value
        for key, value in body.items()
    }
    reply = await http.post(resolved, filled)
    assert reply.status == 400
    if param is not None:
        assert reply.body["error"]["param"] == param
    else:
        assert reply.body["error"]["param"]


async def test_unknown_ids_are_404_with_the_error_shape(
    client: openai.AsyncOpenAI, http: RawHttp
) -> None:
    store = await client.vector_stores.create()
    for path in (
        "/v1/vector_stores/vs_missing",
        "/v1/vector_stores/vs_missing/files",
        f"/v1/vector_stores/{store.id}/files/file_missing",
        f"/v1/vector_stores/{store.id}/files/file_missing/content",
    ):
        reply = await http.get(path)
        assert reply.status == 404, path
        assert set(reply.body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError, match="file_missing"):
        await client.vector_stores.files.create(vector_store_id=store.id, file_id="file_missing")
    with pytest.raises(openai.BadRequestError, match="file_missing"):
        await client.vector_stores.create(file_ids=["file_missing"])
    assert [s.id async for s in client.vector_stores.list()] == [store.id]


async def _store_with(client: openai.AsyncOpenAI, *documents: tuple[str, bytes]) -> str:
    file_ids = [await upload(client, name, content, "assistants") for name, content in documents]
    return (await client.vector_stores.create(file_ids=file_ids)).id


async def test_search_ranks_paragraphs_by_the_query_words_they_hold(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store = await _store_with(client, ("guide.txt", GUIDE))
    hits = search(standin.state, [store], "How many days until my refund reaches the card?")
    refund = "Refunds reach the card within five working days of the return."
    parcels = "Parcels ship within two days of the order."
    # Word forms are not merged: "refund" does not match "Refunds", nor "reaches" "reach".
    assert [(hit.text, hit.score) for hit in hits] == [(refund, 2 / 6), (parcels, 1 / 6)]
    assert {hit.filename for hit in hits} == {"guide.txt"}


async def test_search_breaks_ties_by_file_then_position_and_skips_binary_files(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    first = await _store_with(
        client, ("image.png", b"\x89PNG\xff\xfe warranty"), ("one.txt", b"warranty A\n\nwarranty B")
    )
    second = await _store_with(client, ("two.txt", b"warranty C"))
    hits = search(standin.state, [first, second], "WARRANTY?", limit=10)
    assert [(hit.filename, hit.text, hit.score) for hit in hits] == [
        ("one.txt", "warranty A", 1.0),
        ("one.txt", "warranty B", 1.0),
        ("two.txt", "warranty C", 1.0),
    ]
    assert search(standin.state, [first, second], "warranty", limit=2) == hits[:2]


async def test_search_ignores_stopwords_short_words_and_unmatched_passages(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store = await _store_with(client, ("guide.txt", GUIDE))
    assert search(standin.state, [store], "is it on the way to you?") == []
    assert search(standin.state, [store], "holidays") == [
        Hit(
            file_id=standin.vector_store_files(store)[0]["id"],
            filename="guide.txt",
            text="Our shop is closed on public holidays.",
            score=1.0,
        )
    ]


async def test_search_of_an_unknown_store_is_the_api_404(standin: StandIn) -> None:
    with pytest.raises(ApiError) as missing:
        search(standin.state, ["vs_missing"], "anything")
    assert missing.value.status == 404
    assert "vs_missing" in missing.value.message
