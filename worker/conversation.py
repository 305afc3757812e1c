"""The owner's loop for one conversation: batch what is pending, run it, record the outcome.

No broker or SQL here: state goes through Store, messages out through the outbox it writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from worker.backends.base import TRANSIENT_RUN_ERRORS, Backend, RunStatus, Turn
from worker.crashpoints import CrashPoint, maybe_crash
from worker.errors import ApiUnavailable, LeaseLost, PermanentApiError, ReasonCode
from worker.events import AssistantReply, ReplyMessage, UserMessage, vars_of
from worker.metrics import Metrics
from worker.outbound import Delivery, Failure, dead_letter_outbox, reply_outbox
from worker.pacing import Pacer
from worker.retry import RetryPolicy
from worker.runner import FinishedRun, Runner
from worker.settings import Settings
from worker.store import (
    ConversationRow,
    Lease,
    NextBatch,
    OpenBatch,
    RunRecord,
    Store,
    StoredEvent,
)

log = structlog.get_logger("worker.conversation")


@dataclass(frozen=True, slots=True)
class _Work:
    """One batch being answered: who owns it, where it runs, what it answers."""

    lease: Lease
    batch: OpenBatch
    runner: Runner
    thread_id: str
    # Made by this process just now: nobody can have sent its run yet.
    fresh: bool

    @property
    def backend(self) -> Backend:
        return self.runner.backend


class ConversationProcessor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runners: Mapping[str, Runner],
        api: RetryPolicy,
        on_outbox: Callable[[], None],
        metrics: Metrics,
        pacer: Pacer,
    ) -> None:
        """`pacer` paces the starting steps (with intake); finishing is never held back."""
        self._settings = settings
        self._store = store
        self._runners = runners
        self._api = api
        self._on_outbox = on_outbox
        self._metrics = metrics
        self._pacer = pacer

    async def process(self, lease: Lease) -> None:
        """Answers everything pending, batch by batch, then gives the conversation up."""
        with structlog.contextvars.bound_contextvars(conversation_id=lease.conversation_id):
            try:
                async with self._pacer.slot():
                    found = await self._store.next_batch(lease)
                # Finishing a batch opens the next one, or gives the conversation up.
                while found is not None:
                    found = await self._answer(lease, found)
            except LeaseLost:
                log.warning("lease_lost")

    async def _answer(self, lease: Lease, found: NextBatch) -> NextBatch | None:
        batch, conversation, stored = found.batch, found.conversation, found.events
        with structlog.contextvars.bound_contextvars(batch_id=str(batch.batch_id)):
            try:
                # Each conversation stays on the backend that created its thread.
                runner = self._runners[conversation.backend]
                thread_id = await self._thread(lease, conversation, runner.backend)
                with structlog.contextvars.bound_contextvars(thread_id=thread_id):
                    work = _Work(lease, batch, runner, thread_id, found.fresh)
                    after = await self._run_batch(work, conversation, stored)
                self._observe_latency(stored)
                return after
            except PermanentApiError as exc:
                failure = Failure(ReasonCode.OPENAI_REJECTED, str(exc))
                return await self._dead_letter(lease, batch, stored, failure)
            except ApiUnavailable as exc:
                failure = Failure(
                    ReasonCode.OPENAI_UNAVAILABLE,
                    str(exc),
                    self._api.attempts,
                    exc.first_failure_at,
                )
                return await self._dead_letter(lease, batch, stored, failure)

    async def _thread(self, lease: Lease, conversation: ConversationRow, backend: Backend) -> str:
        if conversation.thread_id is not None:
            return conversation.thread_id
        # An orphan thread from a crash right after this call is harmless: it holds nothing.
        async with self._pacer.slot():
            thread_id = await self._api.call(
                "create_thread", lambda: backend.create_thread(lease.conversation_id)
            )
            await self._store.set_thread(lease, thread_id)
        log.info("thread_created", thread_id=thread_id, backend=backend.name)
        return thread_id

    async def _run_batch(
        self, work: _Work, conversation: ConversationRow, stored: list[StoredEvent]
    ) -> NextBatch | None:
        messages = tuple(UserMessage.from_json(json.loads(e.body)) for e in stored)
        turn = Turn(
            batch_id=work.batch.batch_id,
            attempt=work.batch.attempt,
            conversation_id=work.lease.conversation_id,
            messages=messages,
            assistant_id=_assistant_for(messages, conversation.assistant_id, self._settings),
            add_messages=not work.batch.messages_added,
            after_item_id=work.batch.after_item_id,
        )
        run_id = work.batch.run_id
        while True:
            finished = await self._run_once(work, turn, run_id)
            if not self._retry_run(finished, turn):
                break
            log.warning("run_retry", run_id=finished.snapshot.run_id, attempt=turn.attempt)
            after_item_id = await self._watermark(work)
            await self._store.record_run_retry(
                work.lease, work.batch.batch_id, _record(finished), after_item_id
            )
            turn = replace(
                turn, attempt=turn.attempt + 1, add_messages=False, after_item_id=after_item_id
            )
            work = replace(work, fresh=True)  # this process is the first to try the new attempt
            run_id = None
        return await self._record_reply(work, turn, finished)

    async def _run_once(self, work: _Work, turn: Turn, run_id: str | None) -> FinishedRun:
        started_at: float | None = None
        if run_id is None:
            maybe_crash(CrashPoint.BEFORE_RUN_START)
            # Paced inside: waiting out someone else's run holds nothing back.
            started = await work.runner.start(work.thread_id, turn, first_try=work.fresh)
            run = started.run
            started_at = None if started.adopted else time.monotonic()
            maybe_crash(CrashPoint.AFTER_RUN_CREATED)
            await self._store.record_run_started(
                work.lease, turn.batch_id, run.run_id, turn.attempt
            )
            log.info("run_started", run_id=run.run_id, events=len(turn.messages))
        else:
            log.info("run_resumed", run_id=run_id)
            run = await self._api.call(
                "retrieve_run", lambda: work.backend.retrieve_run(work.thread_id, run_id)
            )

        async def remember(new_run_id: str) -> None:
            await self._store.record_run_started(
                work.lease, turn.batch_id, new_run_id, turn.attempt
            )

        polling_from = time.monotonic()
        finished = await work.runner.finish(
            work.thread_id, run, turn, remember, started_at=started_at
        )
        self._metrics.run_duration.observe(time.monotonic() - polling_from)
        self._metrics.polls_per_run.observe(finished.polls)
        self._metrics.runs_finished.labels(work.backend.name, finished.snapshot.status.value).inc()
        return finished

    def _retry_run(self, finished: FinishedRun, turn: Turn) -> bool:
        snapshot = finished.snapshot
        return (
            snapshot.status is RunStatus.FAILED
            and snapshot.error is not None
            and snapshot.error.code in TRANSIENT_RUN_ERRORS
            and turn.attempt < self._settings.run_attempts
        )

    async def _watermark(self, work: _Work) -> str | None:
        return await self._api.call("watermark", lambda: work.backend.watermark(work.thread_id))

    async def _record_reply(
        self, work: _Work, turn: Turn, finished: FinishedRun
    ) -> NextBatch | None:
        snapshot = finished.snapshot
        messages: tuple[ReplyMessage, ...] = snapshot.messages or ()
        if snapshot.messages is None and snapshot.status in (
            RunStatus.COMPLETED,
            RunStatus.INCOMPLETE,
        ):
            messages = await self._api.call(
                "list_messages",
                lambda: work.backend.reply_messages(work.thread_id, snapshot.run_id),
            )
        reply = AssistantReply(
            conversation_id=work.lease.conversation_id,
            in_reply_to=work.batch.event_ids,
            status=snapshot.status.value,
            messages=messages,
            thread_id=work.thread_id,
            run_id=snapshot.run_id,
            assistant_id=turn.assistant_id if work.backend.name == "assistants" else None,
            backend=work.backend.name,
            usage=snapshot.usage,
            error=snapshot.error,
        )
        after = await self._store.finish_batch(
            work.lease,
            work.batch.batch_id,
            event_status="answered",
            outbox=[reply_outbox(reply, self._settings.topology)],
            ended=_record(finished),
            last_item_id=snapshot.last_item_id or await self._watermark(work),
        )
        maybe_crash(CrashPoint.AFTER_REPLY_RECORDED)
        self._on_outbox()
        log.info(
            "reply_recorded",
            run_id=snapshot.run_id,
            status=snapshot.status.value,
            reply_event_id=reply.event_id,
            polls=finished.polls,
        )
        return after

    async def _dead_letter(
        self, lease: Lease, batch: OpenBatch, stored: list[StoredEvent], failure: Failure
    ) -> NextBatch | None:
        topology = self._settings.topology
        outbox = [
            dead_letter_outbox(
                Delivery(e.body, e.headers, e.event_id, topology.inbound_exchange, e.routing_key),
                failure,
                topology,
                event_id=e.event_id,
                conversation_id=lease.conversation_id,
            )
            for e in stored
        ]
        after = await self._store.finish_batch(
            lease, batch.batch_id, event_status="dead_lettered", outbox=outbox
        )
        self._on_outbox()
        self._metrics.events_dead_lettered.labels(str(failure.reason)).inc(len(stored))
        log.error(
            "batch_dead_lettered",
            reason=str(failure.reason),
            error=failure.error,
            events=list(batch.event_ids),
        )
        return after

    def _observe_latency(self, stored: list[StoredEvent]) -> None:
        now = datetime.now(UTC)
        for event in stored:
            self._metrics.reply_latency.observe((now - event.received_at).total_seconds())


def _record(finished: FinishedRun) -> RunRecord:
    s = finished.snapshot
    return RunRecord(
        run_id=s.run_id,
        status=s.status.value,
        polls=finished.polls,
        usage=None if s.usage is None else vars_of(s.usage),
        error=None if s.error is None else vars_of(s.error),
    )


def _assistant_for(
    messages: tuple[UserMessage, ...], stored: str | None, settings: Settings
) -> str:
    """The newest per-event override wins, then the conversation's, then the configured default."""
    for message in reversed(messages):
        if message.assistant_id:
            return message.assistant_id
    return stored or settings.assistant_id
