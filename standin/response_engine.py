"""Response lifecycle: queued -> in_progress -> outcome, on the same clock as runs.

What a response will output is planned when it is created (standin.response_tools),
so a tool script it cannot carry out is a 400 then; settling emits the plan. A
settled response appends its input and output items to its conversation; failed
and cancelled ones leave the conversation as it was, so a retry with the same
input does not duplicate it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from standin.clock import Clock
from standin.config import LiveConfig
from standin.content_parts import input_part_names
from standin.conversation_items import (
    message_item,
    message_text,
    newest_user_text,
    unanswered_user_messages,
)
from standin.errors import bad_request
from standin.models import Json, new_id
from standin.replies import (
    FAILURE_MESSAGES,
    Reply,
    compose_reply,
    count_tokens,
    echo_piece,
    echo_text,
    first_tokens,
    partial,
)
from standin.response_models import Conversation, ResponseRecord, ResponseStatus
from standin.response_tools import TurnContext, plan_turn
from standin.script import Script, parse_script
from standin.state import StandInState, active_response, ensure_conversation_unlocked


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
    def __init__(
        self,
        state: StandInState,
        clock: Clock,
        config: LiveConfig,
        on_settled: Callable[[ResponseRecord], None],
    ) -> None:
        self._state = state
        self._clock = clock
        self._config = config
        # Told of every response that ends (the webhook sender listens here).
        self._on_settled = on_settled

    def create(self, spec: ResponseSpec, conversation: Conversation | None) -> ResponseRecord:
        """Start a response, or change nothing if the request is refused."""
        history = conversation.items if conversation else []
        if conversation is not None:
            ensure_conversation_unlocked(conversation)
        unanswered = unanswered_user_messages(history, spec.input_items)
        batch = [message_text(item) for item in unanswered]
        script = _script(spec)
        context = TurnContext(
            tools=spec.tools,
            options=spec.options,
            history=history,
            input_items=spec.input_items,
            marker_text=newest_user_text(spec.input_items),
            query=batch[-1] if batch else "",
            script=script,
        )
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
            batch=batch,
            echoed=[self._echo_piece(item) for item in unanswered],
            plan=plan_turn(context, self._state),
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
            self._settle(record, "incomplete", partial)
        else:
            self._settle(record, "completed")

    def _settle(
        self,
        record: ResponseRecord,
        status: ResponseStatus,
        cut: Callable[[str], str] | None = None,
    ) -> None:
        """The planned tool calls, then the reply unless the turn waits for the client."""
        record.output = list(record.plan.tool_items)
        if record.plan.replies:
            reply = compose_reply(echo_text(record.echoed), record.plan.notes)
            if cut is not None:
                reply = reply.cut(len(cut(reply.text)))
            reply, status = _within_token_limit(record, reply, status)
            record.output.append(_message(reply, status))
        self._store_turn(record)
        self._end(record, status)

    def _store_turn(self, record: ResponseRecord) -> None:
        if record.conversation_id is None:
            return
        conversation = self._state.conversations.get(record.conversation_id)
        if conversation is not None:
            conversation.items.extend(record.input_items)
            conversation.items.extend(record.output)

    def _end(self, record: ResponseRecord, status: ResponseStatus) -> None:
        record.status = status
        record.ended_at = time.time()
        input_tokens = count_tokens(record.instructions or "", *record.batch)
        output_tokens = count_tokens(*_generated_texts(record.output))
        record.usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        record.settled.set()
        self._on_settled(record)


def _within_token_limit(
    record: ResponseRecord, reply: Reply, status: ResponseStatus
) -> tuple[Reply, ResponseStatus]:
    """A reply longer than ``max_output_tokens`` stops there, as the model's would."""
    limit = record.options.get("max_output_tokens")
    if limit is None or count_tokens(reply.text) <= limit:
        return reply, status
    record.incomplete_reason = "max_output_tokens"
    return reply.cut(len(first_tokens(reply.text, limit))), "incomplete"


def _message(reply: Reply, status: ResponseStatus) -> Json:
    content = [{"type": "output_text", "text": reply.text, "annotations": reply.annotations}]
    return message_item("assistant", content, status)


def _generated_texts(output: Sequence[Json]) -> list[str]:
    """What the model wrote: message text and the arguments of its calls."""
    texts = []
    for item in output:
        if item["type"] == "message":
            texts.append(message_text(item))
        elif isinstance(item.get("arguments"), str):
            texts.append(item["arguments"])
    return texts


def _script(spec: ResponseSpec) -> Script:
    script = parse_script(newest_user_text(spec.input_items), spec.metadata)
    if script.outcome == "expired":
        raise bad_request("The stand-in outcome 'expired' exists only for runs.")
    return script
