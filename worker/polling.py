"""When to look at a running run again: adaptive, jittered, capped, and polite to the server."""

from __future__ import annotations

import random
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
        if server_hint_ms is not None:
            planned = min(max(planned, server_hint_ms), self.max_ms)
        return planned * (1 + self.jitter * (2 * random.random() - 1)) / 1000
