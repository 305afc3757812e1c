"""Assistants with tools through the SDK: modify, run options, scripted function calls,
file_search over vector stores and the code interpreter's files, and their run steps."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.beta import Assistant, AssistantToolParam
from openai.types.beta.assistant_create_params import ToolResources
from openai.types.beta.file_search_tool_param import FileSearch
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.runs import RunStep

from standin import StandIn
from tests.standin.support import RawHttp, upload, wait_until

GUIDE = b"""Parcels ship within two days of the order.

Refunds reach the card within five working days of the return."""
FAQ = b"Gift cards never expire.\n\nA refund for a gift card goes back to the card."
LOOKUP: AssistantToolParam = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
}


async def _assistant(
    client: openai.AsyncOpenAI,
    tools: list[AssistantToolParam] | None = None,
    tool_resources: ToolResources | None = None,
) -> Assistant:
    with pytest.deprecated_call():
        return await client.beta.assistants.create(
            model="gpt-test", tools=tools or [], tool_resources=tool_resources
        )


async def _store(client: openai.AsyncOpenAI, name: str, content: bytes) -> tuple[str, str]:
    file_id = await upload(client, name, content, purpose="assistants")
    return (await client.vector_stores.create(file_ids=[file_id])).id, file_id


async def _run(client: openai.AsyncOpenAI, assistant_id: str, text: str, **options: Any) -> Run:
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": text}])
    run: Run = await client.beta.threads.runs.create(
        thread.id, assistant_id=assistant_id, **options
    )
    return run


async def _settled(client: openai.AsyncOpenAI, standin: StandIn, run: Run) -> Run:
    await wait_until(standin, run.id)
    return await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)


async def _reply(client: openai.AsyncOpenAI, run: Run) -> Message:
    (reply,) = (await client.beta.threads.messages.list(run.thread_id, run_id=run.id)).data
    return reply


def _text(message: Message) -> tuple[str, list[Any]]:
    (block,) = message.content
    assert block.type == "text"
    return block.text.value, block.text.annotations


async def _steps(client: openai.AsyncOpenAI, run: Run) -> list[RunStep]:
    page = await client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc")
    return page.data


async def test_modify_assistant_changes_only_what_it_names(
    client: openai.AsyncOpenAI, http: RawHttp
) -> None:
    store, _ = await _store(client, "guide.txt", GUIDE)
    with pytest.deprecated_call():
        created = await client.beta.assistants.create(
            model="gpt-test",
            name="Desk",
            instructions="Be brief.",
            metadata={"team": "care"},
            temperature=0.5,
            response_format={"type": "json_object"},
            reasoning_effort="low",
        )
    with pytest.deprecated_call():
        modified = await client.beta.assistants.update(
            created.id,
            model="gpt-other",
            description="Answers parcels",
            instructions=None,
            tools=[{"type": "file_search"}],
            tool_resources={"file_search": {"vector_store_ids": [store]}},
            top_p=0.9,
        )
    assert (modified.model, modified.name, modified.description, modified.instructions) == (
        "gpt-other",
        "Desk",
        "Answers parcels",
        None,
    )
    assert (modified.temperature, modified.top_p, modified.metadata) == (0.5, 0.9, {"team": "care"})
    assert [tool.type for tool in modified.tools] == ["file_search"]
    assert modified.tool_resources is not None
    assert modified.tool_resources.file_search is not None
    assert modified.tool_resources.file_search.vector_store_ids == [store]
    assert modified.response_format is not None
    assert modified.response_format != "auto"
    assert modified.response_format.type == "json_object"

    listed = (await http.get("/v1/assistants")).body["data"]
    assert [(a["id"], a["metadata"]) for a in listed] == [(created.id, {"team": "care"})]
    Assistant.model_validate(listed[0])


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"modle": "gpt-x"}, 400, "modle"),
        ({"temperature": 3}, 400, "temperature"),
        ({"reasoning_effort": "extreme"}, 400, "reasoning_effort"),
        ({"response_format": {"type": "yaml"}}, 400, "response_format.type"),
        (
            {"tools": [{"type": "file_search", "file_search": {"max_num_results": 51}}]},
            400,
            "tools[0].file_search.max_num_results",
        ),
        ({"tool_resources": {"file_search": {"vector_store_ids": ["vs_missing"]}}}, 404, None),
    ],
)
async def test_assistant_fields_are_checked_on_create_and_modify(
    http: RawHttp, body: dict[str, Any], status: int, param: str | None
) -> None:
    created = await http.post("/v1/assistants", {"model": "gpt-x", **body})
    assert (created.status, created.body["error"]["param"]) == (status, param)
    assistant = (await http.post("/v1/assistants", {"model": "gpt-x"})).body
    modified = await http.post(f"/v1/assistants/{assistant['id']}", body)
    assert (modified.status, modified.body["error"]["param"]) == (status, param)
    assert (await http.get(f"/v1/assistants/{assistant['id']}")).body == assistant


async def test_a_run_shows_its_options_and_inherits_the_assistants(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.deprecated_call():
        assistant = await client.beta.assistants.create(
            model="gpt-test", temperature=0.2, response_format={"type": "json_object"}
        )
    inherited = await _run(client, assistant.id, "hi")
    assert (inherited.temperature, inherited.top_p) == (0.2, 1.0)
    assert inherited.response_format is not None
    assert inherited.response_format != "auto"
    assert inherited.response_format.type == "json_object"
    assert (inherited.tool_choice, inherited.parallel_tool_calls) == ("auto", True)

    run = await _run(
        client,
        assistant.id,
        "hi",
        model="gpt-run",
        instructions="Answer.",
        additional_instructions="Politely.",
        tools=[LOOKUP],
        temperature=1.5,
        top_p=0.5,
        max_prompt_tokens=1000,
        max_completion_tokens=500,
        reasoning_effort="high",
        truncation_strategy={"type": "last_messages", "last_messages": 4},
        tool_choice={"type": "function", "function": {"name": "lookup_order"}},
        parallel_tool_calls=False,
        response_format="auto",
        metadata={"job": "7"},
    )
    assert (run.model, run.instructions, run.metadata) == (
        "gpt-run",
        "Answer.\nPolitely.",
        {"job": "7"},
    )
    assert (run.temperature, run.top_p) == (1.5, 0.5)
    assert (run.max_prompt_tokens, run.max_completion_tokens) == (1000, 500)
    assert run.truncation_strategy is not None
    assert (run.truncation_strategy.type, run.truncation_strategy.last_messages) == (
        "last_messages",
        4,
    )
    assert run.tool_choice is not None
    assert not isinstance(run.tool_choice, str)
    assert run.tool_choice.type == "function"
    assert (run.parallel_tool_calls, run.response_format) == (False, "auto")
    assert [tool.type for tool in run.tools] == ["function"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("THREAD/runs", {"additional_instruction": "typo"}, "additional_instruction"),
        ("THREAD/runs", {"temperature": -1}, "temperature"),
        ("THREAD/runs", {"max_completion_tokens": 255}, "max_completion_tokens"),
        ("THREAD/runs", {"tool_choice": "sometimes"}, "tool_choice"),
        ("THREAD/runs", {"truncation_strategy": {"type": "middle"}}, "truncation_strategy.type"),
        ("THREAD/runs", {"tool_resources": {}}, "tool_resources"),
        ("/v1/threads/runs", {"reasoning_effort": "low"}, "reasoning_effort"),
        ("/v1/threads/runs", {"additional_messages": []}, "additional_messages"),
        ("/v1/threads/runs", {"thread": {"mesages": []}}, "thread.mesages"),
    ],
)
async def test_run_requests_are_checked_against_the_reference(
    http: RawHttp, standin: StandIn, path: str, body: dict[str, Any], param: str
) -> None:
    thread = (await http.post("/v1/threads", {})).body
    resolved = path.replace("THREAD", f"/v1/threads/{thread['id']}")
    reply = await http.post(resolved, {"assistant_id": "asst_options", **body})
    assert (reply.status, reply.body["error"]["param"]) == (400, param)
    assert standin.state.runs == {}


async def test_call_markers_make_the_run_call_each_tool_in_order(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    assistant = await _assistant(client, tools=[LOOKUP])
    text = 'where? [[call:lookup_order {"order": "A1"}]] [[call:lookup_order]] [[call:refund]]'
    run = await _run(client, assistant.id, text)
    await wait_until(standin, run.id, frozenset({"requires_action"}))
    waiting = await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert waiting.status == "requires_action"
    assert waiting.required_action is not None
    calls = waiting.required_action.submit_tool_outputs.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("lookup_order", {"order": "A1"}),
        ("lookup_order", {"order": text}),
        ("refund", {"query": text}),
    ]

    outputs = ["shipped", "pending", "refunded"]
    await client.beta.threads.runs.submit_tool_outputs(
        run.id,
        thread_id=run.thread_id,
        tool_outputs=[
            {"tool_call_id": call.id, "output": output}
            for call, output in zip(calls, outputs, strict=True)
        ],
    )
    done = await _settled(client, standin, run)
    assert done.status == "completed"
    assert _text(await _reply(client, run)) == (
        f"Echo: {text} | tool lookup_order said: shipped | tool lookup_order said: pending"
        " | tool refund said: refunded",
        [],
    )
    (tool_step, message_step) = await _steps(client, run)
    assert tool_step.step_details.type == "tool_calls"
    assert [
        (call.function.output if call.type == "function" else None)
        for call in tool_step.step_details.tool_calls
    ] == outputs
    assert message_step.type == "message_creation"


async def test_a_turns_follow_up_run_does_not_call_again(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    run = await _run(client, "asst_follow_up", "[[call:lookup_order]]")
    await wait_until(standin, run.id, frozenset({"requires_action"}))
    call = standin.state.runs[run.id].tool_calls[0]
    await client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": call.id, "output": "ok"}]
    )
    assert (await _settled(client, standin, run)).status == "completed"
    again = await client.beta.threads.runs.create(run.thread_id, assistant_id="asst_follow_up")
    assert (await _settled(client, standin, again)).status == "completed"
    assert standin.state.runs[again.id].tool_calls == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[call:f]] [[outcome:failed]]", "do not combine"),
        ("[[call:f {not json}]]", "not JSON"),
        ("[[mcp:docs:search]]", "no MCP tools"),
        ("[[code_file:report.csv]]", "code_interpreter"),
    ],
)
async def test_tool_markers_a_run_cannot_honour_are_refused(
    client: openai.AsyncOpenAI, standin: StandIn, text: str, message: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        await _run(client, "asst_markers", text)
    assert standin.state.runs == {}


async def test_file_search_quotes_the_best_passage_and_cites_each_file(
    client: openai.AsyncOpenAI, standin: StandIn, http: RawHttp
) -> None:
    guide_store, guide = await _store(client, "guide.txt", GUIDE)
    faq_store, faq = await _store(client, "faq.txt", FAQ)
    assistant = await _assistant(
        client,
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [guide_store]}},
    )
    thread = await client.beta.threads.create(
        messages=[{"role": "user", "content": "When does my refund reach the card?"}],
        tool_resources={"file_search": {"vector_store_ids": [faq_store]}},
    )
    run = await client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
    assert (await _settled(client, standin, run)).status == "completed"

    search_step, message_step = await _steps(client, run)
    assert (search_step.type, search_step.status, message_step.type) == (
        "tool_calls",
        "completed",
        "message_creation",
    )
    assert search_step.completed_at is not None
    assert search_step.step_details.type == "tool_calls"
    (call,) = search_step.step_details.tool_calls
    assert call.type == "file_search"
    results = call.file_search.results or []
    assert [(r.file_name, r.file_id, r.content) for r in results] == [
        ("guide.txt", guide, None),
        ("faq.txt", faq, None),
    ]
    # Both passages hold "refund" and "card": the assistant's store comes first.
    assert [r.score for r in results] == [2 / 3, 2 / 3]

    best = "Refunds reach the card within five working days of the return."
    text, annotations = _text(await _reply(client, run))
    assert text == (
        'Echo: When does my refund reach the card? | guide.txt says: "'
        f'{best}"【0:0†source】【0:1†source】'
    )
    assert [(a.type, a.file_citation.file_id) for a in annotations] == [
        ("file_citation", guide),
        ("file_citation", faq),
    ]
    for annotation in annotations:
        assert text[annotation.start_index : annotation.end_index] == annotation.text

    detailed = await client.beta.threads.runs.steps.retrieve(
        search_step.id,
        thread_id=run.thread_id,
        run_id=run.id,
        include=["step_details.tool_calls[*].file_search.results[*].content"],
    )
    assert detailed.step_details.type == "tool_calls"
    (found,) = detailed.step_details.tool_calls
    assert found.type == "file_search"
    assert [
        [(part.type, part.text) for part in result.content or []]
        for result in found.file_search.results or []
    ] == [[("text", best)], [("text", "A refund for a gift card goes back to the card.")]]
    path = f"/v1/threads/{run.thread_id}/runs/{run.id}/steps"
    assert (await http.get(f"{path}?include[]=usage")).status == 400


async def test_file_search_without_hits_still_records_the_search(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store, _ = await _store(client, "guide.txt", GUIDE)
    assistant = await _assistant(
        client,
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [store]}},
    )
    run = await _settled(client, standin, await _run(client, assistant.id, "hello there"))
    assert _text(await _reply(client, run)) == ("Echo: hello there", [])
    search_step, _ = await _steps(client, run)
    assert search_step.step_details.type == "tool_calls"
    (call,) = search_step.step_details.tool_calls
    assert call.type == "file_search"
    assert call.file_search.results == []


async def test_file_search_honours_the_tools_settings_and_needs_the_tool(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store, _ = await _store(client, "guide.txt", GUIDE)
    resources: ToolResources = {"file_search": {"vector_store_ids": [store]}}
    assistant = await _assistant(client, tools=[LOOKUP], tool_resources=resources)
    plain = await _settled(client, standin, await _run(client, assistant.id, "refund days?"))
    assert [step.type for step in await _steps(client, plain)] == ["message_creation"]

    settings_and_scores: list[tuple[FileSearch, list[float]]] = [
        ({}, [1.0, 0.5]),
        ({"max_num_results": 1}, [1.0]),
        ({"ranking_options": {"ranker": "auto", "score_threshold": 0.6}}, [1.0]),
    ]
    for settings, scores in settings_and_scores:
        run = await _run(
            client,
            assistant.id,
            "refunds in days?",
            tools=[{"type": "file_search", "file_search": settings}],
        )
        search_step, _ = await _steps(client, await _settled(client, standin, run))
        assert search_step.step_details.type == "tool_calls"
        (call,) = search_step.step_details.tool_calls
        assert call.type == "file_search"
        assert [r.score for r in call.file_search.results or []] == scores
        assert call.file_search.ranking_options is not None
        assert call.file_search.ranking_options.ranker == "default_2024_08_21"


async def test_a_vector_store_gone_since_is_the_run_requests_404(
    client: openai.AsyncOpenAI, standin: StandIn
) -> None:
    store, _ = await _store(client, "guide.txt", GUIDE)
    assistant = await _assistant(
        client,
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [store]}},
    )
    await client.vector_stores.delete(store)
    with pytest.raises(openai.NotFoundError, match=store):
        await _run(client, assistant.id, "refund?")
    with pytest.raises(openai.NotFoundError, match="vs_missing"):
        await client.beta.threads.create(
            tool_resources={"file_search": {"vector_store_ids": ["vs_missing"]}}
        )
    assert standin.state.runs == {}


async def test_code_file_marker_writes_a_file_the_reply_links_to(
    client: openai.AsyncOpenAI, standin: StandIn, http: RawHttp
) -> None:
    assistant = await _assistant(client, tools=[{"type": "code_interpreter"}])
    run = await _settled(
        client, standin, await _run(client, assistant.id, "[[code_file:report.csv]]")
    )
    assert run.status == "completed"

    (written,) = [f async for f in client.files.list(purpose="assistants_output")]
    assert (written.filename, written.purpose) == ("report.csv", "assistants_output")
    content = (await client.files.content(written.id)).content
    assert standin.file_content(written.id) == content
    assert written.bytes == len(content) > 0

    code_step, message_step = await _steps(client, run)
    assert code_step.step_details.type == "tool_calls"
    (call,) = code_step.step_details.tool_calls
    assert call.type == "code_interpreter"
    assert "/mnt/data/report.csv" in call.code_interpreter.input
    assert [output.type for output in call.code_interpreter.outputs] == ["logs"]
    assert message_step.type == "message_creation"

    reply = await _reply(client, run)
    text, (annotation,) = _text(reply)
    assert text == "Echo: [[code_file:report.csv]] | [report.csv](sandbox:/mnt/data/report.csv)"
    assert annotation.type == "file_path"
    assert annotation.file_path.file_id == written.id
    assert text[annotation.start_index : annotation.end_index] == "sandbox:/mnt/data/report.csv"
    assert annotation.text == "sandbox:/mnt/data/report.csv"
    assert [(a.file_id, [t.type for t in a.tools or []]) for a in reply.attachments or []] == [
        (written.id, ["code_interpreter"])
    ]
    raw = (await http.get(f"/v1/threads/{run.thread_id}/messages/{reply.id}")).body
    Message.model_validate(raw)


async def test_steps_list_newest_first_with_their_times(
    client: openai.AsyncOpenAI, standin: StandIn, http: RawHttp
) -> None:
    store, _ = await _store(client, "guide.txt", GUIDE)
    assistant = await _assistant(
        client,
        tools=[LOOKUP, {"type": "file_search"}, {"type": "code_interpreter"}],
        tool_resources={"file_search": {"vector_store_ids": [store]}},
    )
    run = await _run(client, assistant.id, "refund? [[call:lookup_order]] [[code_file:a.txt]]")
    await wait_until(standin, run.id, frozenset({"requires_action"}))
    call = standin.state.runs[run.id].tool_calls[0]
    await client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": call.id, "output": "x"}]
    )
    await _settled(client, standin, run)

    newest_first = (await client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id)).data
    kinds = [
        step.step_details.tool_calls[0].type
        if step.step_details.type == "tool_calls"
        else step.type
        for step in newest_first
    ]
    assert kinds == ["message_creation", "code_interpreter", "file_search", "function"]
    assert all(s.status == "completed" and s.completed_at is not None for s in newest_first)
    assert [s.created_at for s in newest_first] == sorted(
        (s.created_at for s in newest_first), reverse=True
    )
    raw = (await http.get(f"/v1/threads/{run.thread_id}/runs/{run.id}/steps")).body
    for step in raw["data"]:
        RunStep.model_validate(step)
