"""The Assistants v2 backend: threads, messages and runs (for Assistants-compatible servers)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import openai
from openai import omit
from openai.types import FilePurpose
from openai.types.beta.threads import Message, Run
from openai.types.beta.threads.message_content_part_param import MessageContentPartParam
from openai.types.beta.threads.run_create_params import AdditionalMessage

from worker.backends.base import (
    RunRef,
    RunSnapshot,
    RunStatus,
    ToolCall,
    ToolSubmission,
    Turn,
    author_tags,
    thread_metadata,
)
from worker.backends.sdk_errors import describe, error_code, rejected, sdk_boundary
from worker.errors import RunAlreadyEnded, ThreadBusy
from worker.events import (
    ReplyMessage,
    RunError,
    ToolCallSummary,
    ToolKind,
    ToolOutcome,
    Usage,
    UserMessage,
)
from worker.profiles.declarations import assistants_options, assistants_tools
from worker.profiles.model import Profile
from worker.relay.attachments import FileKind

_ACTIVE_RUN = re.compile(r"\b(run_[A-Za-z0-9]+)\b")
# How far back to look for the run of an earlier attempt; runs of one conversation are serial,
# so ours is among the newest.
_RECONCILE_WINDOW = 10
# How far back to look for messages an earlier attempt recorded: a turn holds at most a batch
# of messages, recorded last, so they are among the newest 100 (the API's largest page).
_RECORDED_WINDOW = 100


class AssistantsBackend:
    """Threads and runs: a conversation is a thread; a turn's messages ride on the run's create.

    Runs are tagged with their batch and attempt, so the run of an earlier attempt is found in
    the thread's newest runs.
    """

    name = "assistants"
    # Assistants read documents through file search, and look at images given as `image_file`
    # parts, which must be uploaded for vision.
    purposes: Mapping[FileKind, FilePurpose] = {
        FileKind.DOCUMENT: "assistants",
        FileKind.IMAGE: "vision",
    }

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._threads = client.beta.threads

    @sdk_boundary
    async def create_thread(self, conversation_id: str, profile: Profile) -> str:
        search = profile.hosted.file_search
        # A run's tools can be overridden, but not its resources: the stores go on the thread
        # (the API searches the assistant's and the thread's, one store each).
        resources: Any = omit
        if search is not None and search.store_ids:
            resources = {"file_search": {"vector_store_ids": list(search.store_ids)}}
        thread = await self._threads.create(
            metadata=thread_metadata(conversation_id, profile.metadata), tool_resources=resources
        )
        return thread.id

    @sdk_boundary
    async def find_run(self, thread_id: str, turn: Turn) -> str | None:
        page = await self._threads.runs.list(thread_id, limit=_RECONCILE_WINDOW, order="desc")
        wanted = turn.run_metadata
        for run in page.data:
            meta = run.metadata or {}
            if (
                meta.get("aw_batch_id") == wanted["aw_batch_id"]
                and meta.get("aw_attempt") == wanted["aw_attempt"]
            ):
                return run.id
        return None

    @sdk_boundary
    async def start_run(self, thread_id: str, turn: Turn) -> RunSnapshot:
        messages = [_message(m, turn) for m in turn.messages] if turn.add_messages else None
        try:
            run = await self._threads.runs.create(
                thread_id,
                assistant_id=turn.assistant_id,
                additional_messages=messages,
                additional_instructions=turn.instructions,
                metadata=turn.run_metadata,
                extra_body=_overrides(turn.profile),
            )
        except openai.BadRequestError as exc:
            raise _thread_busy(exc) or rejected(exc) from exc
        return _snapshot(run)

    @sdk_boundary
    async def retrieve_run(self, run: RunRef) -> RunSnapshot:
        raw = await self._threads.runs.with_raw_response.retrieve(
            run.run_id, thread_id=run.thread_id
        )
        return _snapshot(raw.parse(), _poll_after_ms(raw.headers.get("openai-poll-after-ms")))

    @sdk_boundary
    async def find_tool_outputs_run(self, submission: ToolSubmission) -> str | None:
        # The run takes its outputs itself, and moves on at once when it has.
        run = await self.retrieve_run(submission.run)
        return None if run.status is RunStatus.REQUIRES_ACTION else submission.run.run_id

    @sdk_boundary
    async def submit_tool_outputs(self, submission: ToolSubmission) -> RunSnapshot:
        run = await self._threads.runs.submit_tool_outputs(
            submission.run.run_id,
            thread_id=submission.run.thread_id,
            tool_outputs=[
                {"tool_call_id": o.call_id, "output": o.output} for o in submission.outputs
            ],
        )
        return _snapshot(run)

    @sdk_boundary
    async def cancel_run(self, run: RunRef) -> None:
        try:
            await self._threads.runs.cancel(run.run_id, thread_id=run.thread_id)
        except openai.BadRequestError as exc:
            raise _already_ended(exc) from exc

    @sdk_boundary
    async def reply_messages(self, run: RunRef) -> tuple[ReplyMessage, ...]:
        page = self._threads.messages.list(run.thread_id, run_id=run.run_id, order="asc", limit=100)
        return tuple([_reply_message(m) async for m in page if m.role == "assistant"])

    @sdk_boundary
    async def hosted_calls(self, run: RunRef) -> tuple[ToolCallSummary, ...]:
        page = self._threads.runs.steps.list(
            run.run_id, thread_id=run.thread_id, order="asc", limit=100
        )
        calls: list[ToolCallSummary] = []
        async for step in page:
            if step.step_details.type != "tool_calls":
                continue
            outcome = ToolOutcome.ERROR if step.status == "failed" else ToolOutcome.OK
            for call in step.step_details.tool_calls:
                if call.type in _HOSTED:
                    calls.append(ToolCallSummary(_HOSTED[call.type], call.type, outcome))
        return tuple(calls)

    @sdk_boundary
    async def delete_thread(self, thread_id: str) -> None:
        try:
            await self._threads.delete(thread_id)
        except openai.NotFoundError:
            return

    @sdk_boundary
    async def update_metadata(
        self, thread_id: str, conversation_id: str, metadata: Mapping[str, str]
    ) -> None:
        await self._threads.update(thread_id, metadata=thread_metadata(conversation_id, metadata))

    @sdk_boundary
    async def find_recorded(self, thread_id: str, turn: Turn) -> frozenset[str]:
        page = await self._threads.messages.list(thread_id, order="desc", limit=_RECORDED_WINDOW)
        # Tags hold event IDs cut to 512 characters, as _message writes them.
        wanted = {m.event_id[:512]: m.event_id for m in turn.messages}
        tags = ((m.metadata or {}).get("aw_event_id") for m in page.data if m.role == "user")
        return frozenset(wanted[t] for t in tags if isinstance(t, str) and t in wanted)

    @sdk_boundary
    async def record_messages(
        self, thread_id: str, turn: Turn, messages: Sequence[UserMessage]
    ) -> None:
        # One message per request, in order: the API has no batch create, and a crash between
        # two leaves a prefix that find_recorded sees, so the rest is added and nothing twice.
        for message in messages:
            await self._add_message(thread_id, _message(message, turn))

    async def _add_message(self, thread_id: str, message: AdditionalMessage) -> None:
        try:
            await self._threads.messages.create(
                thread_id,
                role=message["role"],
                content=message["content"],
                attachments=message.get("attachments") or omit,
                metadata=message.get("metadata") or omit,
            )
        except openai.BadRequestError as exc:
            raise _thread_busy(exc) or rejected(exc) from exc


def _overrides(profile: Profile) -> dict[str, Any] | None:
    """The profile's model, instructions, tools and options, over the assistant object's."""
    if not profile.overrides_assistant:
        return None
    return {
        "model": profile.model,
        "instructions": profile.instructions,
        "tools": assistants_tools(profile),
        **assistants_options(profile),
    }


def _message(message: UserMessage, turn: Turn) -> AdditionalMessage:
    """A user message: its text, images as `image_file` parts, documents for file search."""
    metadata = {
        **message.metadata,
        "aw_event_id": message.event_id[:512],
        "aw_batch_id": str(turn.batch_id),
        **author_tags(message.author),
    }
    files = [turn.file(message, a) for a in message.attachments]
    images: list[MessageContentPartParam] = [
        {"type": "image_file", "image_file": {"file_id": f.file_id}}
        for f in files
        if f.kind is FileKind.IMAGE
    ]
    content: str | list[MessageContentPartParam] = message.text
    if images:
        content = [{"type": "text", "text": message.text}, *images]
    result: AdditionalMessage = {"role": "user", "content": content, "metadata": metadata}
    documents = [f for f in files if f.kind is FileKind.DOCUMENT]
    if documents:
        result["attachments"] = [
            {"file_id": f.file_id, "tools": [{"type": "file_search"}]} for f in documents
        ]
    return result


def _thread_busy(exc: openai.BadRequestError) -> ThreadBusy | None:
    text = exc.message
    if "active" not in text or "run" not in text:
        return None
    match = _ACTIVE_RUN.search(text)
    return ThreadBusy(match[1] if match else None)


def _already_ended(exc: openai.BadRequestError) -> RunAlreadyEnded:
    # The only request a cancel can get wrong is the run's state: it has ended, or is ending.
    return RunAlreadyEnded(error_code(exc), describe(exc), str(exc.status_code))


def _poll_after_ms(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _snapshot(run: Run, poll_after_ms: int | None = None) -> RunSnapshot:
    tool_calls: Iterable[Any] = ()
    if run.required_action is not None:
        tool_calls = run.required_action.submit_tool_outputs.tool_calls
    error = None
    if run.last_error is not None:
        error = RunError(run.last_error.code, run.last_error.message)
    elif run.incomplete_details is not None:
        reason = run.incomplete_details.reason or "incomplete"
        error = RunError(reason, f"the run stopped early: {reason}")
    elif run.status == "expired":
        error = RunError("expired", "the run expired before it finished")
    usage = None
    if run.usage is not None:
        usage = Usage(run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens)
    return RunSnapshot(
        run_id=run.id,
        status=RunStatus(run.status),
        poll_after_ms=poll_after_ms,
        tool_calls=tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in tool_calls),
        error=error,
        usage=usage,
    )


_HOSTED = {"file_search": ToolKind.FILE_SEARCH, "code_interpreter": ToolKind.CODE_INTERPRETER}


def _reply_message(message: Message) -> ReplyMessage:
    texts: list[str] = []
    annotations: list[dict[str, Any]] = []
    produced: list[str] = []
    for part in message.content:
        if part.type == "text":
            texts.append(part.text.value)
            annotations.extend(a.model_dump(mode="json") for a in part.text.annotations)
            # A file the code interpreter wrote is linked by a file_path annotation.
            produced.extend(
                a.file_path.file_id for a in part.text.annotations if a.type == "file_path"
            )
        elif part.type == "image_file":
            produced.append(part.image_file.file_id)
        elif part.type == "refusal":
            texts.append(part.refusal)
    return ReplyMessage(
        message.id, "\n".join(texts), tuple(annotations), tuple(dict.fromkeys(produced))
    )
