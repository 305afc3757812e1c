"""Run lifecycle: queued -> in_progress -> outcome, driven by the clock.

Each transition is a plain callback fired by a timer, so a run advances on
schedule whether or not anyone polls it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from standin.clock import Clock
from standin.config import LiveConfig
from standin.content_parts import message_names
from standin.errors import bad_request
from standin.models import (
    Json,
    Message,
    Run,
    RunStatus,
    RunStep,
    Thread,
    ToolCall,
    new_id,
    text_block,
)
from standin.replies import FAILURE_MESSAGES, count_tokens, echo_piece, echo_text, partial
from standin.script import parse_script
from standin.state import (
    StandInState,
    active_run,
    ensure_can_start_run,
    unanswered_user_messages,
)
from standin.tool_arguments import scripted_arguments


@dataclass
class RunSpec:
    """What a run create request asked for, after defaults from the assistant."""

    assistant_id: str
    model: str
    instructions: str
    tools: list[Json]
    metadata: dict[str, str]
    options: Json = field(default_factory=dict)


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
        script = parse_script(batch[-1] if batch else None, spec.metadata)
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
        )
        thread.messages.extend(new_messages)
        thread.runs.append(run)
        self._state.runs[run.id] = run
        self._clock.schedule(run.id, self._config.current.queue_ms, lambda: self._begin(run))
        return run

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
            reply = partial(self._reply_text(run))
            self._add_reply(run, reply, incomplete=True)
            self._end(run, "incomplete", reply)
        elif outcome == "expired":
            self._end(run, "expired")
        elif outcome == "requires_action":
            self._require_action(run)

    def _reply_text(self, run: Run) -> str:
        calls = run.tool_calls
        tool = (calls[0].name, calls[0].output or "") if calls else None
        return echo_text(run.echoed, tool)

    def _complete(self, run: Run) -> None:
        reply = self._reply_text(run)
        self._add_reply(run, reply, incomplete=False)
        self._end(run, "completed", reply)

    def _require_action(self, run: Run) -> None:
        tool_name = run.script.tool_name or "tool"
        query = run.batch[-1] if run.batch else ""
        call = ToolCall(new_id("call"), tool_name, scripted_arguments(tool_name, run.tools, query))
        run.tool_calls.append(call)
        run.steps.append(self._step(run, "tool_calls", "in_progress", tool_calls=[call]))
        run.status = "requires_action"

    def _add_reply(self, run: Run, text: str, *, incomplete: bool) -> None:
        thread = self._state.threads.get(run.thread_id)
        if thread is None:
            return
        message = Message(
            id=new_id("msg"),
            thread_id=run.thread_id,
            role="assistant",
            content=[text_block(text)],
            created_at=time.time(),
            assistant_id=run.assistant_id,
            run_id=run.id,
            status="incomplete" if incomplete else "completed",
            incomplete_reason="max_tokens" if incomplete else None,
        )
        thread.messages.append(message)
        step = self._step(run, "message_creation", "completed", message_id=message.id)
        step.ended_at = message.created_at
        run.steps.append(step)

    def _step(
        self,
        run: Run,
        step_type: Literal["message_creation", "tool_calls"],
        status: Literal["in_progress", "completed"],
        *,
        message_id: str | None = None,
        tool_calls: list[ToolCall] | None = None,
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
            tool_calls=tool_calls or [],
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
