"""Reading a Responses API body without the SDK's model (worker/backends/response_wire.py): the
same RunSnapshot the SDK's `Response` model gave, for the stand-in's real responses, and the
worker's ApiError, never a KeyError or TypeError, for a body that is not what the API sends."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import openai
import pytest
from openai._legacy_response import LegacyAPIResponse
from openai._models import construct_type
from openai.types.conversations.conversation_item import ConversationItem
from openai.types.responses import Response
from openai.types.responses.response_output_item import ResponseOutputItem

from standin import StandIn
from worker.backends import responses as responses_backend
from worker.backends.base import ApprovalRequest, RunSnapshot, RunStatus, ToolCall
from worker.backends.response_wire import MALFORMED, read_reply_messages, read_snapshot
from worker.errors import ApiError, ApiTransient, PermanentApiError
from worker.events import ReplyMessage, RunError, ToolCallSummary, ToolKind, ToolOutcome, Usage

Json = dict[str, Any]

FAQ = "Returns\n\nParcels can be returned within thirty days with the receipt."
MCP = {
    "type": "mcp",
    "server_label": "wiki",
    "server_url": "https://mcp.example.com/mcp",
    "allowed_tools": ["read_page", "ask_first"],
    "require_approval": {
        "always": {"tool_names": ["ask_first"]},
        "never": {"tool_names": ["read_page"]},
    },
}
FUNCTION = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}


# --- the SDK's model and the wire, on the stand-in's responses ------------------------------


def _model_snapshot(response: Response, poll_after_ms: int | None) -> RunSnapshot:
    """The snapshot as the backend read it from the SDK's model before response_wire: the
    reference the wire reading is held to."""
    status = RunStatus(response.status or "queued")
    calls = tuple(
        ToolCall(o.call_id, o.name, o.arguments)
        for o in response.output
        if o.type == "function_call"
    )
    approvals = tuple(
        ApprovalRequest(o.id, o.server_label, o.name)
        for o in response.output
        if o.type == "mcp_approval_request"
    )
    if status is RunStatus.COMPLETED and (calls or approvals):
        status = RunStatus.REQUIRES_ACTION
    error = None
    if response.error is not None:
        error = RunError(str(response.error.code), response.error.message)
    elif response.incomplete_details is not None:
        reason = response.incomplete_details.reason or "incomplete"
        error = RunError(reason, f"the response stopped early: {reason}")
    usage = None
    if response.usage is not None:
        u = response.usage
        usage = Usage(u.input_tokens, u.output_tokens, u.total_tokens)
    settled = status.is_terminal and bool(response.output)
    asks = status is RunStatus.REQUIRES_ACTION
    return RunSnapshot(
        run_id=response.id,
        status=status,
        poll_after_ms=poll_after_ms,
        tool_calls=calls if asks else (),
        approvals=approvals if asks else (),
        error=error,
        usage=usage,
        messages=_model_messages(response) if settled else None,
        last_item_id=response.output[-1].id if settled else None,
        hosted_calls=_model_hosted_calls(response.output),
    )


def _model_messages(response: Response) -> tuple[ReplyMessage, ...]:
    replies = []
    for item in response.output:
        if item.type != "message":
            continue
        texts: list[str] = []
        annotations: list[Json] = []
        for part in item.content:
            if part.type == "output_text":
                texts.append(part.text)
                annotations.extend(a.model_dump(mode="json") for a in part.annotations)
            elif part.type == "refusal":
                texts.append(part.refusal)
        produced = [a["file_id"] for a in annotations if a["type"] == "container_file_citation"]
        replies.append(
            ReplyMessage(
                item.id, "\n".join(texts), tuple(annotations), tuple(dict.fromkeys(produced))
            )
        )
    return tuple(replies)


_HOSTED = {
    "file_search_call": ToolKind.FILE_SEARCH,
    "code_interpreter_call": ToolKind.CODE_INTERPRETER,
    "web_search_call": ToolKind.WEB_SEARCH,
    "mcp_call": ToolKind.MCP,
}


def _model_hosted_calls(output: list[ResponseOutputItem]) -> tuple[ToolCallSummary, ...]:
    calls = []
    for item in output:
        kind = _HOSTED.get(item.type)
        if kind is None:
            continue
        if item.type == "mcp_call":
            name = f"{item.server_label}.{item.name}"
            failed = item.error is not None
        else:
            name, failed = kind.value, getattr(item, "status", "completed") == "failed"
        calls.append(ToolCallSummary(kind, name, ToolOutcome.ERROR if failed else ToolOutcome.OK))
    return tuple(calls)


@pytest.fixture
async def client(standin: StandIn) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def tools(client: openai.AsyncOpenAI) -> list[Json]:
    """Every tool the worker declares: a function, and the hosted ones over a vector store."""
    file = await client.files.create(file=("faq.md", FAQ.encode()), purpose="assistants")
    store = await client.vector_stores.create(name="faq", file_ids=[file.id])
    return [
        FUNCTION,
        {"type": "file_search", "vector_store_ids": [store.id]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "web_search"},
        MCP,
    ]


class Readings:
    """Both readings of each body one response answered: its create, then each retrieve."""

    def __init__(self) -> None:
        self.model: list[RunSnapshot] = []
        self.wire: list[RunSnapshot] = []

    def read(
        self, raw: LegacyAPIResponse[Response], poll_after_ms: int | None = None
    ) -> RunSnapshot:
        self.model.append(_model_snapshot(raw.parse(), poll_after_ms))
        self.wire.append(read_snapshot(raw.content, poll_after_ms))
        return self.wire[-1]


async def _readings(client: openai.AsyncOpenAI, text: str, tools: list[Json]) -> Readings:
    """Creates a response to `text` and reads every body until it has ended."""
    conversation = await client.conversations.create()
    readings = Readings()
    snapshot = readings.read(
        await client.responses.with_raw_response.create(
            background=True,
            store=True,
            conversation=conversation.id,
            model="gpt-4o-mini",
            extra_body={
                "input": [{"type": "message", "role": "user", "content": text}],
                "tools": tools,
            },
        )
    )
    while snapshot.status in (RunStatus.QUEUED, RunStatus.IN_PROGRESS):
        await asyncio.sleep(0.02)
        raw = await client.responses.with_raw_response.retrieve(snapshot.run_id)
        snapshot = readings.read(raw, poll_after_ms=250)
    return readings


async def test_a_reply_with_every_hosted_tool_reads_as_the_model_does(
    client: openai.AsyncOpenAI, tools: list[Json]
) -> None:
    text = "can parcels be returned? [[code_file:r.csv]] [[web_search]] [[mcp:wiki:read_page {}]]"
    readings = await _readings(client, text, tools)

    assert readings.wire == readings.model
    last = readings.wire[-1]
    assert last.status is RunStatus.COMPLETED
    assert [c.kind for c in last.hosted_calls] == [
        ToolKind.FILE_SEARCH,
        ToolKind.WEB_SEARCH,
        ToolKind.CODE_INTERPRETER,
        ToolKind.MCP,
    ]
    assert last.messages is not None
    [message] = last.messages
    kinds = [a["type"] for a in message.annotations]
    assert kinds == ["file_citation", "url_citation", "container_file_citation"]
    [produced] = message.files
    assert produced.startswith("cfile_")
    assert last.last_item_id == message.id


async def test_a_failing_mcp_tool_reads_as_the_model_does(
    client: openai.AsyncOpenAI, tools: list[Json]
) -> None:
    readings = await _readings(client, "fix it [[mcp:wiki:edit_page {}]]", tools)

    assert readings.wire == readings.model
    assert ToolCallSummary(ToolKind.MCP, "wiki.edit_page", ToolOutcome.ERROR) in (
        readings.wire[-1].hosted_calls
    )


@pytest.mark.parametrize(
    ("text", "asked"),
    [
        ('[[call:lookup {"q": "a"}]] [[call:lookup {"q": "b"}]]', "tool_calls"),
        ("please [[mcp:wiki:ask_first {}]]", "approvals"),
    ],
)
async def test_what_the_model_asks_for_reads_as_the_model_does(
    client: openai.AsyncOpenAI, tools: list[Json], text: str, asked: str
) -> None:
    readings = await _readings(client, text, tools)

    assert readings.wire == readings.model
    last = readings.wire[-1]
    assert last.status is RunStatus.REQUIRES_ACTION
    assert getattr(last, asked)
    assert (last.messages, last.last_item_id) == (None, None)


@pytest.mark.parametrize(
    ("marker", "status", "code"),
    [
        ("[[outcome:failed:rate_limit_exceeded]]", RunStatus.FAILED, "rate_limit_exceeded"),
        ("[[outcome:incomplete]]", RunStatus.INCOMPLETE, "max_output_tokens"),
    ],
)
async def test_a_response_that_did_not_complete_reads_as_the_model_does(
    client: openai.AsyncOpenAI, marker: str, status: RunStatus, code: str
) -> None:
    readings = await _readings(client, f"hello {marker}", [])

    assert readings.wire == readings.model
    last = readings.wire[-1]
    assert last.status is status
    assert last.error is not None
    assert last.error.code == code


async def test_the_reply_messages_of_a_body_are_the_snapshots(
    client: openai.AsyncOpenAI, tools: list[Json]
) -> None:
    readings = await _readings(client, "when? [[code_file:a.csv]] [[web_search]]", tools)
    raw = await client.responses.with_raw_response.retrieve(readings.wire[-1].run_id)

    assert read_reply_messages(raw.content) == readings.wire[-1].messages


# --- what the wire reading does on its own ---------------------------------------------------


def _body(**fields: Any) -> bytes:
    return json.dumps({"id": "resp_1", "status": "completed", "output": [], **fields}).encode()


def _message(*content: Json, item_id: str = "msg_1") -> Json:
    return {"id": item_id, "type": "message", "role": "assistant", "content": content}


def _text(text: str, *annotations: Any) -> Json:
    return {"type": "output_text", "text": text, "annotations": list(annotations)}


def test_a_response_without_status_or_output_yet_is_queued() -> None:
    snapshot = read_snapshot(json.dumps({"id": "resp_1", "output": []}).encode(), 500)

    assert snapshot == RunSnapshot("resp_1", RunStatus.QUEUED, poll_after_ms=500)


def test_texts_and_refusals_join_and_container_files_are_named_once() -> None:
    cited = {"type": "container_file_citation", "container_id": "c", "file_id": "cfile_1"}
    url = {"type": "url_citation", "url": "https://example.com", "title": "t"}
    body = _body(
        output=[
            _message(_text("one", cited, url), {"type": "refusal", "refusal": "two"}),
            _message(_text("three", cited, cited), item_id="msg_2"),
        ]
    )

    snapshot = read_snapshot(body)

    assert snapshot.messages == (
        ReplyMessage("msg_1", "one\ntwo", (cited, url), ("cfile_1",)),
        ReplyMessage("msg_2", "three", (cited, cited), ("cfile_1",)),
    )
    assert snapshot.last_item_id == "msg_2"


def test_an_incomplete_response_without_a_reason_says_incomplete() -> None:
    body = _body(status="incomplete", incomplete_details={"reason": None})

    assert read_snapshot(body).error == RunError(
        "incomplete", "the response stopped early: incomplete"
    )


def test_hosted_calls_fail_by_their_status_or_mcp_error() -> None:
    body = _body(
        output=[
            {"id": "ws_1", "type": "web_search_call"},
            {"id": "ci_1", "type": "code_interpreter_call", "status": "failed"},
            {"id": "mcp_1", "type": "mcp_call", "server_label": "w", "name": "n", "error": "x"},
            {"id": "rs_1", "type": "reasoning", "summary": []},
        ]
    )

    assert read_snapshot(body).hosted_calls == (
        ToolCallSummary(ToolKind.WEB_SEARCH, "web_search", ToolOutcome.OK),
        ToolCallSummary(ToolKind.CODE_INTERPRETER, "code_interpreter", ToolOutcome.ERROR),
        ToolCallSummary(ToolKind.MCP, "w.n", ToolOutcome.ERROR),
    )


SECRET = "my card number is 4111"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"<html>502 Bad Gateway</html>", "the body is not JSON"),
        (b'{"id": "resp_\xff"}', "the body is not JSON"),  # not UTF-8
        (b'["resp_1"]', "the body is not a JSON object"),
        (json.dumps({"status": "queued", "output": []}).encode(), "response.id is not a string"),
        (_body(output={"text": SECRET}), "response.output is not a list"),
        (_body(status="thinking"), "response.status is not a status"),
        (_body(output=[SECRET]), "output[0] is not an object"),
        (_body(output=[{"id": "x", "text": SECRET}]), "output[0].type is not a string"),
        (
            _body(output=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]),
            "output[0].arguments is not a string",
        ),
        (_body(output=[_message(_text(SECRET), {"type": "refusal"})]), "output[0].content[1]"),
        (_body(output=[_message(_text(SECRET, SECRET))]), "content[0].annotations[0] is not"),
        (
            _body(output=[_message(_text(SECRET, {"type": "container_file_citation"}))]),
            "annotations[0].file_id is not a string",
        ),
        (_body(usage={"input_tokens": "10"}), "response.usage.input_tokens is not an integer"),
        (_body(error={"code": "x", "message": None}), "response.error.message is not a string"),
    ],
)
def test_a_body_that_is_not_a_response_is_the_workers_error(body: bytes, where: str) -> None:
    with pytest.raises(ApiError) as caught:
        read_snapshot(body)

    error = caught.value
    assert not isinstance(error, ApiTransient | PermanentApiError)  # neither retried nor refused
    assert error.label == MALFORMED
    assert where in error.detail
    assert SECRET not in str(error)  # where it went wrong, never what the body held


def test_the_reply_messages_of_a_malformed_body_are_the_workers_error() -> None:
    with pytest.raises(ApiError, match=re.escape("output[0].content is not a list")):
        read_reply_messages(_body(output=[{"id": "m", "type": "message", "content": None}]))


def test_an_items_runs_message_is_read_from_the_sdks_model_as_a_responses_is() -> None:
    # An adopted run's reply comes from the conversation's items (the SDK's models); dumped,
    # the same reader as a response body's takes it.
    cited = {
        "type": "container_file_citation",
        "container_id": "c",
        "file_id": "cfile_1",
        "filename": "plot.png",
        "start_index": 0,
        "end_index": 3,
    }
    doc = _message(_text("one", cited), {"type": "refusal", "refusal": "two"})
    # As the SDK builds it from a page of items: content a list, as in the JSON.
    listed = {**doc, "content": list(doc["content"])}
    item = cast(ConversationItem, construct_type(type_=ConversationItem, value=listed))

    assert responses_backend._reply(item) == ReplyMessage(
        "msg_1", "one\ntwo", (cited,), ("cfile_1",)
    )
