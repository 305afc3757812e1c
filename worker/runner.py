"""Drives one run on a backend: start it exactly once, poll it to the end, serve its tools."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from worker.backends.base import Backend, RunSnapshot, RunStatus, Turn
from worker.crashpoints import CrashPoint, maybe_crash
from worker.errors import ThreadBusy
from worker.events import RunError
from worker.pacing import Pacer
from worker.polling import PollPlan, PollSchedule, RunDurations
from worker.retry import RetryPolicy
from worker.tools import ToolRegistry

log = structlog.get_logger("worker.runner")


@dataclass(frozen=True, slots=True)
class FinishedRun:
    snapshot: RunSnapshot
    polls: int


class Runner:
    def __init__(
        self,
        backend: Backend,
        api: RetryPolicy,
        schedule: PollSchedule,
        deadline_s: float,
        tools: ToolRegistry,
        pacer: Pacer,
    ) -> None:
        self.backend = backend
        self._pacer = pacer
        self._api = api
        self._schedule = schedule
        self._deadline_s = deadline_s
        self._tools = tools
        # One backend's runs share a model and so, roughly, a length.
        self._durations = RunDurations()

    async def start(self, thread_id: str, turn: Turn, *, first_try: bool) -> RunSnapshot:
        """Starts the turn's run, or finds the one an earlier attempt already started.

        The API takes no idempotency key, so an attempt first looks for a run tagged with this
        turn: a POST that timed out may have succeeded, and a worker that died may have sent
        one. Only a `first_try` (nobody has sent this turn yet) skips the look, saving a request
        on the common path. Each attempt is paced; waiting out someone else's run is not.
        """
        sent = not first_try

        async def reconcile_then_start() -> RunSnapshot:
            nonlocal sent
            if sent:
                existing = await self.backend.find_run(thread_id, turn)
                if existing is not None:
                    log.info("run_adopted", run_id=existing)
                    return await self.backend.retrieve_run(thread_id, existing)
            sent = True
            return await self.backend.start_run(thread_id, turn)

        while True:
            try:
                async with self._pacer.slot():
                    return await self._api.call("start_run", reconcile_then_start)
            except ThreadBusy as busy:
                # Someone else's run holds the thread: wait it out rather than fail ours.
                log.warning("thread_busy", thread_id=thread_id, active_run_id=busy.active_run_id)
                await self._wait_out(thread_id, busy.active_run_id)

    async def finish(
        self,
        thread_id: str,
        run: RunSnapshot,
        turn: Turn,
        on_new_run: Callable[[str], Awaitable[None]],
        *,
        started_at: float | None,
    ) -> FinishedRun:
        """Polls until the run ends or the deadline passes (then cancels it).

        `started_at` is when this process created the run (monotonic); None for a run resumed
        from an earlier owner, whose age is unknown.
        """
        deadline = time.monotonic() + self._deadline_s
        plan = self._plan(started_at)
        polls = 0
        while not run.status.is_terminal:
            if run.status is RunStatus.REQUIRES_ACTION:
                previous = run.run_id
                run = await self._serve_tools(thread_id, run, turn)
                if run.run_id != previous:
                    await on_new_run(run.run_id)
                plan = self._plan(time.monotonic())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return FinishedRun(await self._cancel(thread_id, run), polls)
            await asyncio.sleep(
                min(plan.next_delay_s(time.monotonic(), run.poll_after_ms), remaining)
            )
            # A poll can wait for the loop to catch up; the reply of a finished run cannot.
            async with self._pacer.slot():
                run = await self._retrieve(thread_id, run.run_id)
            plan.looked(time.monotonic(), completed=run.status is RunStatus.COMPLETED)
            polls += 1
            maybe_crash(CrashPoint.MID_POLL)
        return FinishedRun(run, polls)

    def _plan(self, started_at: float | None) -> PollPlan:
        if started_at is None:
            return PollPlan(self._schedule, None, time.monotonic())
        return PollPlan(self._schedule, self._durations, started_at)

    async def _retrieve(self, thread_id: str, run_id: str) -> RunSnapshot:
        return await self._api.call(
            "retrieve_run", lambda: self.backend.retrieve_run(thread_id, run_id)
        )

    async def _serve_tools(self, thread_id: str, run: RunSnapshot, turn: Turn) -> RunSnapshot:
        outputs = await self._tools.run_all(run.tool_calls)

        async def reconcile_then_submit() -> RunSnapshot:
            # A retried submit after a lost answer would be refused: check first.
            current = await self.backend.retrieve_run(thread_id, run.run_id)
            if current.status is not RunStatus.REQUIRES_ACTION:
                return current
            return await self.backend.submit_tool_outputs(thread_id, run.run_id, turn, outputs)

        return await self._api.call("submit_tool_outputs", reconcile_then_submit)

    async def _cancel(self, thread_id: str, run: RunSnapshot) -> RunSnapshot:
        log.warning("run_deadline_exceeded", run_id=run.run_id, deadline_s=self._deadline_s)
        await self._api.call("cancel_run", lambda: self.backend.cancel_run(thread_id, run.run_id))
        return RunSnapshot(
            run_id=run.run_id,
            status=RunStatus.CANCELLED,
            error=RunError(
                "deadline_exceeded",
                f"the run did not finish within {self._deadline_s:g} s and was cancelled",
            ),
        )

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
