"""The dead-letter tools work for conversation_control.v1 as for user messages, on both backends.

A control event whose batch fails is dead-lettered with the same readable verdict as a message;
once the cause is gone, `dlq replay` has the worker carry it out, and a second copy of the same
dead letter replayed later is a duplicate: it does not act again. A real worker, RabbitMQ and
Postgres; the stand-in's state read directly.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import INTERNAL_ATTEMPTS, RunningWorker
from tests.support import drain, publish, replies_for, until, user_texts
from tests.test_control import control, settled, thread_exists
from tests.test_dlq import dlq, dlq_json, queue_depth, wait_for_dead_letters_count
from worker import crashpoints
from worker.crashpoints import FaultPoint
from worker.ops.dlq import DeadLetter
from worker.settings import Settings, Topology

Json = dict[str, Any]

# How long a worker may take to settle an event here (faults and backoff included).
SETTLE_S = 15

pytestmark = pytest.mark.usefixtures("disarmed")


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def thread_path(backend: str, thread_id: str) -> str:
    """The path the backend DELETEs to close the conversation's thread (a regex)."""
    collection = "conversations" if backend == "responses" else "threads"
    return rf"^/v1/{collection}/{re.escape(thread_id)}$"


def deletes_of(standin: StandIn, backend: str, thread_id: str) -> list[Json]:
    pattern = re.compile(thread_path(backend, thread_id))
    return [e for e in standin.journal if e["method"] == "DELETE" and pattern.search(e["path"])]


def intake_outcomes(worker: RunningWorker) -> Counter[str]:
    """What intake made of the deliveries so far, by outcome (new, reopened, already_settled...)."""
    counts: Counter[str] = Counter()
    for metric in worker.service.metrics.events_received.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts


async def taken_in(worker: RunningWorker, before: Counter[str]) -> Counter[str]:
    """Waits until intake has taken one more delivery than `before`; what it made of it."""
    await until(lambda: sum(intake_outcomes(worker).values()) == sum(before.values()) + 1)
    return intake_outcomes(worker) - before


async def no_more_replies(channel: AbstractChannel, topology: Topology) -> list[Json]:
    return [m.json() for m in await drain(channel, topology.reply_queue, quiet_s=0.3)]


async def mode_of(db: asyncpg.Connection, conversation_id: str) -> str:
    return str(
        await db.fetchval(
            "SELECT mode::text FROM conversations WHERE conversation_id = $1", conversation_id
        )
    )


async def replay_a_copy(settings: Settings, exported: Path, conversation_id: str) -> None:
    """An operator imports an export made before the first replay and replays it again."""
    code, _, err = await dlq(settings, "import", str(exported))
    assert code == 0, err
    again = await dlq_json(settings, "replay", "--conversation", conversation_id)
    assert len(again["moved"]) == 1


async def test_a_dead_lettered_close_is_replayed_and_then_carried_out_once(
    worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
    tmp_path: Path,
) -> None:
    c = f"c-close-dlq-{backend}"
    note = {"filename": "note.txt", "content_base64": base64.b64encode(b"a note").decode()}
    first = await publish(channel, topology, conversation_id=c, text="see file", attachments=[note])
    [reply] = await replies_for(channel, topology, {first["event_id"]})
    thread = reply["thread_id"]

    # The API answers every DELETE of the thread with a 503: transient, retried, then given up.
    standin.add_faults(
        [
            {
                "kind": "status",
                "status": 503,
                "method": "DELETE",
                "path": thread_path(backend, thread),
            }
        ]
    )
    closing = await control(channel, topology, c, "close")
    assert await settled(db, closing["event_id"], SETTLE_S) == "dead_lettered"
    await wait_for_dead_letters_count(channel, topology, 1)

    [listed] = await dlq_json(settings, "list")
    assert listed["event_id"] == closing["event_id"]
    assert listed["conversation_id"] == c
    assert listed["reason"] == "openai_unavailable"
    assert listed["attempts"] == settings.api_attempts
    # Readable: which call failed and how, and nothing of the conversation's content.
    assert listed["error"].startswith("delete_thread: HTTP 503")
    shown = await dlq_json(settings, "show", closing["event_id"])
    assert shown["headers"]["x-aw-reason"] == "openai_unavailable"
    assert shown["headers"]["x-aw-event-id"] == closing["event_id"]
    assert shown["headers"]["x-aw-conversation-id"] == c
    assert shown["headers"]["x-aw-original-routing-key"] == topology.control_routing_key
    assert json.loads(DeadLetter.from_record(shown).body) == closing
    # Nothing was closed: the thread, its file and the mapping are all still there.
    assert thread_exists(standin, backend, thread)
    assert [e["fault"] for e in deletes_of(standin, backend, thread)] == ["status"] * 4
    assert [f["deleted"] for f in standin.files()] == [False]
    conversation = "SELECT thread_id FROM conversations WHERE conversation_id = $1"
    assert await db.fetchval(conversation, c) == thread
    # A copy, for replaying the same dead letter a second time below.
    exported = tmp_path / "close.jsonl"
    code, _, err = await dlq(settings, "export", str(exported), "--conversation", c)
    assert code == 0, err

    standin.clear_faults()
    moved = await dlq_json(settings, "replay", "--conversation", c)
    assert moved["moved"] == [closing["event_id"]]
    assert await settled(db, closing["event_id"], SETTLE_S, replays=1) == "answered"

    assert not thread_exists(standin, backend, thread)
    assert [f["deleted"] for f in standin.files()] == [True]
    assert await db.fetchval(conversation, c) is None
    assert await queue_depth(channel, topology.dead_letter_queue) == 0
    again = await publish(channel, topology, conversation_id=c, text="new topic")
    [fresh] = await replies_for(channel, topology, {again["event_id"]})
    assert fresh["thread_id"] != thread
    assert user_texts(standin, backend, fresh["thread_id"]) == ["new topic"]
    assert await no_more_replies(channel, topology) == []

    # The same dead letter replayed again, now that the conversation has a new thread: intake
    # knows the close (answered, replay 1 stored), so it is a duplicate, not a second close.
    before = intake_outcomes(worker)
    await replay_a_copy(settings, exported, c)
    assert await taken_in(worker, before) == Counter(already_settled=1)
    assert await settled(db, closing["event_id"], SETTLE_S, replays=1) == "answered"
    assert thread_exists(standin, backend, fresh["thread_id"])
    assert deletes_of(standin, backend, fresh["thread_id"]) == []
    assert await queue_depth(channel, topology.dead_letter_queue) == 0
    later = await publish(channel, topology, conversation_id=c, text="same topic")
    [answer] = await replies_for(channel, topology, {later["event_id"]})
    assert answer["thread_id"] == fresh["thread_id"]
    assert user_texts(standin, backend, fresh["thread_id"]) == ["new topic", "same topic"]
    assert await no_more_replies(channel, topology) == []


async def test_a_dead_lettered_takeover_is_replayed_and_takes_effect_once(
    bounded_worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    backend: str,
    tmp_path: Path,
) -> None:
    """A takeover makes no API call of its own, so no API fault can fail it: the batch's first
    stage is made to fail instead (a failure no class covers), until it is dead-lettered."""
    c = f"c-takeover-dlq-{backend}"
    first = await publish(channel, topology, conversation_id=c, text="hi")
    [reply] = await replies_for(channel, topology, {first["event_id"]})
    thread = reply["thread_id"]

    crashpoints.arm_faults(f"{FaultPoint.BATCH_OPEN}={INTERNAL_ATTEMPTS}")
    takeover = await control(channel, topology, c, "takeover")
    assert await settled(db, takeover["event_id"], SETTLE_S) == "dead_lettered"
    await wait_for_dead_letters_count(channel, topology, 1)
    shown = await dlq_json(settings, "show", takeover["event_id"])
    assert shown["reason"] == "internal_error"
    assert shown["attempts"] == INTERNAL_ATTEMPTS
    assert shown["headers"]["x-aw-error-class"].endswith("InjectedFault (batch_open)")
    assert shown["headers"]["x-aw-conversation-id"] == c
    assert json.loads(DeadLetter.from_record(shown).body) == takeover
    assert await mode_of(db, c) == "assistant"  # not taken over
    exported = tmp_path / "takeover.jsonl"
    code, _, err = await dlq(settings, "export", str(exported), "--event-id", takeover["event_id"])
    assert code == 0, err

    crashpoints.arm_faults("")
    moved = await dlq_json(settings, "replay", "--event-id", takeover["event_id"])
    assert moved["moved"] == [takeover["event_id"]]
    assert await settled(db, takeover["event_id"], SETTLE_S, replays=1) == "answered"
    assert await mode_of(db, c) == "human"
    runs_before = len(standin.run_records())
    held = await publish(channel, topology, conversation_id=c, text="anyone there?")
    assert await settled(db, held["event_id"], SETTLE_S) == "answered"
    assert await no_more_replies(channel, topology) == []
    assert len(standin.run_records()) == runs_before  # held for the human: no run
    assert user_texts(standin, backend, thread) == ["hi", "anyone there?"]

    release = await control(channel, topology, c, "release")
    assert await settled(db, release["event_id"], SETTLE_S) == "answered"
    # The takeover's dead letter replayed a second time: a duplicate, so the release stands.
    before = intake_outcomes(bounded_worker)
    await replay_a_copy(settings, exported, c)
    assert await taken_in(bounded_worker, before) == Counter(already_settled=1)
    assert await mode_of(db, c) == "assistant"
    later = await publish(channel, topology, conversation_id=c, text="bot again?")
    [answer] = await replies_for(channel, topology, {later["event_id"]})
    assert answer["status"] == "completed"
    assert answer["in_reply_to"] == [later["event_id"]]
    assert await no_more_replies(channel, topology) == []
    assert await queue_depth(channel, topology.dead_letter_queue) == 0
