"""Files through the SDK: upload, retrieve, content, list, delete."""

from __future__ import annotations

import openai
import pytest


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
