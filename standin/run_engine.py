"""Run lifecycle: queued -> in_progress -> outcome, driven by the clock.

Each transition is a plain callback fired by a timer, so a run advances on
schedule whether or not anyone polls it.

Tools are scripted (``standin.tool_script``): ``[[call:NAME {...}]]`` markers in
the newest user text make the run require action with those calls; once the
outputs are in, the run answers. A completed run whose tools hold file_search
and whose assistant or thread names vector stores records a file_search step and
quotes the best passage with citations; ``[[code_file:NAME]]`` has the code
interpreter write a File the reply links to.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from standin.clock import Clock
from standin.config import LiveConfig
from standin.content_parts import message_names
from standin.errors import bad_request
from standin.file_search import DEFAULT_LIMIT, Hit, search
from standin.models import (
    CodeInterpreterCall,
    FileSearchCall,
    Json,
    Message,
    Run,
    RunStatus,
    RunStep,
    StepToolCall,
    StoredFile,
    Thread,
    ToolCall,
    file_search_store_ids,
    new_id,
    text_block,
    tool_types,
)
from standin.replies import FAILURE_MESSAGES, count_tokens, echo_piece, echo_text, partial
from standin.script import Script, parse_script
from standin.state import (
    StandInState,
    active_run,
    ensure_can_start_run,
    unanswered_user_messages,
)
from standin.tool_arguments import scripted_arguments
from standin.tool_script import ScriptedCall, ToolScript, parse_tool_script

# What the ``auto`` ranker stands for, as run steps show it.
_DEFAULT_RANKER = "default_2024_08_21"
_SANDBOX = "/mnt/data"


@dataclass
class RunSpec:
    """What a run create request asked for, after defaults from the assistant."""

    assistant_id: str
    model: str
    instructions: str
    tools: list[Json]
    metadata: dict[str, str]
    options: Json = field(default_factory=dict)
    # The assistant's, or what create-thread-and-run gave instead.
    tool_resources: Json = field(default_factory=dict)


@dataclass
class _Reply:
    """A reply being written: its text, and the annotations and files pointing into it."""

    text: str
    annotations: list[Json] = field(default_factory=list)
    attachments: list[Json] = field(default_factory=list)

    def annotate(self, marker: str, annotation: Json) -> None:
        """Append ``marker`` to the text with an annotation spanning it."""
        start = len(self.text)
        self.text += marker
        span = {"text": marker, "start_index": start, "end_index": len(self.text)}
        self.annotations.append(span | annotation)


class RunEngine:
    def __init__(self, state: StandInState, clock: Clock, config: LiveConfig) -> None:
        self._state = state
        self._clock = clock
        self._config = config

    def create(self, thread: Thread, spec: RunSpec, new_messages: list[Message]) -> Run:
        """Add ``new_messages`` and start a run in one step, or change nothing."""
        ensure_can_start_run(thread)
        unanswered = unanswered_user_messages(thread.messages, new_messages)
        batch = [message.text() for message in unanswered]
        newest = batch[-1] if batch else None
        tool_script = parse_tool_script(newest)
        script = _with_tool_script(parse_script(newest, spec.metadata), tool_script, spec.tools)
        now = time.time()
        run = Run(
            id=new_id("run"),
            thread_id=thread.id,
            assistant_id=spec.assistant_id,
            model=spec.model,
            instructions=spec.instructions,
            tools=spec.tools,
            metadata=spec.metadata,
            created_at=now,
            expires_at=now + self._config.current.run_expires_after_s,
            script=script.settle_failed_once(is_first=not thread.runs),
            batch=batch,
            echoed=[self._echo_piece(message) for message in unanswered],
            options=spec.options,
            tool_script=tool_script,
            file_search=self._file_search(spec, thread, newest or ""),
        )
        thread.messages.extend(new_messages)
        thread.runs.append(run)
        self._state.runs[run.id] = run
        self._clock.schedule(run.id, self._config.current.queue_ms, lambda: self._begin(run))
        return run

    def _file_search(self, spec: RunSpec, thread: Thread, query: str) -> FileSearchCall | None:
        """Search when the run is created, so a store named but gone is the request's 404."""
        tool = next((tool for tool in spec.tools if tool.get("type") == "file_search"), None)
        store_ids = [
            *file_search_store_ids(spec.tool_resources),
            *file_search_store_ids(thread.tool_resources),
        ]
        if tool is None or not store_ids:
            return None
        settings = tool.get("file_search") or {}
        ranking = settings.get("ranking_options") or {}
        threshold = ranking.get("score_threshold", 0.0)
        limit = settings.get("max_num_results") or DEFAULT_LIMIT
        hits = search(self._state, list(dict.fromkeys(store_ids)), query, limit=limit)
        ranker = ranking.get("ranker") or "auto"
        return FileSearchCall(
            id=new_id("call"),
            ranking_options={
                "ranker": _DEFAULT_RANKER if ranker == "auto" else ranker,
                "score_threshold": threshold,
            },
            hits=tuple(hit for hit in hits if hit.score >= threshold),
        )

    def _echo_piece(self, message: Message) -> str:
        names = message_names(message.content, message.attachments, self._state.file_name)
        return echo_piece(message.text(), names)

    def cancel(self, run: Run) -> None:
        if run.status == "cancelling":
            return
        if not run.active:
            raise bad_request(f"Cannot cancel run with status '{run.status}'.")
        run.status = "cancelling"
        self._clock.schedule(run.id, self._config.current.cancel_ms, lambda: self._cancelled(run))

    def submit_tool_outputs(self, run: Run, outputs: Mapping[str, str]) -> None:
        if run.status != "requires_action":
            raise bad_request(f"Runs in status {run.status} do not accept tool outputs.")
        expected = {call.id for call in run.tool_calls}
        if set(outputs) != expected:
            raise bad_request(
                f"Expected tool outputs for call_ids {sorted(expected)}, got {sorted(outputs)}.",
                param="tool_outputs",
            )
        now = time.time()
        for call in run.tool_calls:
            call.output = outputs[call.id]
        for step in run.steps:
            if step.type == "tool_calls":
                step.status, step.ended_at = "completed", now
        run.status = "in_progress"
        self._clock.schedule(run.id, self._duration_ms(run), lambda: self._finish(run))

    def abandon(self, thread: Thread) -> None:
        """A deleted thread's active run stops at once so it never fires again."""
        run = active_run(thread)
        if run is not None:
            self._clock.cancel(run.id)
            self._cancelled(run)

    def _duration_ms(self, run: Run) -> int:
        return run.script.duration_ms(self._config.current.run_duration_ms)

    def _begin(self, run: Run) -> None:
        run.status = "in_progress"
        run.started_at = time.time()
        if run.script.outcome != "hang":
            self._clock.schedule(run.id, self._duration_ms(run), lambda: self._finish(run))

    def _finish(self, run: Run) -> None:
        outcome = run.script.outcome
        if run.tool_calls or outcome == "completed":
            self._complete(run)
        elif outcome == "failed":
            run.last_error = {
                "code": run.script.failure_code,
                "message": FAILURE_MESSAGES[run.script.failure_code],
            }
            self._end(run, "failed")
        elif outcome == "incomplete":
            run.incomplete_reason = "max_completion_tokens"
            reply = _Reply(partial(self._reply_text(run)))
            self._add_reply(run, reply, incomplete=True)
            self._end(run, "incomplete", reply.text)
        elif outcome == "expired":
            self._end(run, "expired")
        elif outcome == "requires_action":
            self._require_action(run)

    def _reply_text(self, run: Run) -> str:
        """The echo, then what each tool said, in the order the calls were made."""
        if not run.tool_calls:
            return echo_text(run.echoed)
        first, *others = run.tool_calls
        text = echo_text(run.echoed, (first.name, first.output or ""))
        return text + "".join(f" | tool {call.name} said: {call.output or ''}" for call in others)

    def _complete(self, run: Run) -> None:
        reply = _Reply(self._reply_text(run))
        if run.file_search is not None:
            self._cite_search(run, run.file_search, reply)
        if run.tool_script.code_file is not None:
            self._write_code_file(run, run.tool_script.code_file, reply)
        self._add_reply(run, reply, incomplete=False)
        self._end(run, "completed", reply.text)

    def _cite_search(self, run: Run, call: FileSearchCall, reply: _Reply) -> None:
        """Quote the best passage, then cite each file found in the API's marker style,
        ``【step:result†source】`` (the step's position in the run, the result's in it)."""
        step_index = len(run.steps)
        run.steps.append(self._tool_step(run, call))
        if not call.hits:
            return
        best = call.hits[0]
        reply.text += f' | {best.filename} says: "{best.text}"'
        for result_index, hit in _first_hit_per_file(call.hits):
            citation = {"type": "file_citation", "file_citation": {"file_id": hit.file_id}}
            reply.annotate(f"【{step_index}:{result_index}†source】", citation)

    def _write_code_file(self, run: Run, name: str, reply: _Reply) -> None:
        path = f"{_SANDBOX}/{name}"
        content = f"Written by the stand-in's code interpreter: {name}\n".encode()
        stored = StoredFile(new_id("file"), name, "assistants_output", content, time.time())
        self._state.files[stored.id] = stored
        code = f"with open({path!r}, 'wb') as output:\n    output.write({content!r})\n"
        logs = f"Wrote {path} ({len(content)} bytes)"
        run.steps.append(self._tool_step(run, CodeInterpreterCall(new_id("call"), code, logs)))
        reply.text += f" | [{name}]("
        reply.annotate(
            f"sandbox:{path}", {"type": "file_path", "file_path": {"file_id": stored.id}}
        )
        reply.text += ")"
        reply.attachments.append({"file_id": stored.id, "tools": [{"type": "code_interpreter"}]})

    def _require_action(self, run: Run) -> None:
        """One call per ``[[call:...]]`` marker, else the ``requires_action`` outcome's tool."""
        query = run.batch[-1] if run.batch else ""
        scripted = run.tool_script.calls or (ScriptedCall(run.script.tool_name or "tool", None),)
        run.tool_calls = [
            ToolCall(
                new_id("call"),
                call.name,
                call.arguments or scripted_arguments(call.name, run.tools, query),
            )
            for call in scripted
        ]
        step = self._step(run, "tool_calls", "in_progress", tool_calls=list(run.tool_calls))
        run.steps.append(step)
        run.status = "requires_action"

    def _add_reply(self, run: Run, reply: _Reply, *, incomplete: bool) -> None:
        thread = self._state.threads.get(run.thread_id)
        if thread is None:
            return
        message = Message(
            id=new_id("msg"),
            thread_id=run.thread_id,
            role="assistant",
            content=[text_block(reply.text, reply.annotations)],
            created_at=time.time(),
            attachments=reply.attachments,
            assistant_id=run.assistant_id,
            run_id=run.id,
            status="incomplete" if incomplete else "completed",
            incomplete_reason="max_tokens" if incomplete else None,
        )
        thread.messages.append(message)
        step = self._step(run, "message_creation", "completed", message_id=message.id)
        step.ended_at = message.created_at
        run.steps.append(step)

    def _tool_step(self, run: Run, call: StepToolCall) -> RunStep:
        """A step for a tool the platform runs itself: done as soon as it is made."""
        step = self._step(run, "tool_calls", "completed", tool_calls=[call])
        step.ended_at = step.created_at
        return step

    def _step(
        self,
        run: Run,
        step_type: Literal["message_creation", "tool_calls"],
        status: Literal["in_progress", "completed"],
        *,
        message_id: str | None = None,
        tool_calls: Sequence[StepToolCall] = (),
    ) -> RunStep:
        return RunStep(
            id=new_id("step"),
            run_id=run.id,
            thread_id=run.thread_id,
            assistant_id=run.assistant_id,
            type=step_type,
            created_at=time.time(),
            status=status,
            message_id=message_id,
            tool_calls=list(tool_calls),
        )

    def _cancelled(self, run: Run) -> None:
        now = time.time()
        for step in run.steps:
            if step.status == "in_progress":
                step.status, step.ended_at = "cancelled", now
        self._end(run, "cancelled")

    def _end(self, run: Run, status: RunStatus, reply: str = "") -> None:
        run.status = status
        run.ended_at = time.time()
        prompt = count_tokens(run.instructions, *run.batch)
        completion = count_tokens(reply)
        run.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


def _with_tool_script(script: Script, tools: ToolScript, declared: Sequence[Json]) -> Script:
    """The outcome once tool markers are counted in, refusing markers the run cannot honour."""
    if tools.mcp_calls:
        raise bad_request("The Assistants API has no MCP tools: the stand-in refuses [[mcp:...]].")
    if tools.code_file is not None and "code_interpreter" not in tool_types(declared):
        raise bad_request(
            "The stand-in's [[code_file:...]] marker needs the code_interpreter tool "
            "among the run's tools (or its assistant's)."
        )
    if not tools.calls:
        return script
    if script.outcome != "completed":
        raise bad_request(
            f"The stand-in's [[call:...]] markers do not combine with the {script.outcome} outcome."
        )
    return Script("requires_action", delay_ms=script.delay_ms)


def _first_hit_per_file(hits: Sequence[Hit]) -> Iterator[tuple[int, Hit]]:
    seen: set[str] = set()
    for index, hit in enumerate(hits):
        if hit.file_id not in seen:
            seen.add(hit.file_id)
            yield index, hit
