"""Assistants messages with image parts and attachments: validation, storage, the echo."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.beta.threads import Message

from standin import StandIn
from tests.standin.support import RawHttp, upload, wait_until

ASSISTANT = "asst_files"


async def test_parts_and_attachments_are_kept_and_named_by_the_echo(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    photo = await upload(client, "photo.png", purpose="vision")
    doc = await upload(client, "doc.pdf", purpose="assistants")
    table = await upload(client, "data.csv", purpose="assistants")
    thread = await client.beta.threads.create()
    content: list[Any] = [
        {"type": "text", "text": "look"},
        {"type": "image_file", "image_file": {"file_id": photo, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
    ]
    attachments: list[Any] = [
        {"file_id": doc, "tools": [{"type": "file_search"}]},
        {"file_id": table, "tools": [{"type": "code_interpreter"}, {"type": "file_search"}]},
    ]
    created = await client.beta.threads.messages.create(
        thread.id, role="user", content=content, attachments=attachments, metadata={"m": "1"}
    )
    run = await client.beta.threads.runs.create(
        thread.id,
        assistant_id=ASSISTANT,
        additional_messages=[{"role": "user", "content": "plain"}],
    )
    assert await wait_until(standin, run.id) == "completed"

    stored, plain, reply = standin.thread_messages(thread.id)
    assert reply["content"][0]["text"]["value"] == (
        "Echo: look [files: photo.png, image, doc.pdf, data.csv] | plain"
    )
    assert stored["id"] == created.id
    assert stored["content"] == [
        {"type": "text", "text": {"value": "look", "annotations": []}},
        *content[1:],
    ]
    assert stored["attachments"] == attachments
    assert stored["metadata"] == {"m": "1"}
    assert (plain["attachments"], plain["metadata"]) == ([], {})

    fetched = await client.beta.threads.messages.retrieve(created.id, thread_id=thread.id)
    assert [block.type for block in fetched.content] == ["text", "image_file", "image_url"]
    assert fetched.attachments is not None
    assert [a.file_id for a in fetched.attachments] == [doc, table]


async def test_messages_with_parts_validate_against_the_sdk_type(
    client: openai.AsyncOpenAI, http: RawHttp
) -> None:
    photo = await upload(client, "photo.png", purpose="vision")
    doc = await upload(client, "doc.pdf", purpose="assistants")
    body = {
        "role": "user",
        "content": [
            {"type": "image_file", "image_file": {"file_id": photo}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "high"}},
        ],
        "attachments": [{"file_id": doc, "tools": [{"type": "code_interpreter"}]}],
    }
    thread = (await http.post("/v1/threads", {"messages": [body]})).body
    path = f"/v1/threads/{thread['id']}/messages"
    Message.model_validate((await http.post(path, body)).body)
    for message in (await http.get(path)).body["data"]:
        Message.model_validate(message)


BAD_PARTS = [
    ({"type": "input_text", "text": "x"}, "type", "invalid_value"),
    ({"text": "x"}, "type", "missing_required_parameter"),
    ({"type": "text"}, "text", "missing_required_parameter"),
    ({"type": "text", "text": ["x"]}, "text", "invalid_type"),
    ({"type": "image_file"}, "image_file", "missing_required_parameter"),
    ({"type": "image_file", "image_file": "file_x"}, "image_file", "invalid_type"),
    ({"type": "image_file", "image_file": {}}, "image_file.file_id", "missing_required_parameter"),
    (
        {"type": "image_file", "image_file": {"file_id": "file_x", "detail": "original"}},
        "image_file.detail",
        "invalid_value",
    ),
    (
        {"type": "image_file", "image_file": {"file_id": "file_x", "url": "https://x.test"}},
        "image_file.url",
        "unknown_parameter",
    ),
    ({"type": "image_url", "image_url": {"url": "cat.png"}}, "image_url.url", "invalid_value"),
    (
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}, "detail": "low"},
        "detail",
        "unknown_parameter",
    ),
]


def _with_bad_part(part: object) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": "ok"}, part]}


@pytest.mark.parametrize(("part", "field", "code"), BAD_PARTS)
async def test_a_bad_part_is_400_naming_its_path_wherever_the_message_goes(
    http: RawHttp, standin: StandIn, part: object, field: str, code: str
) -> None:
    thread = (await http.post("/v1/threads", {})).body
    messages_path = f"/v1/threads/{thread['id']}/messages"
    run_body = {"assistant_id": ASSISTANT, "additional_messages": [_with_bad_part(part)]}
    attempts = [
        (messages_path, _with_bad_part(part), "content[1]"),
        (f"/v1/threads/{thread['id']}/runs", run_body, "additional_messages[0].content[1]"),
        ("/v1/threads", {"messages": [_with_bad_part(part)]}, "messages[0].content[1]"),
        (
            "/v1/threads/runs",
            {"assistant_id": ASSISTANT, "thread": {"messages": [_with_bad_part(part)]}},
            "thread.messages[0].content[1]",
        ),
    ]
    for path, body, prefix in attempts:
        reply = await http.post(path, body)
        assert reply.status == 400, path
        error = reply.body["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            f"{prefix}.{field}",
            code,
        ), path
    assert standin.thread_messages(thread["id"]) == []
    assert list(standin.state.threads) == [thread["id"]]
    assert standin.state.runs == {}


BAD_ATTACHMENTS = [
    ({"file_id": "file_x"}, "attachments", "invalid_type"),
    ([{"tools": []}], "attachments[0].file_id", "missing_required_parameter"),
    ([{"file_id": "file_x"}], "attachments[0].tools", "missing_required_parameter"),
    ([{"file_id": "file_x", "tools": {}}], "attachments[0].tools", "invalid_type"),
    (
        [{"file_id": "file_x", "tools": [{"type": "function"}]}],
        "attachments[0].tools[0].type",
        "invalid_value",
    ),
    (
        [{"file_id": "file_x", "tools": [{"type": "file_search", "vector_store_ids": []}]}],
        "attachments[0].tools[0].vector_store_ids",
        "unknown_parameter",
    ),
    ([{"file_id": "file_x", "tools": [], "name": "a"}], "attachments[0].name", "unknown_parameter"),
]


@pytest.mark.parametrize(("attachments", "param", "code"), BAD_ATTACHMENTS)
async def test_bad_attachments_are_400_naming_their_path(
    http: RawHttp, standin: StandIn, attachments: object, param: str, code: str
) -> None:
    thread = (await http.post("/v1/threads", {})).body
    body = {"role": "user", "content": "x", "attachments": attachments}
    reply = await http.post(f"/v1/threads/{thread['id']}/messages", body)
    assert reply.status == 400
    assert (reply.body["error"]["param"], reply.body["error"]["code"]) == (param, code)
    assert standin.thread_messages(thread["id"]) == []


async def test_unknown_and_deleted_files_are_one_400_and_change_nothing(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    kept = await upload(client, "kept.png", purpose="vision")
    gone = await upload(client, "gone.pdf", purpose="assistants")
    await client.files.delete(gone)
    thread = await client.beta.threads.create()
    content: list[Any] = [
        {"type": "text", "text": "x"},
        {"type": "image_file", "image_file": {"file_id": "file_nope"}},
        {"type": "image_file", "image_file": {"file_id": kept}},
    ]
    attachments: list[Any] = [{"file_id": gone, "tools": [{"type": "file_search"}]}]

    with pytest.raises(openai.BadRequestError) as create_error:
        await client.beta.threads.messages.create(
            thread.id, role="user", content=content, attachments=attachments
        )
    error = create_error.value
    assert (error.type, error.param, error.code) == ("invalid_request_error", None, None)
    assert error.message.endswith(
        f"Files [file_nope, {gone}] were not found due to ownership verification failure."
    )
    message: Any = {"role": "user", "content": content, "attachments": attachments}
    with pytest.raises(openai.BadRequestError, match=gone):
        await client.beta.threads.runs.create(
            thread.id, assistant_id=ASSISTANT, additional_messages=[message]
        )
    with pytest.raises(openai.BadRequestError, match="file_nope"):
        await client.beta.threads.create(messages=[message])
    with pytest.raises(openai.BadRequestError, match="file_nope"):
        await client.beta.threads.create_and_run(
            assistant_id=ASSISTANT, thread={"messages": [message]}
        )
    assert standin.thread_messages(thread.id) == []
    assert list(standin.state.threads) == [thread.id]
    assert standin.state.runs == {}


@pytest.mark.parametrize(
    "bad_metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
    ],
)
async def test_message_metadata_limits(
    http: RawHttp, standin: StandIn, bad_metadata: dict[str, Any]
) -> None:
    thread = (await http.post("/v1/threads", {})).body
    path = f"/v1/threads/{thread['id']}/messages"
    reply = await http.post(path, {"role": "user", "content": "x", "metadata": bad_metadata})
    assert reply.status == 400
    assert reply.body["error"]["param"] == "metadata"
    at_the_limits = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    body = {"role": "user", "content": "x", "metadata": at_the_limits}
    assert (await http.post(path, body)).status == 200
    assert [m["metadata"] for m in standin.thread_messages(thread["id"])] == [at_the_limits]
