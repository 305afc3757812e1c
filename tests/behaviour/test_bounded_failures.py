"""Bounded failures: runs that fail transiently are retried; a stage that raises for no reason
any class covers is tried AW_INTERNAL_ATTEMPTS times per batch, then dead-lettered as
`internal_error`, and the conversation's next event is still answered."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from standin import StandIn
from tests.behaviour.conftest import INTERNAL_ATTEMPTS
from tests.behaviour.relay import Relay, event
from worker import crashpoints
from worker.crashpoints import FaultPoint

NOTE = {"filename": "note.txt", "content_base64": base64.b64encode(b"order 1042").decode()}
# The stages of answering a batch; the upload stage is reached by events with files.
STAGES = [p for p in FaultPoint if p not in (FaultPoint.INTAKE, FaultPoint.PUBLISH)]


def staged(stage: FaultPoint, conversation_id: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"attachments": [NOTE]} if stage is FaultPoint.UPLOAD else {}
    return event(conversation_id, f"hello {stage}", **fields)


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_run_that_fails_transiently_is_retried_and_answered(
    relay: Relay, standin: StandIn
) -> None:
    flaky = event("c-flaky", "once more [[outcome:failed_once]]")
    await relay.deliver(flaky)
    [reply] = await relay.replies()

    assert reply["status"] == "completed"
    assert reply["in_reply_to"] == [flaky["event_id"]]
    first, second = standin.run_records()
    assert first["status"] == "failed"
    assert reply["run_id"] == second["id"]


async def test_a_run_that_keeps_failing_is_reported_after_the_run_attempts(
    relay: Relay, standin: StandIn
) -> None:
    await relay.deliver(event("c-failing", "never [[outcome:failed]]"))
    [reply] = await relay.replies()

    assert reply["status"] == "failed"
    assert reply["error"]["code"] == "server_error"
    assert len(standin.run_records()) == relay.settings.run_attempts


@pytest.mark.parametrize("stage", STAGES, ids=str)
async def test_a_stage_failing_fewer_times_than_allowed_still_answers_once(
    relay: Relay, standin: StandIn, stage: FaultPoint
) -> None:
    crashpoints.arm_faults(f"{stage}={INTERNAL_ATTEMPTS - 1}")
    doc = staged(stage, f"c-{stage}")
    await relay.deliver(doc)
    [message] = await relay.publish()

    assert message.routing_key == relay.settings.topology.reply_routing_key
    reply = message.json()
    assert reply["status"] == "completed"
    assert reply["in_reply_to"] == [doc["event_id"]]
    # Retrying resumed what was done: one run, a file uploaded once.
    assert len(standin.run_records()) == 1
    assert len(standin.files()) == (1 if stage is FaultPoint.UPLOAD else 0)


@pytest.mark.parametrize("stage", STAGES, ids=str)
async def test_a_stage_that_keeps_failing_dead_letters_and_the_conversation_moves_on(
    relay: Relay, stage: FaultPoint
) -> None:
    crashpoints.arm_faults(f"{stage}={INTERNAL_ATTEMPTS}")
    poisoned = staged(stage, f"c-stuck-{stage}")
    await relay.deliver(poisoned)
    published = await relay.publish()
    topology = relay.settings.topology
    [dead] = [m for m in published if m.exchange == topology.dead_letter_exchange]
    [handoff] = [m.json() for m in published if m.routing_key == topology.handoff_routing_key]
    assert handoff["reason"] == "dead_lettered"
    assert handoff["in_reply_to"] == [poisoned["event_id"]]

    assert dead.exchange == relay.settings.topology.dead_letter_exchange
    assert dead.headers["x-aw-reason"] == "internal_error"
    assert dead.headers["x-aw-attempts"] == INTERNAL_ATTEMPTS
    assert dead.headers["x-aw-error-class"] == f"worker.crashpoints.InjectedFault ({stage})"
    assert dead.json() == poisoned
    assert dead.message_id == poisoned["event_id"]

    later = event(f"c-stuck-{stage}", "still there?")
    await relay.deliver(later)
    [reply] = await relay.replies()
    assert reply["in_reply_to"] == [later["event_id"]]
    assert reply["text"] == "Echo: still there?"


async def test_a_failed_publish_is_published_on_the_next_pass(relay: Relay) -> None:
    await relay.deliver(event("c-publish", "out"))
    crashpoints.arm_faults(f"{FaultPoint.PUBLISH}=1")

    failed = await relay.outbox.publish_pending()
    assert (failed.published, failed.failed) == (0, 1)
    assert await relay.store.outbox_backlog() == 1
    [reply] = await relay.replies()
    assert reply["text"] == "Echo: out"
    assert await relay.store.outbox_backlog() == 0
