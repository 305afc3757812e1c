"""Every failure is bounded: a stage that raises, for no reason any class covers, is retried a
few times and then dead-lettered as `internal_error`; the conversation's later events go on.

Faults are injected the way AW_CRASH_POINTS kills: at named stages (worker/crashpoints.py).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import INTERNAL_ATTEMPTS, RunningWorker
from tests.support import drain, publish, replies_for, wait_for_dead_letters
from tests.test_relay import runs_in, user_texts
from worker import crashpoints
from worker.backends.base import Turn
from worker.crashpoints import FaultPoint
from worker.relay.runner import Runner, StartedRun
from worker.settings import Topology

pytestmark = pytest.mark.usefixtures("disarmed")


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


NOTE = {"filename": "note.txt", "content_base64": base64.b64encode(b"order 1042").decode()}
# Stages the relay walks for every event; the upload stage is reached by events with files.
STAGES = [p for p in FaultPoint if p is not FaultPoint.PUBLISH]


def _event(stage: FaultPoint, conversation_id: str) -> dict[str, Any]:
    event: dict[str, Any] = {"conversation_id": conversation_id, "text": f"hello {stage}"}
    if stage is FaultPoint.UPLOAD:
        event["attachments"] = [NOTE]
    return event


@pytest.mark.parametrize("stage", STAGES, ids=str)
async def test_a_stage_that_fails_fewer_times_than_allowed_still_answers_once(
    bounded_worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    stage: FaultPoint,
) -> None:
    crashpoints.arm_faults(f"{stage}={INTERNAL_ATTEMPTS - 1}")
    event = await publish(channel, topology, **_event(stage, f"c-{stage}"))
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["status"] == "completed"
    assert reply["in_reply_to"] == [event["event_id"]]
    # Retrying resumed what was done: one run, the message added once, a file uploaded once.
    assert len(runs_in(standin, reply["thread_id"])) == 1
    assert user_texts(standin, reply["thread_id"]) == [event["text"]]
    assert len(standin.files()) == (1 if stage is FaultPoint.UPLOAD else 0)
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []


@pytest.mark.parametrize("stage", STAGES, ids=str)
async def test_a_stage_that_keeps_failing_dead_letters_and_the_conversation_moves_on(
    bounded_worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    stage: FaultPoint,
) -> None:
    crashpoints.arm_faults(f"{stage}={INTERNAL_ATTEMPTS}")
    conversation_id = f"c-stuck-{stage}"
    poisoned = await publish(channel, topology, **_event(stage, conversation_id))
    [dead] = await wait_for_dead_letters(channel, topology, 1)

    assert dead.headers["x-aw-reason"] == "internal_error"
    assert dead.headers["x-aw-attempts"] == INTERNAL_ATTEMPTS
    assert "InjectedFault" in dead.headers["x-aw-error-class"]
    expected_stage = "intake" if stage is FaultPoint.INTAKE else str(stage)
    assert f"({expected_stage})" in dead.headers["x-aw-error-class"]
    assert dead.json() == poisoned
    assert dead.message_id == poisoned["event_id"]

    later = await publish(channel, topology, conversation_id=conversation_id, text="still there?")
    [reply] = await replies_for(channel, topology, {later["event_id"]})
    assert reply["in_reply_to"] == [later["event_id"]]
    assert reply["text"] == "Echo: still there?"


async def test_the_outbox_publishes_what_failed_to_publish_on_its_next_pass(
    bounded_worker: RunningWorker, channel: AbstractChannel, topology: Topology
) -> None:
    crashpoints.arm_faults(f"{FaultPoint.PUBLISH}=2")
    event = await publish(channel, topology, conversation_id="c-publish", text="out")
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["text"] == "Echo: out"
    assert await drain(channel, topology.reply_queue, quiet_s=0.5) == []


async def test_a_poisoned_event_does_not_hold_up_the_events_after_it(
    bounded_worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    """Poison that only one event carries: the events after it are answered in a batch of
    their own, and the poisoned one is dead-lettered with the class of its failure."""
    real_start = Runner.start

    async def start(self: Runner, thread_id: str, turn: Turn, *, first_try: bool) -> StartedRun:
        if any("poison" in m.text for m in turn.messages):
            raise KeyError("a bug that only this event's data triggers")
        return await real_start(self, thread_id, turn, first_try=first_try)

    monkeypatch.setattr(Runner, "start", start)
    poisoned = await publish(channel, topology, conversation_id="c-poison", text="poison [[x]]")
    [dead] = await wait_for_dead_letters(channel, topology, 1)
    assert dead.headers["x-aw-reason"] == "internal_error"
    assert dead.headers["x-aw-error-class"] == "KeyError (run_create)"
    assert dead.json() == poisoned

    after = [
        await publish(channel, topology, conversation_id="c-poison", text=f"after {n}")
        for n in range(3)
    ]
    replies = await replies_for(channel, topology, {e["event_id"] for e in after})
    answered = [event_id for r in replies for event_id in r["in_reply_to"]]
    assert sorted(answered) == sorted(e["event_id"] for e in after)
    assert poisoned["event_id"] not in answered
