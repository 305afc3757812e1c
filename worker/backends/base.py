"""The small interface both model backends implement, and the values that cross it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from openai.types import FilePurpose

from worker.events import (
    Attachment,
    Author,
    ReplyMessage,
    RunError,
    ToolCallSummary,
    Usage,
    UserMessage,
)
from worker.profiles.model import Profile
from worker.relay.attachments import FileKind, ModelFile


class RunStatus(StrEnum):
    """A run's (or background response's) status, in the Assistants API's words."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    REQUIRES_ACTION = "requires_action"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.INCOMPLETE,
        RunStatus.EXPIRED,
    }
)

# Run failures a fresh run can plausibly get past.
TRANSIENT_RUN_ERRORS = frozenset({"server_error", "rate_limit_exceeded"})


@dataclass(frozen=True, slots=True)
class Turn:
    """What one run answers: a batch of user messages, in arrival order."""

    batch_id: uuid.UUID
    attempt: int
    conversation_id: str
    messages: tuple[UserMessage, ...]
    assistant_id: str
    add_messages: bool
    # What answers: model, instructions, tools and options (a batch has one profile).
    profile: Profile
    # The thread's newest item before this turn (Responses); where to look for its effects.
    after_item_id: str | None = None
    # The files of the messages' attachments, recorded before the run, by (event, position).
    files: Mapping[tuple[str, int], ModelFile] = field(default_factory=dict)

    def file(self, message: UserMessage, attachment: Attachment) -> ModelFile:
        return self.files[(message.event_id, attachment.position)]

    @property
    def metadata(self) -> dict[str, str]:
        """The events' metadata: a batch only holds events whose metadata are equal."""
        return dict(self.messages[-1].metadata)

    @property
    def author(self) -> Author | None:
        return self.messages[-1].author

    @property
    def instructions(self) -> str | None:
        extra = [m.instructions for m in self.messages if m.instructions]
        return "\n\n".join(extra) if extra else None

    @property
    def run_metadata(self) -> dict[str, str]:
        return {
            "aw_batch_id": str(self.batch_id),
            "aw_attempt": str(self.attempt),
            "aw_conversation_id": self.conversation_id[:512],
        }


def thread_metadata(
    conversation_id: str, metadata: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A thread's (or Conversation's) metadata: the helpdesk's pairs and the worker's own tag.

    The tag comes last so no pair of the helpdesk's can overwrite it (events refuse `aw_` keys
    anyway); it is how an operator finds the conversation a thread belongs to.
    """
    return {**(metadata or {}), "aw_conversation_id": conversation_id[:512]}


def author_tags(author: Author | None) -> dict[str, str]:
    """The author as metadata, within OpenAI's 512-character values."""
    if author is None:
        return {}
    tags = {"aw_author_id": author.id[:512]}
    if author.name:
        tags["aw_author_name"] = author.name[:512]
    return tags


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for, with its arguments as the JSON text it sent."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What the worker answers a tool call with."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """The model wants to call a remote MCP tool that needs approval (Responses)."""

    request_id: str
    server_label: str
    name: str


@dataclass(frozen=True, slots=True)
class ApprovalAnswer:
    """The worker's answer to an ApprovalRequest, by the profile's policy."""

    request_id: str
    approve: bool


@dataclass(frozen=True, slots=True)
class RunRef:
    """Where a run is: its thread (or Conversation) and its ID in there."""

    thread_id: str
    run_id: str


@dataclass(frozen=True, slots=True)
class ToolSubmission:
    """The outputs of a run's tool calls, for the turn the run answers.

    Assistants hand them to the run itself; Responses send them as the input of a follow-up
    response, and find one sent earlier among the turn's items.
    """

    run: RunRef
    turn: Turn
    outputs: tuple[ToolOutput, ...]
    approvals: tuple[ApprovalAnswer, ...] = ()


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run as one request saw it: both backends' answers in the relay's terms."""

    run_id: str
    status: RunStatus
    poll_after_ms: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    # MCP calls waiting for approval (Responses): requires_action too.
    approvals: tuple[ApprovalRequest, ...] = ()
    error: RunError | None = None
    usage: Usage | None = None
    # Filled when the status answer already carried the reply (Responses), saving a request.
    messages: tuple[ReplyMessage, ...] | None = None
    last_item_id: str | None = None
    # The API's own tools this answer shows it ran (Responses; Assistants: ListsRunSteps).
    hosted_calls: tuple[ToolCallSummary, ...] = ()


class Backend(Protocol):
    """A model API that keeps a conversation and answers it in runs, one at a time.

    Methods make exactly one API request each (record_messages on Assistants: one per message,
    the API takes no more) and raise the worker's ApiErrors, translated from the SDK's at this
    boundary (worker/backends/sdk_errors.py); retrying them is the caller's job
    (worker.relay.retry).
    """

    name: str
    # The Files API purpose under which this backend's model reads a file of each kind.
    purposes: Mapping[FileKind, FilePurpose]

    async def create_thread(self, conversation_id: str, profile: Profile) -> str:
        """A new thread (Conversation) for the conversation, tagged with
        thread_metadata(conversation_id, profile.metadata): the profile's metadata until the
        helpdesk sets its own. On Assistants it also carries the profile's vector stores."""

    async def find_run(self, thread_id: str, turn: Turn) -> str | None:
        """The run an earlier attempt of this turn already created, if the POST got through."""

    async def start_run(self, thread_id: str, turn: Turn) -> RunSnapshot:
        """Adds the turn's messages (if asked) and starts a run. Raises ThreadBusy if locked."""

    async def retrieve_run(self, run: RunRef) -> RunSnapshot: ...

    async def find_tool_outputs_run(self, submission: ToolSubmission) -> str | None:
        """The run that took these outputs already, if an earlier submit got through."""

    async def submit_tool_outputs(self, submission: ToolSubmission) -> RunSnapshot:
        """Hands the outputs to the run (or to a new run that takes them). May raise ThreadBusy."""

    async def cancel_run(self, run: RunRef) -> None:
        """Asks for the run to be cancelled; raises RunAlreadyEnded if it has ended already."""

    async def reply_messages(self, run: RunRef) -> tuple[ReplyMessage, ...]: ...

    async def delete_thread(self, thread_id: str) -> None:
        """Deletes the thread (Assistants) or Conversation (Responses), with any active run.

        One already gone (404) counts as deleted, so a retried or repeated erase succeeds.
        """

    async def update_metadata(
        self, thread_id: str, conversation_id: str, metadata: Mapping[str, str]
    ) -> None:
        """Sets the thread's / Conversation's metadata to `metadata` plus the worker's own tag
        aw_conversation_id (conversation_id[:512]), as create_thread sets it.

        The whole set is sent, so pairs left out of `metadata` are removed.
        """

    async def find_recorded(self, thread_id: str, turn: Turn) -> frozenset[str]:
        """The event IDs of the turn's messages that an earlier attempt already added to the
        thread without a run (record_messages), so none is added twice.

        Assistants tag each message with its event and find any subset; Responses add a turn's
        messages in one request and find all of them or none.
        """

    async def record_messages(
        self, thread_id: str, turn: Turn, messages: Sequence[UserMessage]
    ) -> None:
        """Adds `messages` (a subset of turn.messages, in order) to the thread WITHOUT starting a
        run: while a human agent has the conversation, the customer's messages become context for
        later, not something to answer.

        Each message carries what a run's input would (text, files, and on Assistants its
        metadata). Raises ThreadBusy while a run holds the thread; no messages, no request.
        """


@runtime_checkable
class ListsRunSteps(Protocol):
    """A backend whose runs report the API's own tool calls as run steps (Assistants)."""

    async def hosted_calls(self, run: RunRef) -> tuple[ToolCallSummary, ...]:
        """The file search and code interpreter calls of the run's steps, oldest first."""


@runtime_checkable
class FindsTurnsByItems(Protocol):
    """A backend that finds a turn's effects after the thread's newest item before the turn.

    Responses does (its creates cannot be looked up by metadata); Assistants finds runs by
    their metadata and has no use for it.
    """

    async def watermark(self, thread_id: str) -> str | None:
        """The thread's newest item ID (None for an empty thread)."""
