"""Background clock that moves runs and responses along without being polled.

One ``loop.call_later`` timer per object: the event loop keeps timers in a heap,
so thousands of runs in flight cost a few hundred bytes each and no CPU while
they wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Clock:
    def __init__(self) -> None:
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def schedule(self, key: str, delay_ms: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay_ms``, replacing any timer pending for ``key``."""
        self.cancel(key)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_ms / 1000, self._fire, key, callback)

    def cancel(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _fire(self, key: str, callback: Callable[[], None]) -> None:
        del self._timers[key]
        callback()
