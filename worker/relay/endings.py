"""Learning that a background response ended from its webhook, instead of by polling it.

The receiver (`assistant-worker webhooks`, worker/webhooks/) records each ending in Postgres
(`ended_responses`) and NOTIFYs `aw_response_ended` with the response ID, in one transaction.
Every worker LISTENs on one connection of its own; whichever replica owns the run hears it,
wherever the delivery landed. A run's owner registers its wait before it reads the table, so an
ending recorded before the run's ID was stored (the webhook can beat the create's answer), or
while the listener was reconnecting, is read from the table instead of missed. Notifications
are a wake-up, not a record: losing one costs a sweep interval, never the ending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

log = structlog.get_logger("worker.relay.endings")

CHANNEL = "aw_response_ended"
_RECONNECT_S = 1.0

ConnectFn = Callable[[], Awaitable[asyncpg.Connection]]


class WebhookEndings:
    """The process's ear for response endings: one LISTEN connection, kept open, and the runs
    that wait on it."""

    def __init__(
        self, connect: ConnectFn, recorded: Callable[[str], Awaitable[bool]], sweep_s: float
    ) -> None:
        """`connect` opens the listening connection (again after a loss); `recorded` says
        whether a response's ending is in the table; a run is looked at anyway `sweep_s` after
        its last look."""
        self._connect = connect
        self._recorded = recorded
        self.sweep_s = sweep_s
        # True once its own notification came (the ending is committed: NOTIFY is delivered
        # at commit); False when all were woken (the listener reconnected: read the table).
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        # When each run now waiting began to wait: the age of the oldest is a gauge.
        self._since: dict[str, float] = {}

    async def listen_forever(self) -> None:
        """Keeps the LISTEN connection up; while it is down, waits end at their sweep."""
        while True:
            try:
                conn = await self._connect()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("endings_listen_failed", error_class=type(exc).__name__)
                await asyncio.sleep(_RECONNECT_S)
                continue
            await self._listen(conn)
            log.warning("endings_listener_lost")

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Until the connection is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._heard)
        # Endings recorded while nobody listened are in the table: wake every waiter.
        self._wake_all()
        try:
            await lost.wait()
        finally:
            if not conn.is_closed():
                await conn.close()

    async def wait(self, response_id: str, timeout_s: float) -> bool:
        """True once the response is known to have ended; False when `timeout_s` passes first
        (then the caller checks interrupts, or sweeps, and waits again)."""
        self._since.setdefault(response_id, time.monotonic())
        future = self._waiters.get(response_id)
        if future is None or future.done():
            future = self._waiters[response_id] = asyncio.get_running_loop().create_future()
            # Registered first, read second: an ending recorded in between wakes the future.
            # While it stays registered, its notification (or a reconnect's wake-up) is what
            # tells, so the next waits do not read the table again.
            if await self._recorded(response_id):
                return True
        try:
            async with asyncio.timeout(timeout_s):
                heard = await asyncio.shield(future)
        except TimeoutError:
            return False
        return heard or await self._recorded(response_id)

    def done(self, response_id: str) -> None:
        """The run no longer waits (it ended, or was given up)."""
        self._waiters.pop(response_id, None)
        self._since.pop(response_id, None)

    def oldest_wait_s(self) -> float:
        """How long the run that has waited longest has been waiting (0: none waits)."""
        if not self._since:
            return 0.0
        return time.monotonic() - min(self._since.values())

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        future = self._waiters.get(str(payload))
        if future is not None and not future.done():
            future.set_result(True)

    def _wake_all(self) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_result(False)
