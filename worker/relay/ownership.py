"""Which conversations this process owns: leases taken, renewed, handed back, and swept up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog

from worker.errors import is_dependency_failure
from worker.metrics import Metrics
from worker.store.ports import LeaseStore
from worker.store.records import Lease

log = structlog.get_logger("worker.relay.ownership")


class Ownership:
    """The lease manager: runs at most `capacity` conversations at once, each under a renewed
    lease, so that one conversation has one owner across all workers.

    A lease lives `ttl_s`; it is renewed every third of that, so a dead owner's conversations
    are free again at most `ttl_s` after its last renewal and picked up by the next sweep. An
    owner that lost its lease is stopped by the store's fencing (LeaseLost), not by trust.
    """

    def __init__(
        self,
        store: LeaseStore,
        process: Callable[[Lease], Awaitable[None]],
        *,
        owner: str,
        capacity: int,
        ttl_s: float,
        sweep_interval_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._process = process
        self._owner = owner
        self._slots = asyncio.Semaphore(capacity)
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._sweep_interval_s = sweep_interval_s
        self._leases: dict[str, Lease] = {}
        self._sweeps: set[asyncio.Task[None]] = set()
        self._metrics = metrics

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def in_flight(self) -> int:
        return len(self._leases)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A place among the `capacity` conversations; hold it before taking a lease."""
        async with self._slots:
            yield

    async def own_and_process(self, conversation_id: str) -> bool:
        """Answers the conversation if nobody else owns it; False if someone does."""
        async with self.slot():
            lease = await self._store.acquire_lease(conversation_id, self._owner, self._ttl_s)
            if lease is None:
                return False
            await self.process_leased(lease)
            return True

    async def process_leased(self, lease: Lease) -> None:
        """Answers a conversation whose lease the caller took while holding a `slot`."""
        self._leases[lease.conversation_id] = lease
        try:
            await self._process(lease)
        except BaseException:
            # Crashing or cancelled mid-way: let another worker take over at once.
            await asyncio.shield(self._hand_back(lease))
            raise
        finally:
            self._leases.pop(lease.conversation_id, None)

    async def _hand_back(self, lease: Lease) -> None:
        try:
            await self._store.hand_back_lease(lease)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself anyway
            if is_dependency_failure(exc):
                # Postgres is away (often the very reason for handing back): say so plainly.
                log.info(
                    "hand_back_skipped",
                    conversation_id=lease.conversation_id,
                    reason="database unavailable; the lease expires by itself",
                    expires_in_s=self._ttl_s,
                )
                return
            log.warning("hand_back_failed", conversation_id=lease.conversation_id, error=repr(exc))

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            leases = list(self._leases.values())
            if not leases:
                continue
            try:
                kept = await self._store.renew_leases(leases, self._ttl_s)
            except Exception as exc:  # noqa: BLE001 - retried next round; fencing keeps us safe
                log.warning("lease_renewal_failed", error=repr(exc))
                continue
            for lease in leases:
                # One given up while the renewal ran was released, not lost.
                still_held = self._leases.get(lease.conversation_id) is lease
                if lease.token not in kept and still_held:
                    log.warning("lease_not_renewed", conversation_id=lease.conversation_id)

    async def sweep_forever(self) -> None:
        """Picks up conversations with work and no living owner (their worker died)."""
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            free = self._capacity - len(self._leases)
            if free <= 0:
                continue
            try:
                orphans = await self._store.sweepable_conversations(free)
            except Exception as exc:  # noqa: BLE001 - a database blip; try again next round
                log.warning("sweep_failed", error=repr(exc))
                continue
            for conversation_id in orphans:
                log.info("conversation_swept", conversation_id=conversation_id)
                if self._metrics is not None:
                    self._metrics.conversations_swept.inc()
                task = asyncio.create_task(self._sweep_one(conversation_id))
                self._sweeps.add(task)
                task.add_done_callback(self._sweeps.discard)

    async def _sweep_one(self, conversation_id: str) -> None:
        try:
            await self.own_and_process(conversation_id)
        except Exception:
            log.exception("swept_conversation_failed", conversation_id=conversation_id)

    async def stop_sweeps(self) -> None:
        for task in self._sweeps:
            task.cancel()
        await asyncio.gather(*self._sweeps, return_exceptions=True)
