"""Drives one run on a backend: start it exactly once, poll it to the end, serve its tools."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from worker.backends.base import Backend, RunRef, RunSnapshot, RunStatus, ToolSubmission, Turn
from worker.backends.responses import ITEMS_RUN
from worker.crashpoints import CrashPoint, maybe_crash
from worker.errors import RunAlreadyEnded, ThreadBusy
from worker.events import RunError, ToolCallSummary
from worker.relay.approvals import answer_approvals
from worker.relay.operations import OpenAIOperation
from worker.relay.pacing import Pacer
from worker.relay.polling import PollPlan, PollSchedule, RunDurations
from worker.relay.retry import RetryPolicy
from worker.relay.tools import TurnTools, serve_calls

log = structlog.get_logger("worker.relay.runner")

_STOPPED = RunError("cancelled", "the helpdesk stopped the run (conversation_control.v1)")

_RUNNING = (RunStatus.QUEUED, RunStatus.IN_PROGRESS)

# How often a run in progress asks whether the helpdesk wants it stopped: a Postgres query,
# so not before every poll (short runs poll every 100 ms, and most end before the first ask).
# A run that ends first is still held back: finishing its batch reads the interrupts again.
INTERRUPT_CHECK_S = 0.5


class _Look(enum.Enum):
    """What a wait between looks at a run came to."""

    NOT_YET = enum.auto()  # nothing to look at yet: ask the interrupts, wait again
    POLL = enum.auto()  # a look on the schedule, or the sweep: it may find the run going on
    ENDED = enum.auto()  # its ending is recorded: the look finishes it


class Endings(Protocol):
    """Where a run's owner hears that a response ended (worker/relay/endings.py)."""

    # Looked at anyway this long after the last look: the webhook may never come.
    sweep_s: float

    async def wait(self, response_id: str, timeout_s: float) -> bool: ...

    def done(self, response_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A run this attempt is answered by: created now, or adopted from an earlier attempt."""

    run: RunSnapshot
    adopted: bool  # an earlier attempt, perhaps another process's, created it


@dataclass(frozen=True, slots=True)
class RunHooks:
    """What the conversation lends a run while it is polled."""

    # A tool round made a new run (Responses): its ID is stored before it is polled.
    on_new_run: Callable[[str], Awaitable[None]]
    # Asked between polls (every INTERRUPT_CHECK_S): the helpdesk wants the run stopped.
    interrupted: Callable[[], Awaitable[bool]]
    # What the run's tool calls are served with: the profile, the turn, the journal.
    tools: TurnTools
    # The run asks for these tools now (a "typing..." hint; must not block).
    tools_running: Callable[[str, tuple[str, ...]], None]


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A run that reached a terminal status (or was cancelled at its deadline)."""

    snapshot: RunSnapshot
    polls: int
    # The API's own tool calls seen on the way (every tool round's response, on Responses).
    hosted_calls: tuple[ToolCallSummary, ...] = ()
    # The function calls this process served for it, every tool round (its run span says so).
    function_calls: int = 0


class Runner:
    """Drives the runs of one backend, each exactly once, from start to a terminal status.

    A creating call looks for the effect of an earlier attempt before it creates (a lost answer
    must not become a second run). Polls follow what this backend's runs have taken so far, and
    wait their turn behind work that answers customers (the pacer). Tool calls are served from
    the profile (worker/relay/tools.py), and a run past its deadline is cancelled.
    """

    def __init__(
        self,
        backend: Backend,
        api_retry: RetryPolicy,
        schedule: PollSchedule,
        deadline_s: float,
        pacer: Pacer,
        endings: Endings | None = None,
    ) -> None:
        """With `endings` (webhooks, Responses) a run is looked at when its webhook says it
        ended, or at the slow sweep; without, polled on the schedule."""
        self.backend = backend
        self._pacer = pacer
        self._api_retry = api_retry
        self._schedule = schedule
        self._deadline_s = deadline_s
        self._endings = endings
        # One backend's runs share a model and so, roughly, a length.
        self._durations = RunDurations()

    async def start(self, thread_id: str, turn: Turn, *, first_try: bool) -> StartedRun:
        """Starts the turn's run, or finds the one an earlier attempt already started.

        Only a `first_try` (nobody has sent this turn yet) skips looking for one first,
        saving a request on the common path.
        """
        return await self._create_once(
            OpenAIOperation.START_RUN,
            thread_id,
            find=lambda: self.backend.find_run(thread_id, turn),
            create=lambda: self.backend.start_run(thread_id, turn),
            first_try=first_try,
        )

    async def _create_once(
        self,
        what: OpenAIOperation,
        thread_id: str,
        *,
        find: Callable[[], Awaitable[str | None]],
        create: Callable[[], Awaitable[RunSnapshot]],
        first_try: bool,
    ) -> StartedRun:
        """Creates a run exactly once, though a POST whose answer was lost may have done so.

        The API takes no idempotency key, so every attempt but a first try looks for the run
        an earlier one created and adopts it. Each attempt is paced; waiting out someone
        else's run is not.
        """
        sent = not first_try
        looked_in_vain = False

        async def look_then_create() -> StartedRun:
            nonlocal sent, looked_in_vain
            if sent:
                existing = await find()
                if existing is not None:
                    log.info("run_adopted", run_id=existing)
                    looked_in_vain = False
                    run = RunRef(thread_id, existing)
                    return StartedRun(await self.backend.retrieve_run(run), True)
                looked_in_vain = True
            sent = True
            return StartedRun(await create(), False)

        while True:
            try:
                async with self._pacer.slot():
                    started = await self._api_retry.call(what, look_then_create)
                    if not looked_in_vain:
                        return started
                    keep = functools.partial(self._keep_earlier, thread_id, find, started.run)
                    return await self._api_retry.call(what, keep)
            except ThreadBusy as busy:
                # Someone else's run holds the thread: wait it out rather than fail ours.
                log.warning("thread_busy", thread_id=thread_id, active_run_id=busy.active_run_id)
                await self._wait_out(thread_id, busy.active_run_id)

    async def _keep_earlier(
        self, thread_id: str, find: Callable[[], Awaitable[str | None]], created: RunSnapshot
    ) -> StartedRun:
        """After a look found nothing and the create went through: was the look too early?

        A background response shows nothing in its conversation until it ends, so the look
        misses an earlier attempt's response that is still running. Had it still been running
        at the create, the conversation's lock would have refused it; so if a turn shows now
        while the new run has not ended, the earlier one ended in between: it is kept, and the
        new one cancelled before it adds anything. Safe to repeat: cancelling is idempotent.
        """
        found = await find()
        if found is None or found == created.run_id:
            return StartedRun(created, False)
        ours = await self.backend.retrieve_run(RunRef(thread_id, created.run_id))
        # Cancelled can only be this step's own doing, by a try whose answer was lost.
        if ours.status not in _RUNNING and ours.status is not RunStatus.CANCELLED:
            return StartedRun(ours, False)  # ended already: what shows may be its own turn
        earlier = await self.backend.retrieve_run(RunRef(thread_id, found))
        if earlier.status in _RUNNING:
            return StartedRun(ours, False)  # what shows is its own input, shown early
        if await cancel_unless_ended(self.backend, RunRef(thread_id, created.run_id)):
            log.warning("duplicate_run_cancelled", run_id=created.run_id, kept_run_id=found)
        else:
            # It ended in the moment since: its messages went into the thread a second time.
            log.error("duplicate_run_ended_first", run_id=created.run_id, kept_run_id=found)
        return StartedRun(earlier, True)

    async def finish(
        self,
        thread_id: str,
        run: RunSnapshot,
        turn: Turn,
        hooks: RunHooks,
        *,
        started_at: float | None,
    ) -> FinishedRun:
        """Polls until the run ends, the deadline passes or the helpdesk interrupts it (both
        cancel it), serving its tool calls on the way.

        `started_at` is when this process created the run (monotonic); None for a run it
        resumed or adopted from an earlier attempt, whose age is unknown and whose tool
        outputs may have been sent already.
        """
        waited: set[str] = set()
        try:
            return await self._drive(thread_id, run, turn, hooks, started_at, waited)
        finally:
            if self._endings is not None:
                for run_id in waited:
                    self._endings.done(run_id)

    async def _drive(
        self,
        thread_id: str,
        run: RunSnapshot,
        turn: Turn,
        hooks: RunHooks,
        started_at: float | None,
        waited: set[str],
    ) -> FinishedRun:
        deadline = time.monotonic() + self._deadline_s
        plan = self._plan(started_at)
        polls = 0
        ours = started_at is not None
        hosted: list[ToolCallSummary] = []
        calls = 0
        looked_at = asked_at = time.monotonic()
        # The webhook said it ended, yet the API shows it going on: poll it from then on.
        ending_heard = False
        while not run.status.is_terminal:
            if run.status is RunStatus.REQUIRES_ACTION:
                hosted.extend(run.hosted_calls)
                calls += len(run.tool_calls)
                run = await self._tool_round(thread_id, run, turn, hooks, hosted, first_try=ours)
                plan, looked_at, ours = self._plan(time.monotonic()), time.monotonic(), True
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                cancelled = await self._cancel(thread_id, run)
                return FinishedRun(cancelled, polls, tuple(hosted), calls)
            if time.monotonic() - asked_at >= INTERRUPT_CHECK_S:
                if await hooks.interrupted():
                    stopped = await self._stop(thread_id, run)
                    return FinishedRun(stopped, polls, tuple(hosted), calls)
                asked_at = time.monotonic()
            waited.add(run.run_id)
            look = await self._wait(run, plan, remaining, looked_at, polled=ending_heard)
            if look is _Look.NOT_YET:
                continue
            # A poll can wait for the loop to catch up; the reply of a finished run cannot.
            paced = self._pacer.slot() if look is _Look.POLL else contextlib.nullcontext()
            async with paced:
                run = await self._retrieve(thread_id, run.run_id)
            ending_heard = ending_heard or look is _Look.ENDED
            looked_at = time.monotonic()
            plan.looked(looked_at, completed=run.status is RunStatus.COMPLETED)
            polls += 1
            maybe_crash(CrashPoint.MID_POLL)
        hosted.extend(run.hosted_calls)
        return FinishedRun(await self._why_cancelled(run, hooks), polls, tuple(hosted), calls)

    async def _tool_round(
        self,
        thread_id: str,
        run: RunSnapshot,
        turn: Turn,
        hooks: RunHooks,
        hosted: list[ToolCallSummary],
        *,
        first_try: bool,
    ) -> RunSnapshot:
        """Serves a requires_action; the run that goes on (a new one on Responses, whose ID is
        stored before it is looked at)."""
        hooks.tools_running(run.run_id, tuple(call.name for call in run.tool_calls))
        served, denied = await self._serve_tools(
            thread_id, run, turn, hooks.tools, first_try=first_try
        )
        hosted.extend(denied)
        if served.run_id != run.run_id:
            await hooks.on_new_run(served.run_id)
        return served

    async def _wait(
        self, run: RunSnapshot, plan: PollPlan, remaining: float, looked_at: float, *, polled: bool
    ) -> _Look:
        """Waits until the run is worth a look. Polling (or `polled`): after the plan's delay.
        With webhooks: once its ending is recorded, or at the sweep; NOT_YET after a short
        wait with neither, so interrupts are still heard within the poll cap."""
        endings = self._endings
        # An items run has no ID a webhook could name.
        if endings is None or polled or run.run_id.startswith(ITEMS_RUN):
            delay = plan.next_delay_s(time.monotonic(), run.poll_after_ms)
            await asyncio.sleep(min(delay, remaining))
            return _Look.POLL
        sweep_at = looked_at + endings.sweep_s
        window = min(self._schedule.max_ms / 1000, remaining, sweep_at - time.monotonic())
        if await endings.wait(run.run_id, max(window, 0.0)):
            return _Look.ENDED
        return _Look.POLL if time.monotonic() >= sweep_at else _Look.NOT_YET

    async def _why_cancelled(self, run: RunSnapshot, hooks: RunHooks) -> RunSnapshot:
        """A run found cancelled without a reason was cancelled by a worker that died before
        recording why. Only workers cancel runs: for a waiting interrupt, or at the deadline."""
        if run.status is not RunStatus.CANCELLED or run.error is not None:
            return run
        if await hooks.interrupted():
            return replace(run, error=_STOPPED)
        return replace(run, error=self._past_deadline())

    def _plan(self, started_at: float | None) -> PollPlan:
        if started_at is None:
            return PollPlan(self._schedule, None, time.monotonic())
        return PollPlan(self._schedule, self._durations, started_at)

    async def _retrieve(self, thread_id: str, run_id: str) -> RunSnapshot:
        return await self._api_retry.call(
            OpenAIOperation.RETRIEVE_RUN,
            lambda: self.backend.retrieve_run(RunRef(thread_id, run_id)),
        )

    async def _serve_tools(
        self,
        thread_id: str,
        run: RunSnapshot,
        turn: Turn,
        tools: TurnTools,
        *,
        first_try: bool,
    ) -> tuple[RunSnapshot, tuple[ToolCallSummary, ...]]:
        """Serves the run's function calls and answers its approval requests; the run that
        goes on, and the calls the profile's policy denied."""
        outputs = await serve_calls(run.tool_calls, tools)
        approvals, denied = await answer_approvals(run.approvals, tools)
        submission = ToolSubmission(RunRef(thread_id, run.run_id), turn, tuple(outputs), approvals)
        started = await self._create_once(
            OpenAIOperation.SUBMIT_TOOL_OUTPUTS,
            thread_id,
            find=lambda: self.backend.find_tool_outputs_run(submission),
            create=lambda: self.backend.submit_tool_outputs(submission),
            first_try=first_try,
        )
        return started.run, denied

    async def _cancel(self, thread_id: str, run: RunSnapshot) -> RunSnapshot:
        log.warning("run_deadline_exceeded", run_id=run.run_id, deadline_s=self._deadline_s)
        cancelled = await self._api_retry.call(
            OpenAIOperation.CANCEL_RUN,
            lambda: cancel_unless_ended(self.backend, RunRef(thread_id, run.run_id)),
        )
        if not cancelled:  # it ended on its own in the meantime: that ending stands
            return await self._retrieve(thread_id, run.run_id)
        return RunSnapshot(
            run_id=run.run_id, status=RunStatus.CANCELLED, error=self._past_deadline()
        )

    def _past_deadline(self) -> RunError:
        return RunError(
            "deadline_exceeded",
            f"the run did not finish within {self._deadline_s:g} s and was cancelled",
        )

    async def _stop(self, thread_id: str, run: RunSnapshot) -> RunSnapshot:
        log.info("run_interrupted", run_id=run.run_id)
        ref = RunRef(thread_id, run.run_id)
        if not await self._api_retry.call(
            OpenAIOperation.CANCEL_RUN, lambda: cancel_unless_ended(self.backend, ref)
        ):
            return await self._retrieve(thread_id, run.run_id)  # it ended first: that stands
        maybe_crash(CrashPoint.AFTER_RUN_STOPPED)
        return RunSnapshot(run_id=run.run_id, status=RunStatus.CANCELLED, error=_STOPPED)

    async def _wait_out(self, thread_id: str, run_id: str | None) -> None:
        if run_id is None:
            await asyncio.sleep(self._schedule.max_ms / 1000)
            return
        polls = 0
        deadline = time.monotonic() + self._deadline_s
        run = await self._retrieve(thread_id, run_id)
        while not run.status.is_terminal and time.monotonic() < deadline:
            await asyncio.sleep(self._schedule.delay_s(polls, run.poll_after_ms))
            run = await self._retrieve(thread_id, run_id)
            polls += 1
        if not run.status.is_terminal:
            await self._cancel(thread_id, run)


async def cancel_unless_ended(backend: Backend, run: RunRef) -> bool:
    """Cancels the run; False if it had just ended on its own (it is left as it is).

    A deadline, or a duplicate found late, can ask in the very moment the run ends.
    """
    try:
        await backend.cancel_run(run)
    except RunAlreadyEnded:
        if not (await backend.retrieve_run(run)).status.is_terminal:
            raise
        return False
    return True
