"""Files through the SDK: upload purposes, retrieve, content, list pages, delete."""

from __future__ import annotations

import openai
import pytest
from openai.types import FilePurpose

from standin import StandIn
from tests.standin.support import RawHttp, upload


async def test_file_round_trip(client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=("notes.txt", b"hello file"), purpose="assistants")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("notes.txt", 10, "assistants")
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    assert (await client.files.content(uploaded.id)).content == b"hello file"
    other = await client.files.create(file=("b.jsonl", b"{}"), purpose="batch")

    listed = [f.id async for f in client.files.list()]
    assert listed == [other.id, uploaded.id]
    assert [f.id async for f in client.files.list(purpose="batch")] == [other.id]

    assert (await client.files.delete(uploaded.id)).deleted is True
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_upload_needs_a_known_purpose(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.files.create(file=("a.txt", b"x"), purpose="fine-tune-results")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "purpose", ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
)
async def test_every_upload_purpose_of_the_spec_is_accepted(
    client: openai.AsyncOpenAI, purpose: FilePurpose
) -> None:
    uploaded = await client.files.create(file=("f.jsonl", b"{}"), purpose=purpose)
    assert uploaded.purpose == purpose


async def test_list_orders_pages_and_filters_like_the_spec(
    client: openai.AsyncOpenAI, http: RawHttp
) -> None:
    ids = [await upload(client, f"f{i}.txt", purpose="user_data") for i in range(5)]
    batch = await upload(client, "b.jsonl", purpose="batch")

    # Default order is desc (newest first), default limit 10,000: one page holds all.
    first_page = await client.files.list()
    assert [f.id for f in first_page.data] == [batch, *ids[::-1]]
    assert first_page.has_more is False
    ascending = client.files.list(purpose="user_data", order="asc", limit=2)
    assert [f.id async for f in ascending] == ids
    page = (await http.get(f"/v1/files?purpose=user_data&order=asc&limit=2&after={ids[1]}")).body
    assert ([f["id"] for f in page["data"]], page["has_more"]) == (ids[2:4], True)
    for query in ("limit=0", "limit=10001", "order=newest"):
        reply = await http.get(f"/v1/files?{query}")
        assert (reply.status, reply.body["error"]["param"]) == (400, query.split("=")[0])
    assert (await http.get("/v1/files?limit=10000")).status == 200


async def test_a_deleted_file_is_gone_from_the_api_but_inspectable(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    kept = await upload(client, "kept.txt", b"keep", purpose="assistants")
    gone = await upload(client, "gone.txt", b"bye!!", purpose="user_data")
    assert (await client.files.delete(gone)).deleted is True

    assert [f.id async for f in client.files.list()] == [kept]
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as missing:
            await call(gone)
        assert missing.value.message.endswith(f"No such File object: {gone}")
    assert [
        {key: f[key] for key in ("id", "filename", "purpose", "bytes", "deleted")}
        for f in standin.files()
    ] == [
        {"id": kept, "filename": "kept.txt", "purpose": "assistants", "bytes": 4, "deleted": False},
        {"id": gone, "filename": "gone.txt", "purpose": "user_data", "bytes": 5, "deleted": True},
    ]
    assert standin.file_content(gone) == b"bye!!"
