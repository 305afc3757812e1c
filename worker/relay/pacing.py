"""How much work that can wait runs at once: as much as the event loop keeps up with.

One worker process has one core's worth of Python. Given more than that, every await comes
back late: polls see finished runs late, and a transaction holds its row lock and pooled
connection across many late loop turns, so the replies of finished runs queue behind work that
could have waited. Starting a conversation and polling a run can wait; finishing one should not.

`Pacer` bounds the deferrable work in flight by a limit it adapts to the loop's lag (how late a
short sleep wakes): halved while the loop runs late, raised by one each turn it keeps up. A
process waiting on the network (the usual case against the real API) never lags, so the limit
stays at its ceiling and nothing is held back; a process short of CPU slows its own intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Pacer:
    """Slots for work that can wait, as many as the event loop keeps up with: `watch_forever`
    measures the loop's lag and moves the limit between `floor` and `ceiling`."""

    def __init__(
        self, *, ceiling: int, lag_limit_s: float, floor: int = 4, interval_s: float = 0.02
    ) -> None:
        self._ceiling = ceiling
        self._floor = min(floor, ceiling)
        self._limit = self._ceiling
        self._lag_limit_s = lag_limit_s
        self._interval_s = interval_s
        self._in_use = 0
        self._changed = asyncio.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Held for one deferrable step; never take a second one inside it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_use < self._limit)
            self._in_use += 1
        try:
            yield
        finally:
            async with self._changed:
                self._in_use -= 1
                self._changed.notify()

    async def watch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._interval_s)
            await self.observe_lag(loop.time() - before - self._interval_s)

    async def observe_lag(self, lag_s: float) -> None:
        if lag_s > self._lag_limit_s:
            self._limit = max(self._floor, self._limit // 2)
        elif self._limit < self._ceiling:
            self._limit += 1
            async with self._changed:
                self._changed.notify()
