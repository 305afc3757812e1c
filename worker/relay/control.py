"""What a conversation_control.v1 event does when its turn comes in the conversation's order.

Its immediate part, stopping the active run, happens earlier: the runner sees the waiting event
at its next poll (ConversationStore.pending_interrupt). What is left when the control event's
own batch opens is done here, at the API, then recorded with the batch: who answers now, and
whether the thread, its files and the conversation's texts are kept. Every step is safe to
repeat (deleting what is gone is no error), so a new owner after a crash just does it again.
"""

from __future__ import annotations

import functools

import structlog

from worker.backends.base import Backend
from worker.backends.files import Files
from worker.events import ControlAction, ConversationControl
from worker.relay.operations import OpenAIOperation
from worker.relay.retry import RetryPolicy
from worker.store.ports import ConversationStore
from worker.store.records import NO_CHANGE, ConversationChange, ConversationMode, ConversationRow

log = structlog.get_logger("worker.relay.control")


class Steering:
    """Carries out the helpdesk's control events at the API and says what changes in the store.

    takeover and release only change who answers; cancel has done its work by the time its
    batch opens (the run it stops is interrupted while it is polled); close deletes the thread
    or Conversation and the files uploaded for it; erase closes and then has the store forget the
    conversation's texts; update_metadata sets the thread's metadata.
    """

    def __init__(self, store: ConversationStore, files: Files, api_retry: RetryPolicy) -> None:
        self._store = store
        self._files = files
        self._api_retry = api_retry

    async def apply(
        self,
        conversation_id: str,
        conversation: ConversationRow,
        backend: Backend,
        control: ConversationControl,
    ) -> ConversationChange:
        action = control.action
        if action is ControlAction.TAKEOVER:
            return ConversationChange(mode=ConversationMode.HUMAN)
        if action is ControlAction.RELEASE:
            return ConversationChange(mode=ConversationMode.ASSISTANT)
        if action is ControlAction.UPDATE_METADATA:
            await self._update_metadata(conversation_id, conversation, backend, control)
            return NO_CHANGE
        if action in (ControlAction.CLOSE, ControlAction.ERASE):
            await self._close(conversation_id, conversation, backend)
            return ConversationChange(forget_thread=True, erase=action is ControlAction.ERASE)
        return NO_CHANGE

    async def _update_metadata(
        self,
        conversation_id: str,
        conversation: ConversationRow,
        backend: Backend,
        control: ConversationControl,
    ) -> None:
        thread_id = conversation.thread_id
        if thread_id is None:
            # No thread yet: nothing to set. The next message's thread starts without them.
            log.info("metadata_not_synced", reason="no_thread")
            return
        metadata = control.metadata or {}
        await self._api_retry.call(
            OpenAIOperation.UPDATE_METADATA,
            lambda: backend.update_metadata(thread_id, conversation_id, metadata),
        )

    async def _close(
        self, conversation_id: str, conversation: ConversationRow, backend: Backend
    ) -> None:
        thread_id = conversation.thread_id
        if thread_id is not None:
            await self._api_retry.call(
                OpenAIOperation.DELETE_THREAD, lambda: backend.delete_thread(thread_id)
            )
        files = await self._store.conversation_files(conversation_id)
        for file_id in files:
            await self._api_retry.call(
                OpenAIOperation.DELETE_FILE, functools.partial(self._files.delete, file_id)
            )
        log.info("conversation_closed", thread_deleted=thread_id is not None, files=len(files))
