"""What the worker's log lines are tagged with: each names what it is about, and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import structlog
from structlog.testing import LogCapture

from standin import StandIn
from tests.behaviour.relay import Relay, event
from tests.support import until


@contextlib.contextmanager
def logged_with_context() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every line logged meanwhile, with the context variables bound when it was logged."""
    capture = LogCapture()
    before = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(**before)


async def test_the_owners_lines_name_its_batches_not_the_event_that_woke_it(
    relay: Relay, standin: StandIn
) -> None:
    first = event("c-tags", "one [[delay_ms:300]]")
    second = event("c-tags", "two")
    with logged_with_context() as lines:
        # The first delivery takes the conversation and answers until nothing waits, which
        # includes the second event, stored meanwhile by another delivery.
        answering = asyncio.create_task(relay.deliver(first))
        await until(lambda: len(standin.run_records()) == 1)
        await relay.deliver(second)
        await answering

    assert len(await relay.replies()) == 2
    batches = [line for line in lines if "batch_id" in line]
    assert len({line["batch_id"] for line in batches}) == 2
    assert [line for line in batches if "event_id" in line] == []
    received = [line for line in lines if line["event"] == "event_received"]
    assert [line["event_id"] for line in received] == [first["event_id"], second["event_id"]]
