"""Responses generation options and scripted tool use, through the official SDK."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import openai
import pydantic
import pytest
from openai.types.conversations import ConversationItem
from openai.types.responses import Response, ResponseFunctionToolCall

from standin import StandIn
from standin.mcp_tool import mcp_calls
from tests.standin.support import upload, wait_until

MODEL = "gpt-test"
# ConversationItem is a union, so it validates through a TypeAdapter.
_ITEM: pydantic.TypeAdapter[ConversationItem] = pydantic.TypeAdapter(ConversationItem)


def _message(error: openai.APIStatusError) -> str:
    """The API's own error message (the SDK's ``message`` prefixes the status)."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


# Generation options


async def test_generation_options_are_recorded_and_shown(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    response = await client.responses.create(
        model="o4-mini",
        input="hi",
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=500,
        reasoning={"effort": "low", "summary": "auto"},
        tool_choice="required",
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}},
        truncation="auto",
        store=True,
        include=["file_search_call.results"],
        prompt={"id": "pmpt_1", "version": "2"},
        service_tier="flex",
        safety_identifier="user-1",
    )
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.3, 0.9, 500)
    assert response.reasoning is not None
    assert (response.reasoning.effort, response.reasoning.summary) == ("low", "auto")
    assert (response.tool_choice, response.parallel_tool_calls) == ("required", False)
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert (response.truncation, response.service_tier) == ("auto", "flex")
    assert response.prompt is not None
    assert (response.prompt.id, response.prompt.version) == ("pmpt_1", "2")
    assert response.safety_identifier == "user-1"
    assert standin.state.responses[response.id].options["include"] == ["file_search_call.results"]


async def test_unset_options_show_the_api_defaults(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    plain = await client.responses.create(model=MODEL, input="hi")
    assert (plain.temperature, plain.top_p, plain.tool_choice) == (1.0, 1.0, "auto")
    assert (plain.truncation, plain.service_tier) == ("disabled", "default")
    assert standin.response(plain.id)["store"] is True
    assert plain.text is not None
    assert plain.text.format is not None
    assert (plain.text.format.type, plain.text.verbosity) == ("text", "medium")
    assert plain.reasoning is not None
    assert plain.reasoning.effort is None
    reasoning = await client.responses.create(model="gpt-5-mini", input="hi", service_tier="fast")
    assert reasoning.reasoning is not None
    assert reasoning.reasoning.effort == "medium"
    assert reasoning.service_tier == "priority"


@pytest.mark.parametrize(
    ("option", "value", "code", "message"),
    [
        (
            "max_output_tokens",
            10,
            "integer_below_min_value",
            "Invalid 'max_output_tokens': integer below minimum value. "
            "Expected a value >= 16, but got 10 instead.",
        ),
        (
            "temperature",
            2.5,
            "decimal_above_max_value",
            "Invalid 'temperature': decimal above maximum value. "
            "Expected a value <= 2, but got 2.5 instead.",
        ),
        ("temperature", -1, "decimal_below_min_value", None),
        ("top_p", 1.5, "decimal_above_max_value", None),
        ("top_logprobs", 21, "integer_above_max_value", None),
        ("temperature", "hot", "invalid_type", None),
        ("max_output_tokens", 20.5, "invalid_type", None),
        ("truncation", "sometimes", "invalid_value", None),
        ("service_tier", "gold", "invalid_value", None),
        ("tool_choice", "always", "invalid_value", None),
    ],
)
async def test_option_values_are_checked_as_the_api_checks_them(
    client: openai.AsyncOpenAI, option: str, value: Any, code: str, message: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi", extra_body={option: value})
    assert (refused.value.code, refused.value.param) == (code, option)
    if message is not None:
        assert _message(refused.value) == message


async def test_include_and_text_format_are_checked(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as include:
        await client.responses.create(
            model=MODEL, input="hi", extra_body={"include": ["file_search_call.results", "x"]}
        )
    assert (include.value.code, include.value.param) == ("invalid_value", "include[1]")
    with pytest.raises(openai.BadRequestError) as schema:
        await client.responses.create(
            model=MODEL,
            input="hi",
            extra_body={"text": {"format": {"type": "json_schema", "name": "a"}}},
        )
    assert (schema.value.code, schema.value.param) == (
        "missing_required_parameter",
        "text.format.schema",
    )


async def test_unknown_parameters_are_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi", extra_body={"temprature": 1})
    assert refused.value.code == "unknown_parameter"
    assert _message(refused.value) == "Unknown parameter: 'temprature'."
    with pytest.raises(openai.BadRequestError) as nested:
        await client.responses.create(
            model="o3", input="hi", extra_body={"reasoning": {"effort": "low", "depth": 3}}
        )
    assert (nested.value.code, nested.value.param) == ("unknown_parameter", "reasoning.depth")


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo"])
async def test_reasoning_is_refused_for_non_reasoning_models(
    client: openai.AsyncOpenAI, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=model, input="hi", reasoning={"effort": "low"})
    assert _message(refused.value) == (
        "Unsupported parameter: 'reasoning.effort' is not supported with this model."
    )
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == "reasoning.effort"


@pytest.mark.parametrize("model", ["o3", "o4-mini", "gpt-5", "gpt-5-nano"])
async def test_reasoning_is_accepted_for_reasoning_models(
    client: openai.AsyncOpenAI, model: str
) -> None:
    response = await client.responses.create(model=model, input="hi", reasoning={"effort": "high"})
    assert response.reasoning is not None
    assert response.reasoning.effort == "high"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(
            model=model, input="hi", extra_body={"reasoning": {"effort": "extreme"}}
        )
    assert (refused.value.code, refused.value.param) == ("invalid_value", "reasoning.effort")


async def test_a_reply_longer_than_max_output_tokens_is_incomplete(
    client: openai.AsyncOpenAI,
) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    response = await client.responses.create(model=MODEL, input=words, max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Echo: " + " ".join(f"w{i}" for i in range(15))
    assert response.usage is not None
    assert response.usage.output_tokens == 16
    roomy = await client.responses.create(model=MODEL, input=words, max_output_tokens=31)
    assert (roomy.status, roomy.output_text) == ("completed", f"Echo: {words}")


# Scripted function calls

FUNCTIONS: list[Any] = [
    {
        "type": "function",
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    },
    {"type": "function", "name": "track", "parameters": {"type": "object", "properties": {}}},
    {
        "type": "function",
        "name": "ask",
        "parameters": {"type": "object", "properties": {"question": {"type": "string"}}},
    },
]


async def _settle(
    client: openai.AsyncOpenAI,
    standin: StandIn,
    conversation_id: str,
    input: Any,
    tools: Any = (),
    **options: Any,
) -> Response:
    response = await client.responses.create(
        model=MODEL,
        background=True,
        store=True,
        conversation=conversation_id,
        input=input,
        tools=list(tools),
        **options,
    )
    await wait_until(standin, response.id)
    return await client.responses.retrieve(response.id)


async def _item_types(client: openai.AsyncOpenAI, conversation_id: str) -> list[str]:
    types: list[str] = [
        item.type async for item in client.conversations.items.list(conversation_id)
    ]
    return types[::-1]


def _calls(response: Response) -> list[ResponseFunctionToolCall]:
    return [item for item in response.output if item.type == "function_call"]


def _outputs(calls: list[ResponseFunctionToolCall], *texts: str) -> list[Any]:
    return [
        {"type": "function_call_output", "call_id": call.call_id, "output": text}
        for call, text in zip(calls, texts, strict=True)
    ]


async def test_call_markers_make_parallel_calls_with_their_arguments(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    text = 'where [[call:lookup_order {"order_id": "A-1"}]] [[call:track {"days": 2}]] [[call:ask]]'
    asking = await _settle(client, standin, conversation.id, text, FUNCTIONS)
    assert asking.status == "completed"
    calls = _calls(asking)
    assert len(calls) == len(asking.output) == 3
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("lookup_order", {"order_id": "A-1"}),
        ("track", {"days": 2}),
        ("ask", {"question": text}),
    ]
    assert len({c.call_id for c in calls}) == 3
    assert await _item_types(client, conversation.id) == ["message"] + ["function_call"] * 3

    answer = await _settle(
        client, standin, conversation.id, _outputs(calls, "shipped", "2 days", "yes"), FUNCTIONS
    )
    assert answer.output_text == (
        f"Echo: {text} | tool lookup_order said: shipped | tool track said: 2 days"
        " | tool ask said: yes"
    )
    assert [item.type for item in answer.output] == ["message"]
    assert await _item_types(client, conversation.id) == (
        ["message"] + ["function_call"] * 3 + ["function_call_output"] * 3 + ["message"]
    )


async def test_a_follow_up_must_answer_every_call(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    text = "[[call:lookup_order]] [[call:track]]"
    calls = _calls(await _settle(client, standin, conversation.id, text, FUNCTIONS))
    with pytest.raises(openai.BadRequestError) as refused:
        await _settle(client, standin, conversation.id, _outputs(calls[:1], "x"), FUNCTIONS)
    assert _message(refused.value) == f"No tool output found for function call {calls[1].call_id}."
    assert refused.value.param == "input"
    assert await _item_types(client, conversation.id) == ["message"] + ["function_call"] * 2
    # The outputs may come in any order; the reply follows the input.
    answer = await _settle(
        client, standin, conversation.id, _outputs(calls[::-1], "2", "1"), FUNCTIONS
    )
    assert answer.output_text == f"Echo: {text} | tool track said: 2 | tool lookup_order said: 1"


async def test_a_follow_up_with_markers_does_not_call_again(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    (call,) = _calls(await _settle(client, standin, conversation.id, "[[call:track]]", FUNCTIONS))
    answer = await _settle(
        client,
        standin,
        conversation.id,
        [*_outputs([call], "done"), {"role": "user", "content": "again [[call:track]]"}],
        FUNCTIONS,
    )
    assert [item.type for item in answer.output] == ["message"]
    assert answer.output_text.endswith("| tool track said: done")


async def test_parallel_tool_calls_false_and_tool_choice_none_limit_the_calls(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    text = "[[call:track]] [[call:ask]]"
    single = await _settle(
        client,
        standin,
        (await client.conversations.create()).id,
        text,
        FUNCTIONS,
        parallel_tool_calls=False,
    )
    assert [call.name for call in _calls(single)] == ["track"]
    none = await _settle(
        client,
        standin,
        (await client.conversations.create()).id,
        text,
        FUNCTIONS,
        tool_choice="none",
    )
    assert (none.output_text, _calls(none)) == (f"Echo: {text}", [])


async def test_a_call_marker_with_bad_json_is_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not JSON"):
        await client.responses.create(model=MODEL, input="[[call:track {oops}]]", tools=FUNCTIONS)


# MCP

DOCS: dict[str, Any] = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.com/sse",
    "authorization": "tok-secret",
    "headers": {"X-Team": "support"},
}
SEARCH = '[[mcp:docs:search {"q": "refund"}]]'
SEARCH_OUTPUT = 'result of search({"q": "refund"})'


def _shapes_valid(standin: StandIn, response_id: str) -> None:
    """The raw response and its conversation's items validate against the SDK's models."""
    raw = standin.response(response_id)
    Response.model_validate(raw)
    if raw["conversation"] is not None:
        for item in standin.conversation_items(raw["conversation"]["id"]):
            _ITEM.validate_python(item)


def _types(response: Response) -> list[str]:
    return [item.type for item in response.output]


async def test_an_mcp_tool_that_needs_no_approval_runs_at_once(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    server = {**DOCS, "require_approval": "never"}
    first = await _settle(client, standin, conversation.id, f"look {SEARCH}", [server])
    assert _types(first) == ["mcp_list_tools", "mcp_call", "message"]
    listing, call = first.output[0], first.output[1]
    assert listing.type == "mcp_list_tools"
    assert listing.id.startswith("mcpl_")
    assert (listing.server_label, [tool.name for tool in listing.tools]) == ("docs", ["search"])
    assert call.type == "mcp_call"
    assert call.id.startswith("mcp_")
    assert (call.server_label, call.name, json.loads(call.arguments)) == (
        "docs",
        "search",
        {"q": "refund"},
    )
    assert (call.output, call.error, call.status) == (SEARCH_OUTPUT, None, "completed")
    assert first.output_text == f"Echo: look {SEARCH} | mcp docs.search said: {SEARCH_OUTPUT}"
    _shapes_valid(standin, first.id)
    (shown,) = standin.response(first.id)["tools"]
    assert "authorization" not in shown
    assert (shown["server_url"], shown["headers"]) == ("https://mcp.example.com", None)

    again = await _settle(client, standin, conversation.id, f"more {SEARCH}", [server])
    assert _types(again) == ["mcp_call", "message"]
    turns = ["message", "mcp_list_tools", "mcp_call", "message", "message", "mcp_call", "message"]
    assert await _item_types(client, conversation.id) == turns
    (recorded, _) = mcp_calls(standin.state.responses.values())
    assert recorded == {
        "response_id": first.id,
        "server_label": "docs",
        "server_url": "https://mcp.example.com/sse",
        "name": "search",
        "arguments": {"q": "refund"},
        "approval_request_id": None,
        "output": SEARCH_OUTPUT,
        "error": None,
        "authorization_sent": True,
        "header_names": ["X-Team"],
    }


async def test_an_approved_mcp_call_runs_in_the_follow_up(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    asking = await _settle(client, standin, conversation.id, f"look {SEARCH}", [DOCS])
    assert (asking.status, _types(asking)) == (
        "completed",
        ["mcp_list_tools", "mcp_approval_request"],
    )
    request = asking.output[1]
    assert request.type == "mcp_approval_request"
    assert request.id.startswith("mcpr_")
    assert (request.server_label, request.name) == ("docs", "search")
    assert json.loads(request.arguments) == {"q": "refund"}
    assert mcp_calls(standin.state.responses.values()) == []

    approval = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
    done = await _settle(client, standin, conversation.id, [approval], [DOCS])
    assert _types(done) == ["mcp_call", "message"]
    call = done.output[0]
    assert call.type == "mcp_call"
    assert (call.approval_request_id, call.output) == (request.id, SEARCH_OUTPUT)
    assert done.output_text == f"Echo: look {SEARCH} | mcp docs.search said: {SEARCH_OUTPUT}"
    assert await _item_types(client, conversation.id) == [
        "message",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "message",
    ]
    _shapes_valid(standin, done.id)
    assert [c["approval_request_id"] for c in mcp_calls(standin.state.responses.values())] == [
        request.id
    ]


async def test_a_denied_mcp_call_is_not_run(client: openai.AsyncOpenAI, standin: StandIn) -> None:
    conversation = await client.conversations.create()
    asking = await _settle(client, standin, conversation.id, SEARCH, [DOCS])
    denial = {
        "type": "mcp_approval_response",
        "approval_request_id": asking.output[-1].id,
        "approve": False,
        "reason": "not today",
    }
    done = await _settle(client, standin, conversation.id, [denial], [DOCS])
    assert _types(done) == ["message"]
    assert done.output_text == f"Echo: {SEARCH} | mcp docs.search was not approved: not today"
    assert mcp_calls(standin.state.responses.values()) == []


async def test_mcp_scripts_the_api_would_refuse(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    with pytest.raises(openai.BadRequestError, match="server_label 'wiki'"):
        await _settle(client, standin, conversation.id, "[[mcp:wiki:search]]", [DOCS])
    unknown = {"type": "mcp_approval_response", "approval_request_id": "mcpr_x", "approve": True}
    with pytest.raises(openai.BadRequestError, match="mcpr_x") as refused:
        await _settle(client, standin, conversation.id, [unknown], [DOCS])
    assert refused.value.param == "input"
    assert await _item_types(client, conversation.id) == []


async def test_a_tool_outside_allowed_tools_fails_without_asking(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    server: Any = {**DOCS, "allowed_tools": ["fetch"]}
    response = await client.responses.create(model=MODEL, input=SEARCH, tools=[server])
    assert _types(response) == ["mcp_list_tools", "mcp_call", "message"]
    listing, call = response.output[0], response.output[1]
    assert listing.type == "mcp_list_tools"
    assert [tool.name for tool in listing.tools] == ["fetch"]
    assert call.type == "mcp_call"
    assert (call.output, call.status) == (None, "failed")
    assert call.error is not None
    assert call.error.model_dump() == {
        "type": "mcp_protocol_error",
        "code": -32602,
        "message": "Unknown tool: search",
    }
    assert response.output_text.endswith("| mcp docs.search failed: Unknown tool: search")
    _shapes_valid(standin, response.id)


@pytest.mark.parametrize(
    ("require_approval", "asks"),
    [
        (None, True),
        ("always", True),
        ("never", False),
        ({"never": {"tool_names": ["search"]}}, False),
        ({"never": {"tool_names": ["fetch"]}}, True),
        ({"always": {"tool_names": ["search"]}}, True),
        ({"always": {"tool_names": ["fetch"]}}, True),
        ({"always": {"tool_names": ["fetch"]}, "never": {"tool_names": ["search"]}}, False),
        ({"always": {"tool_names": ["search"]}, "never": {"tool_names": ["search"]}}, True),
        ({"never": {"read_only": True}}, True),
    ],
)
async def test_require_approval_follows_the_spec(
    client: openai.AsyncOpenAI, require_approval: Any, asks: bool
) -> None:
    server: Any = {**DOCS, "require_approval": require_approval}
    response = await client.responses.create(model=MODEL, input=SEARCH, tools=[server])
    assert _types(response)[-1] == ("mcp_approval_request" if asks else "message")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"server_label": None}, "tools[0].server_label"),
        ({"server_url": None}, "tools[0]"),
        ({"require_approval": "sometimes"}, "tools[0].require_approval"),
        ({"require_approval": {"maybe": {}}}, "tools[0].require_approval.maybe"),
        ({"allowed_tools": {"names": ["a"]}}, "tools[0].allowed_tools.names"),
    ],
)
async def test_mcp_declarations_are_checked(
    client: openai.AsyncOpenAI, change: dict[str, Any], param: str
) -> None:
    server: Any = {key: value for key, value in {**DOCS, **change}.items() if value is not None}
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi", tools=[server])
    assert refused.value.param == param


# Code interpreter

CODE: Any = {"type": "code_interpreter", "container": {"type": "auto"}}


async def test_a_code_file_marker_writes_a_cited_container_file(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    conversation = await client.conversations.create()
    text = "chart it [[code_file:report.csv]]"
    response = await _settle(client, standin, conversation.id, text, [CODE])
    assert _types(response) == ["code_interpreter_call", "message"]
    call = response.output[0]
    assert call.type == "code_interpreter_call"
    assert call.id.startswith("ci_")
    assert call.container_id.startswith("cntr_")
    assert call.code is not None
    assert "report.csv" in call.code
    assert (call.status, call.outputs) == ("completed", None)
    assert response.output_text == f"Echo: {text} | code interpreter wrote report.csv"
    message = response.output[1]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    (citation,) = message.content[0].annotations
    assert citation.type == "container_file_citation"
    assert citation.container_id == call.container_id
    assert citation.file_id.startswith("cfile_")
    assert citation.filename == "report.csv"
    assert response.output_text[citation.start_index : citation.end_index] == "report.csv"
    _shapes_valid(standin, response.id)
    assert await _item_types(client, conversation.id) == [
        "message",
        "code_interpreter_call",
        "message",
    ]

    written = await client.containers.files.retrieve(
        citation.file_id, container_id=call.container_id
    )
    assert (written.path, written.source) == ("/mnt/data/report.csv", "assistant")
    content = await client.containers.files.content.retrieve(
        citation.file_id, container_id=call.container_id
    )
    assert content.read() == b"report.csv, written by the stand-in's code interpreter\n"
    assert written.bytes == len(content.read())

    again = await _settle(client, standin, conversation.id, "[[code_file:b.txt]]", [CODE])
    assert again.output[0].type == "code_interpreter_call"
    assert again.output[0].container_id == call.container_id


async def test_code_interpreter_outputs_only_when_included(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=MODEL,
        input="[[code_file:a.txt]]",
        tools=[{"type": "code_interpreter", "container": "cntr_given"}],
        include=["code_interpreter_call.outputs"],
    )
    call = response.output[0]
    assert call.type == "code_interpreter_call"
    assert call.container_id == "cntr_given"
    assert call.outputs is not None
    assert [output.model_dump() for output in call.outputs] == [
        {"type": "logs", "logs": "wrote /mnt/data/a.txt"}
    ]


async def test_code_interpreter_scripts_the_api_would_refuse(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="needs a code_interpreter tool"):
        await client.responses.create(model=MODEL, input="[[code_file:a.txt]]", tools=FUNCTIONS)
    no_container: Any = {"type": "code_interpreter"}
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi", tools=[no_container])
    assert refused.value.param == "tools[0].container"
    with pytest.raises(openai.NotFoundError):
        await client.containers.files.retrieve("cfile_x", container_id="cntr_x")


# Web search


@pytest.mark.parametrize("tool_type", ["web_search", "web_search_preview"])
async def test_a_web_search_marker_searches_and_cites_a_url(
    client: openai.AsyncOpenAI, standin: StandIn, tool_type: str
) -> None:
    conversation = await client.conversations.create()
    text = "news about tea [[web_search]]"
    tool: Any = {"type": tool_type}
    response = await _settle(client, standin, conversation.id, text, [tool])
    assert _types(response) == ["web_search_call", "message"]
    call = response.output[0]
    assert call.type == "web_search_call"
    assert (call.id[:3], call.status) == ("ws_", "completed")
    assert call.action.type == "search"
    assert (call.action.query, call.action.queries, call.action.sources) == (text, [text], None)
    url = "https://example.com/search?q=" + urllib.parse.quote_plus(text)
    assert response.output_text == f"Echo: {text} | web search found ([example.com]({url}))"
    message = response.output[1]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    (citation,) = message.content[0].annotations
    assert citation.type == "url_citation"
    assert (citation.url, citation.title) == (url, "Example Domain")
    assert response.output_text[citation.start_index : citation.end_index] == (
        f"[example.com]({url})"
    )
    _shapes_valid(standin, response.id)
    assert await _item_types(client, conversation.id) == ["message", "web_search_call", "message"]


async def test_web_search_sources_only_when_included(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=MODEL,
        input="[[web_search]]",
        tools=[{"type": "web_search"}],
        include=["web_search_call.action.sources"],
    )
    call = response.output[0]
    assert call.type == "web_search_call"
    assert call.action.type == "search"
    assert call.action.sources is not None
    assert [source.url for source in call.action.sources] == [
        "https://example.com/search?q=%5B%5Bweb_search%5D%5D"
    ]


async def test_declared_web_search_without_the_marker_is_unused(
    client: openai.AsyncOpenAI,
) -> None:
    response = await client.responses.create(
        model=MODEL, input="hi", tools=[{"type": "web_search"}]
    )
    assert (_types(response), response.output_text) == (["message"], "Echo: hi")
    with pytest.raises(openai.BadRequestError, match="needs a web_search tool"):
        await client.responses.create(model=MODEL, input="[[web_search]]")


# File search

REFUNDS = b"Refunds take five days.\n\nShipping is free over 50 euros."
RETURNS = b"Returns of refunds need a receipt."
QUESTION = "how long do refunds take"


async def _store(client: openai.AsyncOpenAI) -> tuple[str, str, str]:
    """A vector store holding refunds.txt and returns.txt: its ID and theirs."""
    refunds = await upload(client, "refunds.txt", REFUNDS, purpose="assistants")
    returns = await upload(client, "returns.txt", RETURNS, purpose="assistants")
    store = await client.vector_stores.create(file_ids=[refunds, returns])
    await client.vector_stores.files.update(
        refunds, vector_store_id=store.id, attributes={"topic": "refunds"}
    )
    return store.id, refunds, returns


async def test_file_search_quotes_the_best_passage_and_cites_each_file(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store_id, refunds, returns = await _store(client)
    conversation = await client.conversations.create()
    tool: Any = {"type": "file_search", "vector_store_ids": [store_id]}
    response = await _settle(client, standin, conversation.id, QUESTION, [tool])
    assert _types(response) == ["file_search_call", "message"]
    call = response.output[0]
    assert call.type == "file_search_call"
    assert call.id.startswith("fs_")
    assert (call.queries, call.status, call.results) == ([QUESTION], "completed", None)
    text = f'Echo: {QUESTION} | refunds.txt says: "Refunds take five days."'
    assert response.output_text == text
    message = response.output[1]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert [a.model_dump() for a in message.content[0].annotations] == [
        {
            "type": "file_citation",
            "file_id": refunds,
            "filename": "refunds.txt",
            "index": len(text),
        },
        {
            "type": "file_citation",
            "file_id": returns,
            "filename": "returns.txt",
            "index": len(text),
        },
    ]
    _shapes_valid(standin, response.id)
    assert await _item_types(client, conversation.id) == ["message", "file_search_call", "message"]


async def test_file_search_results_only_when_included(client: openai.AsyncOpenAI) -> None:
    store_id, refunds, _ = await _store(client)
    response = await client.responses.create(
        model=MODEL,
        input=QUESTION,
        tools=[{"type": "file_search", "vector_store_ids": [store_id], "max_num_results": 1}],
        include=["file_search_call.results"],
    )
    call = response.output[0]
    assert call.type == "file_search_call"
    assert call.results is not None
    assert [result.model_dump() for result in call.results] == [
        {
            "file_id": refunds,
            "filename": "refunds.txt",
            "score": pytest.approx(2 / 3),
            "text": "Refunds take five days.",
            "attributes": {"topic": "refunds"},
        }
    ]
    message = response.output[1]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert [a.type for a in message.content[0].annotations] == ["file_citation"]


async def test_file_search_that_finds_nothing_gives_the_plain_reply(
    client: openai.AsyncOpenAI,
) -> None:
    store_id, _, _ = await _store(client)
    response = await client.responses.create(
        model=MODEL,
        input="hello there",
        tools=[{"type": "file_search", "vector_store_ids": [store_id]}],
        include=["file_search_call.results"],
    )
    assert _types(response) == ["file_search_call", "message"]
    call = response.output[0]
    assert call.type == "file_search_call"
    assert call.results == []
    message = response.output[1]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert (message.content[0].text, message.content[0].annotations) == ("Echo: hello there", [])


async def test_a_follow_up_does_not_search_again(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store_id, _, _ = await _store(client)
    tools: Any = [*FUNCTIONS, {"type": "file_search", "vector_store_ids": [store_id]}]
    conversation = await client.conversations.create()
    asking = await _settle(client, standin, conversation.id, f"{QUESTION} [[call:track]]", tools)
    assert _types(asking) == ["file_search_call", "function_call"]
    answer = await _settle(client, standin, conversation.id, _outputs(_calls(asking), "ok"), tools)
    assert _types(answer) == ["message"]


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "file_search"}, "tools[0].vector_store_ids"),
        ({"type": "file_search", "vector_store_ids": "vs_1"}, "tools[0].vector_store_ids"),
        (
            {"type": "file_search", "vector_store_ids": [], "max_num_results": 51},
            "tools[0].max_num_results",
        ),
    ],
)
async def test_file_search_declarations_are_checked(
    client: openai.AsyncOpenAI, tool: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=MODEL, input="hi", tools=[tool])
    assert refused.value.param == param


async def test_file_search_in_an_unknown_store_is_not_found(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    tool: Any = {"type": "file_search", "vector_store_ids": ["vs_missing"]}
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input=QUESTION, tools=[tool])
    assert standin.state.responses == {}
