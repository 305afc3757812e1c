"""Responses input parts that carry files and images: validation, storage, the echo."""

from __future__ import annotations

from typing import Any

import openai
import pydantic
import pytest
from openai.types.conversations import ConversationItem
from openai.types.responses import ResponseInputContentParam, ResponseInputItemParam

from standin import StandIn
from tests.standin.support import RawHttp, upload, wait_until

MODEL = "gpt-test"
NOTES_DATA = "data:text/plain;base64,aGVsbG8="
_ITEM: pydantic.TypeAdapter[ConversationItem] = pydantic.TypeAdapter(ConversationItem)


async def _respond(
    client: openai.AsyncOpenAI,
    standin: StandIn,
    conversation_id: str,
    items: list[ResponseInputItemParam],
    metadata: dict[str, str] | None = None,
) -> str:
    response = await client.responses.create(
        model=MODEL,
        background=True,
        store=True,
        conversation=conversation_id,
        input=items,
        metadata=metadata,
    )
    assert await wait_until(standin, response.id) == "completed"
    return response.id


async def test_files_and_images_are_kept_as_sent_and_named_by_the_echo(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    report = await upload(client, "report.pdf")
    photo = await upload(client, "photo.png", purpose="vision")
    conversation = await client.conversations.create(
        items=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "see"},
                    {"type": "input_file", "file_id": report},
                ],
            },
            {"role": "user", "content": "plain"},
        ]
    )
    response_id = await _respond(
        client,
        standin,
        conversation.id,
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "and these"},
                    {"type": "input_image", "file_id": photo, "detail": "low"},
                    {
                        "type": "input_image",
                        "image_url": "https://x.test/cat.png",
                        "detail": "auto",
                    },
                    {"type": "input_file", "filename": "notes.txt", "file_data": NOTES_DATA},
                    {"type": "input_file", "file_url": "https://x.test/docs/terms.pdf"},
                ],
            }
        ],
        metadata={"ticket": "T-9"},
    )

    done = await client.responses.retrieve(response_id)
    assert done.output_text == (
        "Echo: see [files: report.pdf] | plain"
        " | and these [files: photo.png, image, notes.txt, terms.pdf]"
    )
    first, _, sent, _ = standin.conversation_items(conversation.id)
    assert first["content"] == [
        {"type": "input_text", "text": "see"},
        {"type": "input_file", "file_id": report},
    ]
    assert sent["content"] == [
        {"type": "input_text", "text": "and these"},
        {"type": "input_image", "detail": "low", "file_id": photo, "image_url": None},
        {
            "type": "input_image",
            "detail": "auto",
            "file_id": None,
            "image_url": "https://x.test/cat.png",
        },
        {"type": "input_file", "filename": "notes.txt", "file_data": NOTES_DATA},
        {"type": "input_file", "file_url": "https://x.test/docs/terms.pdf"},
    ]
    assert standin.response(response_id)["metadata"] == {"ticket": "T-9"}
    (input_item,) = standin.response_input_items(response_id)
    assert input_item["content"] == sent["content"]

    listed = [i async for i in client.conversations.items.list(conversation.id, order="asc")]
    assert listed[0].type == "message"
    assert [part.type for part in listed[0].content] == ["input_text", "input_file"]


async def test_a_message_of_files_alone_echoes_only_the_names(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    report = await upload(client, "report.pdf")
    conversation = await client.conversations.create()
    response_id = await _respond(
        client,
        standin,
        conversation.id,
        [{"role": "user", "content": [{"type": "input_file", "file_id": report}]}],
    )
    assert (await client.responses.retrieve(response_id)).output_text == (
        "Echo: [files: report.pdf]"
    )


async def test_stored_parts_validate_against_the_sdk_types(
    client: openai.AsyncOpenAI, http: RawHttp, standin: StandIn
) -> None:
    photo = await upload(client, "photo.png", purpose="vision")
    conversation = (await http.post("/v1/conversations", {})).body
    content = [
        {"type": "input_text", "text": "look"},
        # No detail: the API defaults it to auto, and returns it.
        {"type": "input_image", "file_id": photo},
        {"type": "input_file", "filename": "n.txt", "file_data": NOTES_DATA, "detail": "high"},
    ]
    path = f"/v1/conversations/{conversation['id']}/items"
    added = await http.post(path, {"items": [{"role": "user", "content": content}]})
    assert added.status == 200
    (item,) = added.body["data"]
    assert item["content"][1]["detail"] == "auto"
    for stored in (await http.get(path)).body["data"]:
        _ITEM.validate_python(stored)


def _with_bad_part(part: object) -> list[dict[str, Any]]:
    """The bad part second in the second item, so the error must name the full path."""
    return [
        {"role": "user", "content": "fine"},
        {"role": "user", "content": [{"type": "input_text", "text": "ok"}, part]},
    ]


BAD_PARTS = [
    ({"type": "input_audio", "input_audio": {}}, "type", "invalid_value"),
    ({"text": "no type"}, "type", "missing_required_parameter"),
    ({"type": "input_text"}, "text", "missing_required_parameter"),
    ({"type": "input_text", "text": 7}, "text", "invalid_type"),
    ({"type": "input_text", "text": "x", "annotations": []}, "annotations", "unknown_parameter"),
    ({"type": "input_image", "detail": "auto"}, None, "missing_required_parameter"),
    (
        {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "ultra"},
        "detail",
        "invalid_value",
    ),
    (
        {"type": "input_image", "image_url": "not a url", "detail": "auto"},
        "image_url",
        "invalid_value",
    ),
    (
        {"type": "input_image", "image_url": {"url": "https://x.test/a.png"}},
        "image_url",
        "invalid_type",
    ),
    ({"type": "input_file"}, None, "missing_required_parameter"),
    (
        {"type": "input_file", "filename": "a.pdf", "file_data": "aGVsbG8="},
        "file_data",
        "invalid_value",
    ),
    (
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:a/b;base64,%%%"},
        "file_data",
        "invalid_value",
    ),
    ({"type": "input_file", "file_data": NOTES_DATA}, "filename", "missing_required_parameter"),
    ({"type": "input_file", "file_url": "ftp://x.test/a.pdf"}, "file_url", "invalid_value"),
    ({"type": "input_file", "file_id": "file_x", "detail": "original"}, "detail", "invalid_value"),
    (
        {"type": "input_file", "file_id": "file_x", "purpose": "user_data"},
        "purpose",
        "unknown_parameter",
    ),
    ({"type": "input_file", "file_id": "f" * 65}, "file_id", "string_above_max_length"),
    ("input_text", None, "invalid_type"),
]


@pytest.mark.parametrize(("part", "field", "code"), BAD_PARTS)
async def test_a_bad_part_in_responses_input_is_400_naming_its_path(
    http: RawHttp, standin: StandIn, part: object, field: str | None, code: str
) -> None:
    body = {"model": MODEL, "input": _with_bad_part(part)}
    reply = await http.post("/v1/responses", body)
    assert reply.status == 400
    error = reply.body["error"]
    path = "input[1].content[1]"
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert error["param"] == (f"{path}.{field}" if field else path)
    assert standin.state.responses == {}


@pytest.mark.parametrize(("part", "field", "code"), BAD_PARTS)
async def test_a_bad_part_in_conversation_items_is_400_naming_its_path(
    http: RawHttp, standin: StandIn, part: object, field: str | None, code: str
) -> None:
    conversation = (await http.post("/v1/conversations", {})).body
    path = f"/v1/conversations/{conversation['id']}/items"
    reply = await http.post(path, {"items": _with_bad_part(part)})
    assert reply.status == 400
    expected = "items[1].content[1]"
    assert reply.body["error"]["param"] == (f"{expected}.{field}" if field else expected)
    assert reply.body["error"]["code"] == code
    assert standin.conversation_items(conversation["id"]) == []

    created = await http.post("/v1/conversations", {"items": _with_bad_part(part)})
    assert created.status == 400
    assert list(standin.state.conversations) == [conversation["id"]]


def _naming(*file_ids: str) -> list[ResponseInputItemParam]:
    """One user message: a file part for the first id, image parts for the rest."""
    content: list[ResponseInputContentParam] = [{"type": "input_file", "file_id": file_ids[0]}]
    content += [{"type": "input_image", "file_id": f, "detail": "auto"} for f in file_ids[1:]]
    return [{"role": "user", "content": content}]


async def test_unknown_and_deleted_files_are_one_400_listing_them_all(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    kept = await upload(client, "kept.pdf")
    gone = await upload(client, "gone.png", purpose="vision")
    await client.files.delete(gone)
    conversation = await client.conversations.create()

    with pytest.raises(openai.BadRequestError) as create_error:
        await _respond(client, standin, conversation.id, _naming("file_nope", kept, gone))
    error = create_error.value
    assert (error.type, error.param, error.code) == ("invalid_request_error", None, None)
    assert error.message.endswith(
        f"Files [file_nope, {gone}] were not found due to ownership verification failure."
    )
    assert standin.state.responses == {}

    with pytest.raises(openai.BadRequestError, match=gone):
        await client.conversations.items.create(conversation.id, items=_naming(kept, gone))
    assert standin.conversation_items(conversation.id) == []
    with pytest.raises(openai.BadRequestError, match="file_nope"):
        await client.conversations.create(items=_naming("file_nope"))
    assert list(standin.state.conversations) == [conversation.id]


async def test_a_file_deleted_after_use_keeps_its_name_in_the_echo(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    report = await upload(client, "report.pdf")
    conversation = await client.conversations.create(items=_naming(report))
    await client.files.delete(report)
    response_id = await _respond(
        client, standin, conversation.id, [{"role": "user", "content": "what was it?"}]
    )
    assert (await client.responses.retrieve(response_id)).output_text == (
        "Echo: [files: report.pdf] | what was it?"
    )
