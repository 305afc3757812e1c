"""The stand-in's in-memory store and the locking rules that guard it.

Handlers run on one event loop and never await between checking a rule and
applying the change, so each rule check plus mutation is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from standin.errors import ApiError, bad_request, files_not_found, not_found
from standin.models import (
    Assistant,
    Json,
    Message,
    Run,
    StoredFile,
    Thread,
    VectorStore,
    file_search_store_ids,
)
from standin.response_models import Conversation, ResponseRecord

CONVERSATION_LOCKED = (
    "Another process is currently operating on this conversation. Please retry in a few seconds."
)


@dataclass
class StandInState:
    assistants: dict[str, Assistant] = field(default_factory=dict)
    threads: dict[str, Thread] = field(default_factory=dict)
    # Every run ever created, kept after its thread is deleted for /_standin/runs.
    runs: dict[str, Run] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)
    vector_stores: dict[str, VectorStore] = field(default_factory=dict)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    # Every response ever created, kept after its conversation is deleted.
    responses: dict[str, ResponseRecord] = field(default_factory=dict)

    def clear(self) -> None:
        self.assistants.clear()
        self.threads.clear()
        self.runs.clear()
        self.files.clear()
        self.vector_stores.clear()
        self.conversations.clear()
        self.responses.clear()

    def assistant(self, assistant_id: str, *, auto_create: bool, model: str) -> Assistant:
        assistant = self.assistants.get(assistant_id)
        if assistant is None and auto_create and assistant_id.startswith("asst_"):
            assistant = Assistant(id=assistant_id, model=model, created_at=time.time())
            self.assistants[assistant_id] = assistant
        if assistant is None:
            raise not_found("assistant", assistant_id)
        return assistant

    def thread(self, thread_id: str) -> Thread:
        thread = self.threads.get(thread_id)
        if thread is None:
            raise not_found("thread", thread_id)
        return thread

    def run(self, thread_id: str, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None or run.thread_id != thread_id or thread_id not in self.threads:
            raise not_found("run", run_id)
        return run

    def file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None or stored.deleted:
            # The Files endpoints' own 404 wording, as clients quote it.
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def ensure_files(self, file_ids: Iterable[str]) -> None:
        """Refuse a request that names files the API would not find (unknown or deleted)."""
        missing = [
            file_id
            for file_id in dict.fromkeys(file_ids)
            if file_id not in self.files or self.files[file_id].deleted
        ]
        if missing:
            raise files_not_found(missing)

    def file_name(self, file_id: str) -> str:
        """The filename echo replies show for a file id (deleted files keep theirs)."""
        stored = self.files.get(file_id)
        return stored.filename if stored is not None else file_id

    def vector_store(self, vector_store_id: str) -> VectorStore:
        store = self.vector_stores.get(vector_store_id)
        if store is None:
            raise not_found("vector store", vector_store_id)
        return store

    def ensure_vector_stores(self, vector_store_ids: Iterable[str]) -> None:
        """Refuse a request that names a vector store the API would not find."""
        for vector_store_id in vector_store_ids:
            self.vector_store(vector_store_id)

    def ensure_tool_resources(self, tool_resources: Json) -> None:
        """Refuse ``tool_resources`` naming vector stores the API would not find.

        The code interpreter's ``file_ids`` go unchecked: nothing here reads them.
        """
        self.ensure_vector_stores(file_search_store_ids(tool_resources))

    def detach_file(self, file_id: str) -> None:
        """A deleted File leaves every vector store, as the API stops serving it."""
        for store in self.vector_stores.values():
            store.files.pop(file_id, None)

    def conversation(self, conversation_id: str) -> Conversation:
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            raise not_found("conversation", conversation_id)
        return conversation

    def response(self, response_id: str) -> ResponseRecord:
        response = self.responses.get(response_id)
        if response is None:
            raise ApiError(404, f"Response with id '{response_id}' not found.")
        return response


def active_run(thread: Thread) -> Run | None:
    # The lock guarantees at most one active run, and it is the newest one.
    if thread.runs and thread.runs[-1].active:
        return thread.runs[-1]
    return None


def ensure_can_add_message(thread: Thread) -> None:
    run = active_run(thread)
    if run is not None:
        raise bad_request(f"Can't add messages to {thread.id} while a run {run.id} is active.")


def ensure_can_start_run(thread: Thread) -> None:
    run = active_run(thread)
    if run is not None:
        raise bad_request(f"Thread {thread.id} already has an active run {run.id}.")


def unanswered_user_messages(
    messages: Sequence[Message], new_messages: Sequence[Message] = ()
) -> list[Message]:
    """User messages after the newest assistant message: what the next reply answers."""
    batch: list[Message] = []
    for message in _newest_first(messages, new_messages):
        if message.role == "assistant":
            break
        batch.append(message)
    batch.reverse()
    return batch


def _newest_first(
    messages: Sequence[Message], new_messages: Sequence[Message]
) -> Iterable[Message]:
    yield from reversed(new_messages)
    yield from reversed(messages)


def active_response(conversation: Conversation) -> ResponseRecord | None:
    # As with runs, the lock leaves at most one active response: the newest.
    if conversation.responses and conversation.responses[-1].active:
        return conversation.responses[-1]
    return None


def ensure_conversation_unlocked(conversation: Conversation) -> None:
    if active_response(conversation) is not None:
        raise bad_request(CONVERSATION_LOCKED, code="conversation_locked")
