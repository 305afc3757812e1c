"""The owner's loop for one conversation: batch what is pending, run it, record the outcome.

No broker or SQL here: state goes through the store (typed as ConversationStore), messages out
through the outbox it writes.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from worker import tracing
from worker.backends.base import (
    TRANSIENT_RUN_ERRORS,
    Backend,
    FindsTurnsByItems,
    ListsRunSteps,
    RunRef,
    RunSnapshot,
    RunStatus,
    ToolCall,
    Turn,
)
from worker.backends.files import Files
from worker.crashpoints import CrashPoint, FaultPoint, maybe_crash, maybe_fail
from worker.errors import (
    ApiUnavailable,
    LeaseLost,
    PermanentApiError,
    ReasonCode,
    error_class,
    is_dependency_failure,
    origin,
)
from worker.events import (
    AssistantHandoff,
    AssistantReply,
    Attachment,
    ConversationControl,
    HandoffReason,
    HandoffRequest,
    ReplyMessage,
    RunError,
    ToolCallSummary,
    ToolKind,
    ToolOutcome,
    UserMessage,
    vars_of,
)
from worker.metrics import Metrics
from worker.profiles.model import Profile, Profiles
from worker.relay.activity import Activity, ActivityKind, ActivitySink, NoActivity
from worker.relay.attachments import FileKind, ModelFile, decode, kind_of
from worker.relay.control import Steering
from worker.relay.delivery import Delivery
from worker.relay.operations import OpenAIOperation
from worker.relay.outbound import Failure, dead_letter_outbox, handoff_outbox, reply_outbox
from worker.relay.pacing import Pacer
from worker.relay.retry import RetryPolicy, internal_backoff
from worker.relay.runner import FinishedRun, RunHooks, Runner
from worker.relay.tools import TurnTools
from worker.settings import BackendName, Settings
from worker.store.ports import ConversationStore
from worker.store.records import (
    HAND_TO_HUMAN,
    NO_CHANGE,
    ConversationMode,
    ConversationRow,
    EventStatus,
    Lease,
    NextBatch,
    OpenBatch,
    RunRecord,
    StoredEvent,
    ToolCallRecord,
    ToolCallState,
)

log = structlog.get_logger("worker.relay.conversation")


@dataclass(frozen=True, slots=True)
class _Work:
    """One batch being answered: who owns it, where it runs, what it answers."""

    lease: Lease
    batch: OpenBatch
    conversation: ConversationRow
    runner: Runner
    thread_id: str
    # Made by this process just now: nobody can have sent its run yet.
    fresh: bool

    @property
    def backend(self) -> Backend:
        return self.runner.backend


@dataclass(slots=True)
class _Progress:
    """How far a batch got: an internal failure is reported with the stage it happened in,
    a handoff the model asked for (stored too) goes out when the reply is recorded, and the
    reply reads the batch's tool-call records only if some can exist."""

    stage: FaultPoint = FaultPoint.BATCH_OPEN
    handoff: HandoffRequest | None = None
    # Opened by an earlier owner or attempt, which may have recorded calls.
    resumed: bool = False
    # This process recorded a call for the batch.
    called_tools: bool = False

    def reached(self, stage: FaultPoint) -> None:
        self.stage = stage
        maybe_fail(stage)


class ConversationProcessor:
    """Answers a leased conversation batch by batch, and bounds every way a batch can fail.

    Every step is recorded before the next is taken (thread, files, run ID, outcome), so a new
    owner resumes a batch where the last one stopped instead of answering it twice; the reply
    goes into the outbox in the transaction that settles the batch.

    API refusals and outages dead-letter the batch at once (they are classified); anything
    else is counted on the batch, retried with backoff, and after AW_INTERNAL_ATTEMPTS
    dead-lettered as `internal_error`, so that the conversation's later events go on.
    """

    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        runners: Mapping[str, Runner],
        profiles: Profiles,
        files: Files,
        api_retry: RetryPolicy,
        on_outbox: Callable[[], None],
        metrics: Metrics,
        pacer: Pacer,
        activity: ActivitySink | None = None,
    ) -> None:
        """`pacer` paces the starting steps (with intake); finishing is never held back.
        `activity` hears when runs start, call tools and end (assistant_activity.v1)."""
        self._settings = settings
        self._store = store
        self._runners = runners
        self._profiles = profiles
        self._files = files
        self._api_retry = api_retry
        self._failures = internal_backoff(settings)
        self._on_outbox = on_outbox
        self._metrics = metrics
        self._pacer = pacer
        self._steering = Steering(store, files, api_retry)
        self._activity = activity or NoActivity()

    async def process(self, lease: Lease) -> None:
        """Answers everything pending, batch by batch, then gives the conversation up."""
        with structlog.contextvars.bound_contextvars(conversation_id=lease.conversation_id):
            try:
                await self._debounce(lease.conversation_id)
                async with self._pacer.slot():
                    found = await self._store.next_batch(lease)
                # Finishing a batch opens the next one, or gives the conversation up.
                while found is not None:
                    found = await self._answer(lease, found)
            except LeaseLost:
                log.warning("lease_lost")

    async def _debounce(self, conversation_id: str) -> None:
        """Lets a quiet conversation's first message wait for its companions, so a burst is
        answered by one run: until AW_DEBOUNCE_MS pass without another message, and at most
        AW_DEBOUNCE_MAX_MS after the first. A resumed batch or a control event never waits."""
        quiet_s = self._settings.debounce_ms / 1000
        longest_s = self._settings.debounce_max_ms / 1000
        while quiet_s > 0:
            window = await self._store.pending_window(conversation_id)
            if window is None or window.control:
                return
            wait_s = min(quiet_s - window.newest_age_s, longest_s - window.first_age_s)
            if wait_s <= 0:
                return
            await asyncio.sleep(wait_s)

    async def _answer(self, lease: Lease, found: NextBatch) -> NextBatch | None:
        batch, stored = found.batch, found.events
        progress = _Progress(handoff=batch.handoff, resumed=not found.fresh)
        # The batch continues the trace of its first event, however long ago, and wherever, it
        # was taken in; the others' traces are linked.
        with (
            structlog.contextvars.bound_contextvars(batch_id=str(batch.batch_id)),
            tracing.continued_span(
                "batch", [e.trace_context for e in stored], _batch_attributes(lease, found)
            ),
        ):
            try:
                return await self._answer_batch(lease, found, progress)
            except PermanentApiError as exc:
                failure = Failure(ReasonCode.OPENAI_REJECTED, str(exc))
                return await self._dead_letter(lease, batch, stored, failure)
            except ApiUnavailable as exc:
                failure = Failure(
                    ReasonCode.OPENAI_UNAVAILABLE,
                    str(exc),
                    self._api_retry.attempts,
                    exc.first_failure_at,
                )
                return await self._dead_letter(lease, batch, stored, failure)
            except LeaseLost:
                raise
            except Exception as exc:
                # A server that is down is waited out by whoever holds the delivery.
                if is_dependency_failure(exc):
                    raise
                return await self._internal_failure(lease, found, exc, progress.stage)

    async def _answer_batch(
        self, lease: Lease, found: NextBatch, progress: _Progress
    ) -> NextBatch | None:
        batch, conversation, stored = found.batch, found.conversation, found.events
        progress.reached(FaultPoint.BATCH_OPEN)
        # Each conversation stays on the backend that created its thread.
        runner = self._runners[conversation.backend]
        if stored[0].control is not None:  # a control event is a batch of its own
            return await self._steer(lease, found, runner.backend)
        progress.reached(FaultPoint.THREAD_CREATE)
        thread_id = await self._thread(lease, conversation, runner.backend)
        with structlog.contextvars.bound_contextvars(thread_id=thread_id):
            work = _Work(lease, batch, conversation, runner, thread_id, found.fresh)
            if conversation.mode is ConversationMode.HUMAN:
                return await self._hold(work, stored, progress)
            after = await self._run_batch(work, stored, progress)
        self._observe_latency(stored)
        return after

    async def _steer(self, lease: Lease, found: NextBatch, backend: Backend) -> NextBatch | None:
        """Carries out a control event in its turn, then settles it (it gets no reply)."""
        [event] = found.events
        control = ConversationControl.from_json(json.loads(event.body))
        with structlog.contextvars.bound_contextvars(control=control.action.value):
            change = await self._steering.apply(
                lease.conversation_id, found.conversation, backend, control
            )
            maybe_crash(CrashPoint.AFTER_CONTROL_APPLIED)
            after = await self._store.finish_batch(
                lease,
                found.batch.batch_id,
                event_status=EventStatus.ANSWERED,
                outbox=[],
                change=change,
            )
            log.info("control_applied")
        return after

    async def _hold(
        self, work: _Work, stored: list[StoredEvent], progress: _Progress
    ) -> NextBatch | None:
        """A human has the conversation: its messages go into the thread, for the model's
        context later, and are not answered. Each is added once, however often this repeats."""
        messages = tuple(UserMessage.from_json(json.loads(e.body)) for e in stored)
        progress.reached(FaultPoint.UPLOAD)
        turn = self._turn(work, messages, await self._model_files(work, messages))
        backend, thread_id = work.backend, work.thread_id
        # Only a batch made just now can skip looking: nobody has added its messages yet.
        look_first = not work.fresh

        async def look_then_record() -> None:
            nonlocal look_first
            missing = list(messages)
            if look_first:
                found = await backend.find_recorded(thread_id, turn)
                missing = [m for m in messages if m.event_id not in found]
            look_first = True  # a try whose answer was lost may have added them
            if missing:
                await backend.record_messages(thread_id, turn, missing)

        async with self._pacer.slot():
            await self._api_retry.call(OpenAIOperation.RECORD_MESSAGES, look_then_record)
        progress.reached(FaultPoint.RECORD)
        after = await self._store.finish_batch(
            work.lease,
            work.batch.batch_id,
            event_status=EventStatus.ANSWERED,
            outbox=[],
            last_item_id=await self._watermark(work),
        )
        log.info("messages_held", events=len(messages))
        return after

    async def _internal_failure(
        self, lease: Lease, found: NextBatch, exc: Exception, stage: FaultPoint
    ) -> NextBatch | None:
        """Counts a failure no class covers on the batch; retries it, or dead-letters it."""
        batch = found.batch
        failures, first_at = await self._store.record_batch_failure(lease, batch.batch_id)
        attempts = self._failures.attempts
        log.error(
            "batch_failed",
            stage=str(stage),
            error_class=error_class(exc),
            origin=origin(exc),
            failure=failures,
            attempts=attempts,
        )
        if failures >= attempts:
            failure = Failure(
                ReasonCode.INTERNAL_ERROR,
                f"{error_class(exc)} in stage {stage}, {failures} times",
                failures,
                first_at,
                error_class=f"{error_class(exc)} ({stage})",
            )
            return await self._dead_letter(lease, batch, found.events, failure)
        await asyncio.sleep(self._failures.delay_s(failures))
        # The same open batch, read afresh: a run ID stored before the failure is resumed.
        async with self._pacer.slot():
            return await self._store.next_batch(lease)

    async def _thread(self, lease: Lease, conversation: ConversationRow, backend: Backend) -> str:
        if conversation.thread_id is not None:
            return conversation.thread_id
        profile = self._profile(conversation.profile)
        # An orphan thread from a crash right after this call is harmless: it holds nothing.
        async with self._pacer.slot():
            thread_id = await self._api_retry.call(
                OpenAIOperation.CREATE_THREAD,
                lambda: backend.create_thread(lease.conversation_id, profile),
            )
            await self._store.set_thread(lease, thread_id)
        log.info("thread_created", thread_id=thread_id, backend=backend.name)
        return thread_id

    async def _run_batch(
        self, work: _Work, stored: list[StoredEvent], progress: _Progress
    ) -> NextBatch | None:
        messages = tuple(UserMessage.from_json(json.loads(e.body)) for e in stored)
        progress.reached(FaultPoint.UPLOAD)
        turn = self._turn(work, messages, await self._model_files(work, messages))
        run_id = work.batch.run_id
        while True:
            finished = await self._run_once(work, turn, run_id, progress)
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
        progress.reached(FaultPoint.RECORD)
        return await self._record_reply(work, turn, finished, progress)

    def _turn(
        self,
        work: _Work,
        messages: tuple[UserMessage, ...],
        files: dict[tuple[str, int], ModelFile],
    ) -> Turn:
        # A batch holds one profile (it is part of the batch key): an event's own, else the
        # conversation's.
        profile = self._profile(messages[-1].profile or work.conversation.profile)
        return Turn(
            batch_id=work.batch.batch_id,
            attempt=work.batch.attempt,
            conversation_id=work.lease.conversation_id,
            messages=messages,
            assistant_id=_assistant_for(messages, work.conversation, profile, self._settings),
            add_messages=not work.batch.messages_added,
            profile=profile,
            after_item_id=work.batch.after_item_id,
            files=files,
        )

    def _profile(self, name: str | None) -> Profile:
        """The named profile; the default for conversations from before profiles, and for one
        whose profile has left the file since (logged: the operator removed it)."""
        profiles = self._profiles
        if name is None or name in profiles.profiles:
            return profiles[name or profiles.default]
        log.warning("profile_missing", default=profiles.default)
        return profiles[profiles.default]

    async def _model_files(
        self, work: _Work, messages: tuple[UserMessage, ...]
    ) -> dict[tuple[str, int], ModelFile]:
        """The file of every attachment, recorded before the run that sends them is created.

        An inline attachment is uploaded once: its file ID is stored right after the upload,
        and an upload whose answer was lost, or that a dead worker made before storing it, is
        found among the newest files (same name and bytes) instead of being made again.
        """
        wanted = [(m, a) for m in messages for a in m.attachments]
        if not wanted:
            return {}
        known = await self._store.batch_files([m.event_id for m in messages])
        for message, attachment in wanted:
            key = (message.event_id, attachment.position)
            if key not in known:
                known[key] = await self._model_file(work, message, attachment)
        return known

    async def _model_file(
        self, work: _Work, message: UserMessage, attachment: Attachment
    ) -> ModelFile:
        if attachment.file_id is not None:
            file_id = attachment.file_id
            file = await self._api_retry.call(
                OpenAIOperation.RETRIEVE_FILE, lambda: self._files.describe(file_id)
            )
        else:
            file = await self._upload(work, attachment)
            maybe_crash(CrashPoint.AFTER_UPLOAD)
        await self._store.record_file(
            work.lease, message.event_id, attachment.position, file, uploaded=attachment.inline
        )
        log.info("attachment_ready", file_id=file.file_id, kind=str(file.kind))
        return file

    async def _upload(self, work: _Work, attachment: Attachment) -> ModelFile:
        assert attachment.filename is not None
        filename, content = attachment.filename, decode(attachment)
        kind = _kind(filename)
        purpose = work.backend.purposes[kind]
        # Only a batch this process just opened can be sure nobody uploaded for it yet.
        sent = not work.fresh

        async def look_then_upload() -> ModelFile:
            nonlocal sent
            if sent:
                found = await self._files.find(filename, content, purpose)
                if found is not None:
                    log.info("upload_adopted", file_id=found.file_id)
                    return found
            sent = True
            return await self._files.upload(filename, content, purpose)

        async with self._pacer.slot():
            return await self._api_retry.call(OpenAIOperation.UPLOAD_FILE, look_then_upload)

    async def _run_once(
        self, work: _Work, turn: Turn, run_id: str | None, progress: _Progress
    ) -> FinishedRun:
        with tracing.span("run", {"aw.run.attempt": turn.attempt}) as span:
            finished = await self._start_or_resume_and_finish(work, turn, run_id, progress)
            tracing.set_attributes(span, _run_attributes(finished))
            return finished

    async def _start_or_resume_and_finish(
        self, work: _Work, turn: Turn, run_id: str | None, progress: _Progress
    ) -> FinishedRun:
        started_at: float | None = None
        if run_id is None:
            progress.reached(FaultPoint.RUN_CREATE)
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
            self._tell(work, ActivityKind.RUN_STARTED, run.run_id)
        else:
            log.info("run_resumed", run_id=run_id)
            run = await self._api_retry.call(
                OpenAIOperation.RETRIEVE_RUN,
                lambda: work.backend.retrieve_run(RunRef(work.thread_id, run_id)),
            )

        progress.reached(FaultPoint.POLL)
        polling_from = time.monotonic()
        finished = await work.runner.finish(
            work.thread_id, run, turn, self._hooks(work, turn, progress), started_at=started_at
        )
        self._metrics.run_duration.observe(time.monotonic() - polling_from)
        self._metrics.polls_per_run.observe(finished.polls)
        self._metrics.runs_finished.labels(work.backend.name, finished.snapshot.status.value).inc()
        return finished

    def _hooks(self, work: _Work, turn: Turn, progress: _Progress) -> RunHooks:
        lease = work.lease

        async def remember(new_run_id: str) -> None:
            await self._store.record_run_started(lease, turn.batch_id, new_run_id, turn.attempt)

        async def interrupted() -> bool:
            # A takeover, cancel, close or erase waiting behind this batch stops its run now.
            return await self._store.pending_interrupt(lease.conversation_id) is not None

        async def request_handoff(request: HandoffRequest) -> None:
            # Stored before the tool's output is sent: whoever finishes the run hands off.
            await self._store.record_handoff(lease, turn.batch_id, request)
            progress.handoff = request
            log.info("handoff_requested")

        def tools_running(run_id: str, names: tuple[str, ...]) -> None:
            self._tell(work, ActivityKind.TOOL_RUNNING, run_id, tools=names)

        journal = _Journal(self._store, lease, turn.batch_id, progress)
        tools = TurnTools(
            lease.conversation_id, turn.profile, turn.messages, journal, request_handoff
        )
        return RunHooks(remember, interrupted, tools, tools_running)

    def _tell(
        self,
        work: _Work,
        kind: ActivityKind,
        run_id: str,
        *,
        tools: tuple[str, ...] = (),
        status: str | None = None,
    ) -> None:
        self._activity.emit(
            Activity(work.lease.conversation_id, kind, work.batch.event_ids, run_id, tools, status)
        )

    def _retry_run(self, finished: FinishedRun, turn: Turn) -> bool:
        snapshot = finished.snapshot
        return (
            snapshot.status is RunStatus.FAILED
            and snapshot.error is not None
            and snapshot.error.code in TRANSIENT_RUN_ERRORS
            and turn.attempt < self._settings.run_attempts
        )

    async def _watermark(self, work: _Work) -> str | None:
        backend = work.backend
        if not isinstance(backend, FindsTurnsByItems):
            return None
        return await self._api_retry.call(
            OpenAIOperation.WATERMARK, lambda: backend.watermark(work.thread_id)
        )

    async def _record_reply(
        self, work: _Work, turn: Turn, finished: FinishedRun, progress: _Progress
    ) -> NextBatch | None:
        snapshot, requested = finished.snapshot, progress.handoff
        messages: tuple[ReplyMessage, ...] = snapshot.messages or ()
        if snapshot.messages is None and snapshot.status in (
            RunStatus.COMPLETED,
            RunStatus.INCOMPLETE,
        ):
            messages = await self._api_retry.call(
                OpenAIOperation.LIST_MESSAGES,
                lambda: work.backend.reply_messages(RunRef(work.thread_id, snapshot.run_id)),
            )
        reply = AssistantReply(
            conversation_id=work.lease.conversation_id,
            in_reply_to=work.batch.event_ids,
            status=snapshot.status.value,
            messages=messages,
            thread_id=work.thread_id,
            run_id=snapshot.run_id,
            assistant_id=turn.assistant_id if work.backend.name == BackendName.ASSISTANTS else None,
            backend=work.backend.name,
            usage=snapshot.usage,
            error=snapshot.error,
            sequence=work.conversation.last_reply_sequence + 1,
            metadata=turn.metadata,
            tool_calls=await self._tool_calls(work, turn, finished, progress),
        )
        outbox = [reply_outbox(reply, self._settings.topology)]
        handoff = _handoff(work, turn, snapshot, requested)
        if handoff is not None:
            outbox.append(handoff_outbox(handoff, self._settings.topology))
        after = await self._store.finish_batch(
            work.lease,
            work.batch.batch_id,
            event_status=EventStatus.ANSWERED,
            outbox=outbox,
            ended=_record(finished),
            last_item_id=snapshot.last_item_id or await self._watermark(work),
            # The model handed off: a human answers from the next message on.
            change=NO_CHANGE if requested is None else HAND_TO_HUMAN,
        )
        maybe_crash(CrashPoint.AFTER_REPLY_RECORDED)
        self._on_outbox()
        self._tell(work, ActivityKind.RUN_ENDED, snapshot.run_id, status=snapshot.status.value)
        log.info(
            "reply_recorded",
            run_id=snapshot.run_id,
            status=snapshot.status.value,
            reply_event_id=reply.event_id,
            polls=finished.polls,
        )
        return after

    async def _tool_calls(
        self, work: _Work, turn: Turn, finished: FinishedRun, progress: _Progress
    ) -> tuple[ToolCallSummary, ...]:
        """What the run called: the worker's calls from their records (every round and
        attempt of the batch), then the API's own, as the run showed them."""
        functions: tuple[ToolCallSummary, ...] = ()
        # Most runs call no tool: a batch opened here whose runs called none has no records.
        if progress.called_tools or progress.resumed:
            records = await self._store.batch_tool_calls(work.batch.batch_id)
            functions = tuple(_summary(record, turn.profile) for record in records)
        hosted = finished.hosted_calls
        backend = work.backend
        if isinstance(backend, ListsRunSteps) and _may_use_hosted_tools(turn.profile):
            run = RunRef(work.thread_id, finished.snapshot.run_id)
            hosted = await self._api_retry.call(
                OpenAIOperation.LIST_RUN_STEPS, lambda: backend.hosted_calls(run)
            )
        return functions + hosted

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
        if stored[0].control is None:  # a control event is no customer left unanswered
            handoff = AssistantHandoff(
                batch_id=batch.batch_id,
                conversation_id=lease.conversation_id,
                in_reply_to=batch.event_ids,
                reason=HandoffReason.DEAD_LETTERED,
                detail=f"{failure.reason}: {failure.error}",
                thread_id=None,
                run_id=batch.run_id,
                metadata=_metadata_of(stored),
            )
            outbox.append(handoff_outbox(handoff, topology))
        after = await self._store.finish_batch(
            lease, batch.batch_id, event_status=EventStatus.DEAD_LETTERED, outbox=outbox
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


def _batch_attributes(lease: Lease, found: NextBatch) -> dict[str, object]:
    batch = found.batch
    return {
        "aw.conversation.id": lease.conversation_id,
        "aw.batch.id": str(batch.batch_id),
        "aw.batch.events": len(batch.event_ids),
        "aw.batch.attempt": batch.attempt,
        # Opened by an earlier owner or attempt: resumed, perhaps in another process.
        "aw.batch.resumed": not found.fresh,
    }


def _run_attributes(finished: FinishedRun) -> dict[str, object]:
    snapshot = finished.snapshot
    usage = snapshot.usage
    return {
        "aw.run.id": snapshot.run_id,
        "aw.run.status": snapshot.status.value,
        "aw.run.polls": finished.polls,
        "aw.run.tool_calls": finished.function_calls + len(finished.hosted_calls),
        "gen_ai.response.id": snapshot.run_id,
        "gen_ai.usage.input_tokens": None if usage is None else usage.prompt_tokens,
        "gen_ai.usage.output_tokens": None if usage is None else usage.completion_tokens,
    }


def _handoff(
    work: _Work, turn: Turn, snapshot: RunSnapshot, requested: HandoffRequest | None
) -> AssistantHandoff | None:
    """The batch's handoff, if it needs one: the model asked, or the run gave no answer (the
    reply says it failed; the handoff asks a human to answer instead)."""
    if requested is not None:
        reason, detail = HandoffReason.MODEL_REQUESTED, requested.reason
    elif _unanswered(snapshot.status, snapshot.error):
        reason, detail = HandoffReason.RUN_FAILED, _run_failure(snapshot.status, snapshot.error)
    else:
        return None
    return AssistantHandoff(
        batch_id=work.batch.batch_id,
        conversation_id=work.lease.conversation_id,
        in_reply_to=work.batch.event_ids,
        reason=reason,
        detail=detail,
        thread_id=work.thread_id,
        run_id=snapshot.run_id,
        metadata=turn.metadata,
        summary=None if requested is None else requested.summary,
    )


_OUTCOMES = {
    ToolCallState.OK: ToolOutcome.OK,
    ToolCallState.ERROR: ToolOutcome.ERROR,
    ToolCallState.UNKNOWN: ToolOutcome.UNKNOWN,
    # Not ended: the run ended without taking its output (cancelled, say).
    ToolCallState.STARTED: ToolOutcome.UNKNOWN,
}


def _summary(record: ToolCallRecord, profile: Profile) -> ToolCallSummary:
    tool = profile.function(record.name)
    return ToolCallSummary(
        ToolKind.FUNCTION,
        record.name,
        _OUTCOMES[record.state],
        record.duration_ms,
        record.arguments if tool is not None and tool.show_arguments else None,
    )


def _may_use_hosted_tools(profile: Profile) -> bool:
    """Whether an Assistants run can have called file search or the code interpreter: the
    profile declares one, or the assistant object's tools (unknown here) apply."""
    hosted = profile.hosted
    declared = hosted.file_search is not None or hosted.code_interpreter
    return declared or not profile.overrides_assistant


def _unanswered(status: RunStatus, error: RunError | None) -> bool:
    """A run that gave the customer nothing: failed, expired, or stopped at its deadline."""
    if status in (RunStatus.FAILED, RunStatus.EXPIRED):
        return True
    return status is RunStatus.CANCELLED and error is not None and error.code == "deadline_exceeded"


def _run_failure(status: RunStatus, error: RunError | None) -> str:
    return f"{status}: {error.code}: {error.message}" if error else str(status)


def _metadata_of(stored: list[StoredEvent]) -> dict[str, str]:
    """The events' metadata, for routing the handoff; none where a body cannot be read."""
    try:
        return dict(UserMessage.from_json(json.loads(stored[-1].body)).metadata)
    except (ValueError, KeyError, TypeError):
        return {}


def _kind(filename: str) -> FileKind:
    kind = kind_of(filename)
    assert kind is not None  # intake refuses inline files of other types
    return kind


def _record(finished: FinishedRun) -> RunRecord:
    s = finished.snapshot
    return RunRecord(
        run_id=s.run_id,
        status=s.status,
        polls=finished.polls,
        usage=None if s.usage is None else vars_of(s.usage),
        error=None if s.error is None else vars_of(s.error),
    )


def _assistant_for(
    messages: tuple[UserMessage, ...],
    conversation: ConversationRow,
    profile: Profile,
    settings: Settings,
) -> str:
    """The newest per-event override wins; then, for an event naming another profile than the
    conversation's, that profile's assistant; then the conversation's (chosen at first contact
    with its profile's), then the configured default."""
    for message in reversed(messages):
        if message.assistant_id:
            return message.assistant_id
    if messages[-1].profile not in (None, conversation.profile) and profile.assistant_id:
        return profile.assistant_id
    return conversation.assistant_id or profile.assistant_id or settings.assistant_id


@dataclass(frozen=True, slots=True)
class _Journal:
    """The batch's tool calls, recorded through the store under the owner's lease."""

    store: ConversationStore
    lease: Lease
    batch_id: uuid.UUID
    progress: _Progress

    async def begin(self, call: ToolCall) -> ToolCallRecord:
        self.progress.called_tools = True
        return await self.store.begin_tool_call(
            self.lease, self.batch_id, call.call_id, call.name, call.arguments
        )

    async def end(
        self, call_id: str, state: ToolCallState, output: str, duration_ms: int | None
    ) -> None:
        await self.store.end_tool_call(
            self.lease, self.batch_id, call_id, state, output, duration_ms
        )
