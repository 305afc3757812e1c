"""Proposed worker changes, measured before they are made: the real worker, patched at start-up.

    python -m bench.variants aiohttp,relay-pool run   # contender assistants+aiohttp+relay-pool

This package never edits worker/; a variant monkeypatches one seam of the running worker so the
benchmark can measure what the change would buy. Each is a sketch of the change, not its final
form: the real one belongs in worker/ with its tests.

- `aiohttp`: the OpenAI client on the SDK's `DefaultAioHttpClient` (aiohttp under the SDK)
  instead of its default httpx2 transport (`worker/service.py`, `make_client`).
- `relay-pool`: the outbox relay on a small Postgres pool of its own, so a reply waiting to be
  published does not queue behind every conversation's statements for a connection
  (`worker/service.py`, where `OutboxRelay` is built).
- `start-gate`: at most BENCH_START_GATE (default 32) deliveries between being taken and having
  their run started; the rest wait before intake. Starting a conversation is the CPU-heavy part;
  ungated, 1,000 starts queue in front of every finished run's poll, record and publish
  (`worker/consume.py` and `worker/conversation.py`).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import uuid
from collections.abc import Callable

import openai


def aiohttp_transport() -> None:
    from worker import service
    from worker.settings import Settings

    def make_client(settings: Settings) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            timeout=settings.openai_timeout_s,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(timeout=settings.openai_timeout_s),
        )

    service.make_client = make_client


def relay_pool() -> None:
    from worker import service
    from worker.publish import OutboxRelay
    from worker.store import Store, create_pool

    class OwnPoolRelay(OutboxRelay):
        _own: Store | None = None

        async def publish_pending(self) -> int:
            if self._own is None:
                pool = await create_pool(os.environ["AW_DATABASE_URL"], max_size=2)
                self._own = self._store = Store(pool)
            return await super().publish_pending()

    setattr(service, "OutboxRelay", OwnPoolRelay)  # noqa: B010 - not a public name of service


# The start-gate slot the current delivery holds, if any (one list per delivery task).
_slot: contextvars.ContextVar[list[asyncio.Semaphore]] = contextvars.ContextVar("slot")


def _release_slot() -> None:
    held = _slot.get([])
    while held:
        held.pop().release()


def start_gate() -> None:
    from aio_pika.abc import AbstractIncomingMessage

    from worker.consume import Consumer
    from worker.store import Lease, Store

    gate = asyncio.Semaphore(int(os.environ.get("BENCH_START_GATE", "32")))
    handle, record = Consumer._handle, Store.record_run_started

    async def gated_handle(self: Consumer, message: AbstractIncomingMessage) -> None:
        await gate.acquire()
        _slot.set([gate])
        try:
            await handle(self, message)
        finally:
            _release_slot()

    async def record_then_release(
        self: Store, lease: Lease, batch_id: uuid.UUID, run_id: str, attempt: int
    ) -> None:
        await record(self, lease, batch_id, run_id, attempt)
        _release_slot()

    setattr(Consumer, "_handle", gated_handle)  # noqa: B010
    setattr(Store, "record_run_started", record_then_release)  # noqa: B010


VARIANTS: dict[str, Callable[[], None]] = {
    "aiohttp": aiohttp_transport,
    "relay-pool": relay_pool,
    "start-gate": start_gate,
}


def main(argv: list[str]) -> None:
    names, *worker_args = argv
    for name in names.split(","):
        VARIANTS[name]()
    from worker.cli import app

    app(worker_args)


if __name__ == "__main__":
    main(sys.argv[1:])
