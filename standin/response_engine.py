"""Response lifecycle: queued -> in_progress -> outcome, on the same clock as runs.

A settled response appends its input and output items to its conversation;
failed and cancelled ones leave the conversation as it was, so a retry with the
same input does not duplicate it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from standin.clock import Clock
from standin.config import LiveConfig
from standin.content_parts import input_part_names
from standin.conversation_items import (
    function_call_item,
    message_item,
    message_text,
    newest_user_text,
    output_text,
    unanswered_user_messages,
)
from standin.errors import bad_request
from standin.models import Json, new_id
from standin.replies import (
    FAILURE_MESSAGES,
    count_tokens,
    echo_piece,
    echo_text,
    first_tokens,
    partial,
)
from standin.response_models import Conversation, ResponseRecord, ResponseStatus
from standin.script import Script, parse_script
from standin.state import StandInState, active_response, ensure_conversation_unlocked
from standin.tool_arguments import scripted_arguments


@dataclass
class ResponseSpec:
    """What a response create request asked for."""

    model: str
    instructions: str | None
    metadata: dict[str, str]
    tools: list[Json]
    background: bool
    input_items: list[Json]
    options: Json = field(default_factory=dict)


class ResponseEngine:
    def __init__(self, state: StandInState, clock: Clock, config: LiveConfig) -> None:
        self._state = state
        self._clock = clock
        self._config = config

    def create(self, spec: ResponseSpec, conversation: Conversation | None) -> ResponseRecord:
        """Start a response, or change nothing if the request is refused."""
        history = conversation.items if conversation else []
        if conversation is not None:
            ensure_conversation_unlocked(conversation)
        tool_reply = _tool_reply(history, spec.input_items)
        unanswered = unanswered_user_messages(history, spec.input_items)
        script = _script(spec, answers_tool_call=tool_reply is not None)
        record = ResponseRecord(
            id=new_id("resp"),
            conversation_id=conversation.id if conversation else None,
            model=spec.model,
            instructions=spec.instructions,
            metadata=spec.metadata,
            tools=spec.tools,
            created_at=time.time(),
            background=spec.background,
            script=script.settle_failed_once(
                is_first=conversation is None or not conversation.responses
            ),
            input_items=spec.input_items,
            batch=[message_text(item) for item in unanswered],
            echoed=[self._echo_piece(item) for item in unanswered],
            tool_reply=tool_reply,
            options=spec.options,
        )
        self._state.responses[record.id] = record
        if conversation is not None:
            conversation.responses.append(record)
        self._clock.schedule(record.id, self._config.current.queue_ms, lambda: self._begin(record))
        return record

    def _echo_piece(self, item: Json) -> str:
        names = input_part_names(item["content"], self._state.file_name)
        return echo_piece(message_text(item), names)

    def cancel(self, record: ResponseRecord) -> None:
        """Idempotent, as the real endpoint is; only background responses qualify."""
        if not record.background:
            raise bad_request("Only responses created with background=true can be cancelled.")
        if record.status == "cancelled":
            return
        if not record.active:
            raise bad_request(f"Cannot cancel a response with status '{record.status}'.")
        self._clock.cancel(record.id)
        self._end(record, "cancelled")

    def abandon(self, conversation: Conversation) -> None:
        """A deleted conversation's active response stops at once."""
        record = active_response(conversation)
        if record is not None:
            self._clock.cancel(record.id)
            self._end(record, "cancelled")

    def _begin(self, record: ResponseRecord) -> None:
        record.status = "in_progress"
        record.started_at = time.time()
        if record.script.outcome != "hang":
            duration_ms = record.script.duration_ms(self._config.current.run_duration_ms)
            self._clock.schedule(record.id, duration_ms, lambda: self._finish(record))

    def _finish(self, record: ResponseRecord) -> None:
        outcome = record.script.outcome
        if outcome == "failed":
            code = record.script.failure_code
            record.error = {"code": code, "message": FAILURE_MESSAGES[code]}
            self._end(record, "failed")
        elif outcome == "incomplete":
            record.incomplete_reason = "max_output_tokens"
            self._reply(record, partial(echo_text(record.echoed, record.tool_reply)), "incomplete")
        elif outcome == "requires_action":
            self._request_tool(record)
        else:
            self._reply_within_limit(record, echo_text(record.echoed, record.tool_reply))

    def _reply_within_limit(self, record: ResponseRecord, text: str) -> None:
        """A reply longer than ``max_output_tokens`` stops there, as the model's would."""
        limit = record.options.get("max_output_tokens")
        if limit is not None and count_tokens(text) > limit:
            record.incomplete_reason = "max_output_tokens"
            self._reply(record, first_tokens(text, limit), "incomplete")
        else:
            self._reply(record, text, "completed")

    def _reply(self, record: ResponseRecord, text: str, status: ResponseStatus) -> None:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        record.output = [message_item("assistant", content, status)]
        self._store_turn(record)
        self._end(record, status, text)

    def _request_tool(self, record: ResponseRecord) -> None:
        """The Responses form of requires_action: a completed function_call output."""
        query = record.batch[-1] if record.batch else ""
        name = record.script.tool_name or "tool"
        arguments = scripted_arguments(name, record.tools, query)
        record.output = [function_call_item(new_id("call"), name, arguments)]
        self._store_turn(record)
        self._end(record, "completed", arguments)

    def _store_turn(self, record: ResponseRecord) -> None:
        if record.conversation_id is None:
            return
        conversation = self._state.conversations.get(record.conversation_id)
        if conversation is not None:
            conversation.items.extend(record.input_items)
            conversation.items.extend(record.output)

    def _end(self, record: ResponseRecord, status: ResponseStatus, reply: str = "") -> None:
        record.status = status
        record.ended_at = time.time()
        input_tokens = count_tokens(record.instructions or "", *record.batch)
        output_tokens = count_tokens(reply)
        record.usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        record.settled.set()


def _script(spec: ResponseSpec, *, answers_tool_call: bool) -> Script:
    script = parse_script(newest_user_text(spec.input_items), spec.metadata)
    if script.outcome == "expired":
        raise bad_request("The stand-in outcome 'expired' exists only for runs.")
    # The request that carries the tool output must not ask for the tool again.
    if answers_tool_call and script.outcome == "requires_action":
        return Script(delay_ms=script.delay_ms)
    return script


def _tool_reply(history: Sequence[Json], input_items: Sequence[Json]) -> tuple[str, str] | None:
    """The (tool name, output) of the newest function_call_output in the input."""
    outputs = [item for item in input_items if item["type"] == "function_call_output"]
    if not outputs:
        return None
    call_id = outputs[-1]["call_id"]
    for item in [*history, *input_items]:
        if item["type"] == "function_call" and item["call_id"] == call_id:
            return item["name"], output_text(outputs[-1])
    raise bad_request(f"No tool call found for function call output with call_id {call_id}.")
