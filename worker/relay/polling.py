"""When to look at a running run again: learned from how long runs take, polite to the server.

A fixed schedule has to choose between polling often (wasting requests on long runs) and
polling rarely (answering late). Runs of one backend and model take similar times, so once a
few have finished the worker knows where the next one is likely to end: it sleeps until the
earliest likely end, polls finely until the latest, then backs off. Until it has seen enough
runs, and for runs that outlast what it has seen, it uses the geometric schedule.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """Starts fast (most runs are short), backs off geometrically to a cap.

    The server's `openai-poll-after-ms` hint is a floor: polling sooner than asked only burns the
    GET rate limit. Jitter spreads the polls of runs that started together.
    """

    initial_ms: int
    max_ms: int
    growth: float
    jitter: float = 0.1

    def delay_s(self, polls_so_far: int, server_hint_ms: int | None = None) -> float:
        planned = min(self.initial_ms * self.growth**polls_so_far, self.max_ms)
        return self.polite_s(planned, server_hint_ms)

    def polite_s(self, planned_ms: float, server_hint_ms: int | None) -> float:
        """`planned_ms`, raised to the server's hint, capped, jittered, in seconds."""
        if server_hint_ms is not None:
            planned_ms = min(max(planned_ms, server_hint_ms), self.max_ms)
        return planned_ms * (1 + self.jitter * (2 * random.random() - 1)) / 1000


class RunDurations:
    """The lengths of recently completed runs, as polling saw them.

    A run's length is taken as the midpoint between the last look that found it running and
    the first that found it done: unbiased when its end is equally likely anywhere between.
    A bounded window lets the estimate follow a change of model or load: longer runs within
    `window` runs; shorter ones more slowly, since a run seen done at its first poll is only
    known to be shorter than that poll, so the estimate halves with each window until the polls
    catch up with the runs.
    """

    def __init__(self, window: int = 100, min_samples: int = 20) -> None:
        self._seen: deque[float] = deque(maxlen=window)
        self._min_samples = min_samples
        self._cuts: tuple[float, float] | None = None

    def observe(self, seconds: float) -> None:
        self._seen.append(max(0.0, seconds))
        self._cuts = None

    def likely_end_s(self) -> tuple[float, float] | None:
        """(10th, 90th) percentile of recent lengths; None until enough runs were seen."""
        if len(self._seen) < self._min_samples:
            return None
        if self._cuts is None:
            deciles = statistics.quantiles(self._seen, n=10)
            self._cuts = (deciles[0], deciles[-1])
        return self._cuts


class PollPlan:
    """When to look at one run next. Made when the run starts (or resumes after tool calls)."""

    def __init__(
        self, schedule: PollSchedule, durations: RunDurations | None, started_at: float
    ) -> None:
        """`durations` None: the run's start is unknown (it was resumed), so nothing is learned
        from it and it is polled on the geometric schedule."""
        self._schedule = schedule
        self._durations = durations
        self._started_at = started_at
        self._last_look = started_at
        self._polls = 0
        self._late_polls = 0

    @property
    def polls(self) -> int:
        return self._polls

    def next_delay_s(self, now: float, server_hint_ms: int | None = None) -> float:
        likely = None if self._durations is None else self._durations.likely_end_s()
        if likely is None:
            return self._schedule.delay_s(self._polls, server_hint_ms)
        earliest, latest = likely
        # Fine enough to see the end soon after it happens, coarse enough that the likely
        # window costs a handful of polls whatever its width.
        step_ms = min(
            max(1000 * (latest - earliest) / 4, self._schedule.initial_ms), self._schedule.max_ms
        )
        elapsed = now - self._started_at
        if elapsed < earliest:
            planned_ms = 1000 * (earliest - elapsed)
        elif elapsed < latest + step_ms / 1000:
            planned_ms = step_ms
        else:
            # Longer than most: back off as the geometric schedule would, from the fine step.
            self._late_polls += 1
            planned_ms = min(
                step_ms * self._schedule.growth**self._late_polls, self._schedule.max_ms
            )
        return self._schedule.polite_s(planned_ms, server_hint_ms)

    def looked(self, now: float, *, completed: bool) -> None:
        """Records a poll; a run seen completed teaches the next plans how long runs take."""
        self._polls += 1
        if completed and self._durations is not None:
            self._durations.observe((self._last_look + now) / 2 - self._started_at)
        self._last_look = now
