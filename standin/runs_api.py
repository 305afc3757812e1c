"""``/v1/threads/{thread_id}/runs`` (runs and run steps) and ``/v1/threads/runs``."""

from __future__ import annotations

from aiohttp import web

from standin.assistants_api import (
    build_thread,
    generation_options,
    message_file_refs,
    only_fields,
    parse_new_message,
    parse_tool_resources,
    parse_tools,
)
from standin.config import LiveConfig
from standin.errors import bad_request, invalid_value, not_found
from standin.models import Assistant, Run, RunStep
from standin.pagination import PageQuery, list_body, paginate
from standin.params import (
    Json,
    metadata,
    opt_dict,
    opt_list,
    opt_str,
    read_json,
    reject_streaming,
    req_str,
)
from standin.run_engine import RunEngine, RunSpec
from standin.state import StandInState
from standin.web_util import json_response, note_ids, poll_headers

# Checked, kept and echoed back; the stand-in's behaviour does not depend on them.
_THREAD_AND_RUN_OPTIONS = (
    "parallel_tool_calls",
    "response_format",
    "tool_choice",
    "truncation_strategy",
    "temperature",
    "top_p",
    "max_completion_tokens",
    "max_prompt_tokens",
)
_RUN_OPTIONS = (*_THREAD_AND_RUN_OPTIONS, "reasoning_effort")
# What a run takes from its assistant unless the request sets it.
_INHERITED_OPTIONS = ("temperature", "top_p", "response_format", "reasoning_effort")
# CreateRunRequest and CreateThreadAndRunRequest, both additionalProperties: false.
_COMMON_FIELDS = ("assistant_id", "model", "instructions", "tools", "metadata", "stream")
_RUN_FIELDS = frozenset(
    {*_COMMON_FIELDS, *_RUN_OPTIONS, "additional_instructions", "additional_messages"}
)
_THREAD_AND_RUN_FIELDS = frozenset(
    {*_COMMON_FIELDS, *_THREAD_AND_RUN_OPTIONS, "thread", "tool_resources"}
)
_SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


class RunsApi:
    def __init__(self, state: StandInState, runs: RunEngine, config: LiveConfig) -> None:
        self._state = state
        self._runs = runs
        self._config = config

    def routes(self) -> list[web.RouteDef]:
        run_path = "/v1/threads/{thread_id}/runs/{run_id}"
        return [
            web.post("/v1/threads/runs", self.create_thread_and_run),
            web.post("/v1/threads/{thread_id}/runs", self.create_run),
            web.get("/v1/threads/{thread_id}/runs", self.list_runs),
            web.get(run_path, self.retrieve_run),
            web.post(f"{run_path}/cancel", self.cancel_run),
            web.post(f"{run_path}/submit_tool_outputs", self.submit_tool_outputs),
            web.get(f"{run_path}/steps", self.list_steps),
            web.get(f"{run_path}/steps/{{step_id}}", self.retrieve_step),
        ]

    def _spec(self, body: Json, fields: frozenset[str], options: tuple[str, ...]) -> RunSpec:
        """What the request asks for, the assistant filling in what it leaves out.

        Create-thread-and-run's ``tool_resources`` stand in for the assistant's.
        """
        only_fields(body, fields)
        requested = generation_options(body, options)
        tools = parse_tools(body)
        tool_resources = parse_tool_resources(body.get("tool_resources"))
        if tool_resources is not None:
            self._state.ensure_tool_resources(tool_resources)
        config = self._config.current
        assistant = self._state.assistant(
            req_str(body, "assistant_id"),
            auto_create=config.auto_assistants,
            model=config.default_model,
        )
        inherited = {
            name: getattr(assistant, name)
            for name in _INHERITED_OPTIONS
            if getattr(assistant, name) is not None
        }
        return RunSpec(
            assistant_id=assistant.id,
            model=opt_str(body, "model") or assistant.model,
            instructions=_instructions(body, assistant),
            tools=assistant.tools if tools is None else tools,
            metadata=metadata(body),
            options=inherited | requested,
            tool_resources=assistant.tool_resources if tool_resources is None else tool_resources,
        )

    async def create_run(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reject_streaming(body)
        _with_search_content(request)
        thread = self._state.thread(request.match_info["thread_id"])
        spec = self._spec(body, _RUN_FIELDS, _RUN_OPTIONS)
        additional = opt_list(body, "additional_messages") or []
        new_messages = [
            parse_new_message(raw, thread.id, param=f"additional_messages[{index}]")
            for index, raw in enumerate(additional)
        ]
        self._state.ensure_files(message_file_refs(new_messages))
        run = self._runs.create(thread, spec, new_messages)
        note_ids(request, run_id=run.id)
        return json_response(run.to_api())

    async def create_thread_and_run(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reject_streaming(body)
        spec = self._spec(body, _THREAD_AND_RUN_FIELDS, _THREAD_AND_RUN_OPTIONS)
        thread = build_thread(opt_dict(body, "thread") or {}, param_prefix="thread.")
        # The thread's messages go in through the run so a rejected run leaves nothing.
        initial, thread.messages = thread.messages, []
        self._state.ensure_files(message_file_refs(initial))
        self._state.ensure_tool_resources(thread.tool_resources)
        run = self._runs.create(thread, spec, initial)
        self._state.threads[thread.id] = thread
        note_ids(request, thread_id=thread.id, run_id=run.id)
        return json_response(run.to_api())

    async def list_runs(self, request: web.Request) -> web.Response:
        thread = self._state.thread(request.match_info["thread_id"])
        page, has_more = paginate(thread.runs, _id, PageQuery.parse(request.query))
        return json_response(list_body([run.to_api() for run in page], has_more))

    def _run(self, request: web.Request) -> Run:
        return self._state.run(request.match_info["thread_id"], request.match_info["run_id"])

    async def retrieve_run(self, request: web.Request) -> web.Response:
        run = self._run(request)
        return json_response(run.to_api(), headers=poll_headers(self._config, run.active))

    async def cancel_run(self, request: web.Request) -> web.Response:
        run = self._run(request)
        self._runs.cancel(run)
        return json_response(run.to_api())

    async def submit_tool_outputs(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reject_streaming(body)
        run = self._run(request)
        self._runs.submit_tool_outputs(run, _tool_outputs(body))
        return json_response(run.to_api())

    async def list_steps(self, request: web.Request) -> web.Response:
        with_content = _with_search_content(request)
        run = self._run(request)
        page, has_more = paginate(run.steps, _id, PageQuery.parse(request.query))
        steps = [step.to_api(with_search_content=with_content) for step in page]
        return json_response(list_body(steps, has_more))

    async def retrieve_step(self, request: web.Request) -> web.Response:
        with_content = _with_search_content(request)
        run = self._run(request)
        step_id = request.match_info["step_id"]
        for step in run.steps:
            if step.id == step_id:
                return json_response(step.to_api(with_search_content=with_content))
        raise not_found("run step", step_id)


def _id(item: Run | RunStep) -> str:
    return item.id


def _instructions(body: Json, assistant: Assistant) -> str:
    instructions = opt_str(body, "instructions")
    if instructions is None:
        instructions = assistant.instructions or ""
    additional = opt_str(body, "additional_instructions")
    if additional:
        instructions = f"{instructions}\n{additional}" if instructions else additional
    return instructions


def _with_search_content(request: web.Request) -> bool:
    """Whether ``include[]`` asks for the text of file_search results (the one value it takes)."""
    included = request.query.getall("include[]", [])
    for value in included:
        if value != _SEARCH_CONTENT:
            raise invalid_value(value, [_SEARCH_CONTENT], "include")
    return bool(included)


def _tool_outputs(body: Json) -> dict[str, str]:
    raw_outputs = opt_list(body, "tool_outputs")
    if raw_outputs is None:
        raise bad_request("Missing required parameter: 'tool_outputs'.", param="tool_outputs")
    outputs: dict[str, str] = {}
    for index, raw in enumerate(raw_outputs):
        param = f"tool_outputs[{index}]"
        if not isinstance(raw, dict):
            raise bad_request("Each tool output must be an object.", param=param)
        call_id = req_str(raw, "tool_call_id")
        if call_id in outputs:
            raise bad_request(f"Duplicate tool output for '{call_id}'.", param=param)
        outputs[call_id] = opt_str(raw, "output") or ""
    return outputs
