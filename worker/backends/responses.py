"""The Responses backend: Conversations for threads, background responses for runs.

The API keeps no list of responses and takes no idempotency key, so a create whose answer was
lost cannot be found by ID. What can be found is its effect on the conversation: the turn's user
inputs after the conversation's last known item (the turn's watermark). When they are there, the
turn is adopted as an "items run" (`items:<last input item id>`) whose outcome is read from the
items that follow it, instead of being created a second time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import openai
from openai import omit
from openai.types import FilePurpose
from openai.types.conversations.conversation_item import ConversationItem
from openai.types.conversations.message import Message
from openai.types.responses import ResponseInputItemParam, ResponseInputMessageContentListParam

from worker.backends.base import (
    ApprovalRequest,
    RunRef,
    RunSnapshot,
    RunStatus,
    ToolCall,
    ToolSubmission,
    Turn,
    author_tags,
    thread_metadata,
)
from worker.backends.response_wire import read_message, read_reply_messages, read_snapshot
from worker.backends.sdk_errors import describe, error_code, rejected, sdk_boundary
from worker.errors import RunAlreadyEnded, ThreadBusy
from worker.events import (
    ReplyMessage,
    UserMessage,
)
from worker.profiles.declarations import responses_options, responses_tools
from worker.profiles.model import Profile
from worker.relay.attachments import FileKind

ITEMS_RUN = "items:"
_PAGE = 100


class ResponsesBackend:
    """A Conversation per helpdesk conversation; each turn is one background response in it.

    The model, instructions and tools are the worker's (a Responses call carries them), not an
    assistant object's. How a turn is found again after a lost answer: see the module docstring.
    """

    name = "responses"
    # Model input, documents and images alike.
    purposes: Mapping[FileKind, FilePurpose] = {
        FileKind.DOCUMENT: "user_data",
        FileKind.IMAGE: "user_data",
    }

    def __init__(self, client: openai.AsyncOpenAI, *, prompt_id: str | None = None) -> None:
        self._client = client
        self._prompt_id = prompt_id
        # Each profile's tools in wire form, built on first use (profiles never change).
        self._tools: dict[str, list[dict[str, Any]]] = {}

    @sdk_boundary
    async def create_thread(self, conversation_id: str, profile: Profile) -> str:
        conversation = await self._client.conversations.create(
            metadata=thread_metadata(conversation_id, profile.metadata)
        )
        return conversation.id

    @sdk_boundary
    async def watermark(self, thread_id: str) -> str | None:
        page = await self._client.conversations.items.list(thread_id, order="desc", limit=1)
        return page.data[0].id if page.data else None

    @sdk_boundary
    async def find_run(self, thread_id: str, turn: Turn) -> str | None:
        inputs = await self._turn_inputs(thread_id, turn)
        return ITEMS_RUN + inputs[-1].id if inputs else None

    @sdk_boundary
    async def start_run(self, thread_id: str, turn: Turn) -> RunSnapshot:
        items = [_user_item(m, turn) for m in turn.messages]
        return await self._create(thread_id, turn, items)

    @sdk_boundary
    async def retrieve_run(self, run: RunRef) -> RunSnapshot:
        if run.run_id.startswith(ITEMS_RUN):
            return await self._retrieve_items_run(run.thread_id, run.run_id)
        raw = await self._client.responses.with_raw_response.retrieve(run.run_id)
        return read_snapshot(raw.content, _int_header(raw.headers.get("openai-poll-after-ms")))

    @sdk_boundary
    async def find_tool_outputs_run(self, submission: ToolSubmission) -> str | None:
        call_ids = {o.call_id for o in submission.outputs}
        request_ids = {a.request_id for a in submission.approvals}
        after = submission.turn.after_item_id
        for item in await self._items_after(submission.run.thread_id, after):
            if item.type == "function_call_output" and item.call_id in call_ids:
                return ITEMS_RUN + item.id
            if item.type == "mcp_approval_response" and item.approval_request_id in request_ids:
                return ITEMS_RUN + item.id
        return None

    @sdk_boundary
    async def submit_tool_outputs(self, submission: ToolSubmission) -> RunSnapshot:
        # The outputs and approvals go in as the input of a follow-up response.
        items: list[ResponseInputItemParam] = [
            {"type": "function_call_output", "call_id": o.call_id, "output": o.output}
            for o in submission.outputs
        ]
        items.extend(
            {
                "type": "mcp_approval_response",
                "approval_request_id": a.request_id,
                "approve": a.approve,
            }
            for a in submission.approvals
        )
        return await self._create(submission.run.thread_id, submission.turn, items)

    @sdk_boundary
    async def cancel_run(self, run: RunRef) -> None:
        # An items run's response has no known ID: it is given up on, as if cancelled.
        if run.run_id.startswith(ITEMS_RUN):
            return
        try:
            await self._client.responses.cancel(run.run_id)
        except openai.BadRequestError as exc:
            # A cancel can only be wrong about the response's state: it has ended already.
            raise RunAlreadyEnded(error_code(exc), describe(exc), str(exc.status_code)) from exc

    @sdk_boundary
    async def reply_messages(self, run: RunRef) -> tuple[ReplyMessage, ...]:
        if run.run_id.startswith(ITEMS_RUN):
            items = await self._items_after(run.thread_id, run.run_id.removeprefix(ITEMS_RUN))
            return tuple(_reply(i) for i in items if i.type == "message" and i.role == "assistant")
        raw = await self._client.responses.with_raw_response.retrieve(run.run_id)
        return read_reply_messages(raw.content)

    @sdk_boundary
    async def delete_thread(self, thread_id: str) -> None:
        try:
            await self._client.conversations.delete(thread_id)
        except openai.NotFoundError:
            return

    @sdk_boundary
    async def update_metadata(
        self, thread_id: str, conversation_id: str, metadata: Mapping[str, str]
    ) -> None:
        await self._client.conversations.update(
            thread_id, metadata=thread_metadata(conversation_id, metadata)
        )

    @sdk_boundary
    async def find_recorded(self, thread_id: str, turn: Turn) -> frozenset[str]:
        # Items carry no metadata, and record_messages adds a turn's messages in one request:
        # the turn's texts in order after its watermark mean all of them are there.
        found = await self._turn_inputs(thread_id, turn)
        return frozenset(m.event_id for m in turn.messages) if found else frozenset()

    @sdk_boundary
    async def record_messages(
        self, thread_id: str, turn: Turn, messages: Sequence[UserMessage]
    ) -> None:
        if not messages:
            return
        try:
            await self._client.conversations.items.create(
                thread_id, items=[_user_item(m, turn) for m in messages]
            )
        except openai.BadRequestError as exc:
            raise _locked(exc) or rejected(exc) from exc

    async def _turn_inputs(self, thread_id: str, turn: Turn) -> list[Message]:
        """The turn's user messages after its watermark, if all of them are there in order."""
        items = await self._items_after(thread_id, turn.after_item_id)
        texts = [m.text for m in turn.messages]
        inputs = [i for i in items if i.type == "message" and i.role == "user"][: len(texts)]
        return inputs if [_item_text(i) for i in inputs] == texts else []

    async def _create(
        self, thread_id: str, turn: Turn, items: list[ResponseInputItemParam]
    ) -> RunSnapshot:
        profile = turn.profile
        instructions = profile.instructions
        if turn.instructions:
            instructions = f"{instructions}\n\n{turn.instructions}"
        try:
            # The body is read by response_wire, not into the SDK's model (see there why).
            raw = await self._client.responses.with_raw_response.create(
                background=True,
                store=True,
                conversation=thread_id,
                model=profile.model,
                instructions=instructions,
                metadata=_metadata(turn),
                prompt={"id": self._prompt_id} if self._prompt_id else omit,
                # Typed `input` and `tools` would first be walked against the SDK's TypedDict
                # unions: 0.55 ms of CPU per create, a seventh of the worker's CPU per event
                # (bench/sdk_cost.py). Both are built in wire form (the input checked by the
                # types above, the tools once per profile), so they go in the body as they are.
                extra_body={
                    "input": items,
                    "tools": self._tools_of(profile),
                    **responses_options(profile),
                },
            )
        except openai.BadRequestError as exc:
            raise _locked(exc) or rejected(exc) from exc
        return read_snapshot(raw.content)

    def _tools_of(self, profile: Profile) -> list[dict[str, Any]]:
        tools = self._tools.get(profile.name)
        if tools is None:
            tools = self._tools[profile.name] = responses_tools(profile)
        return tools

    async def _retrieve_items_run(self, thread_id: str, run_id: str) -> RunSnapshot:
        after = await self._items_after(thread_id, run_id.removeprefix(ITEMS_RUN))
        calls = tuple(
            ToolCall(i.call_id, i.name, i.arguments) for i in after if i.type == "function_call"
        )
        answered = {i.call_id for i in after if i.type == "function_call_output"}
        pending = tuple(c for c in calls if c.call_id not in answered)
        decided = {i.approval_request_id for i in after if i.type == "mcp_approval_response"}
        asked = tuple(
            ApprovalRequest(i.id, i.server_label, i.name)
            for i in after
            if i.type == "mcp_approval_request" and i.id not in decided
        )
        if pending or asked:
            return RunSnapshot(
                run_id, RunStatus.REQUIRES_ACTION, tool_calls=pending, approvals=asked
            )
        if any(i.type == "message" and i.role == "assistant" for i in after):
            return RunSnapshot(run_id, RunStatus.COMPLETED)
        return RunSnapshot(run_id, RunStatus.IN_PROGRESS)

    async def _items_after(self, thread_id: str, after: str | None) -> list[ConversationItem]:
        page = self._client.conversations.items.list(
            thread_id, order="asc", limit=_PAGE, after=after or omit
        )
        return [item async for item in page]


def _user_item(message: UserMessage, turn: Turn) -> ResponseInputItemParam:
    """A user message: its text, then its files as `input_file` and `input_image` parts."""
    if not message.attachments:
        return {"type": "message", "role": "user", "content": message.text}
    parts: ResponseInputMessageContentListParam = [{"type": "input_text", "text": message.text}]
    for attachment in message.attachments:
        file = turn.file(message, attachment)
        if file.kind is FileKind.IMAGE:
            parts.append({"type": "input_image", "file_id": file.file_id, "detail": "auto"})
        else:
            parts.append({"type": "input_file", "file_id": file.file_id})
    return {"type": "message", "role": "user", "content": parts}


def _locked(exc: openai.BadRequestError) -> ThreadBusy | None:
    # A response in progress holds its conversation: nothing is added to it until it ends.
    return ThreadBusy(None) if exc.code == "conversation_locked" else None


def _metadata(turn: Turn) -> dict[str, str]:
    """The response's metadata: the worker's tags, the events' metadata and their author.

    Conversation items carry no metadata, so what the Assistants backend puts on each message
    goes on the response that answers them; a batch only holds events whose metadata and
    author are equal. The conversation ID is on the Conversation itself, which keeps the 16
    pairs OpenAI allows for 12 of the event's, 2 of the author and 2 tags.
    """
    run = turn.run_metadata
    return {
        **turn.metadata,
        **author_tags(turn.author),
        "aw_batch_id": run["aw_batch_id"],
        "aw_attempt": run["aw_attempt"],
    }


def _item_text(item: ConversationItem) -> str:
    if item.type != "message":
        return ""
    return "".join(getattr(part, "text", "") for part in item.content)


def _reply(item: ConversationItem) -> ReplyMessage:
    # An items run's message: the SDK's model, dumped as the API sent it, read as a response's.
    assert item.type == "message"
    return read_message(item.model_dump(mode="json"))


def _int_header(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None
