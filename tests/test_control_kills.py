"""conversation_control.v1 under kill -9, on both backends: a worker killed between steering
and settling leaves the control event to the next owner, who does it again with exactly one
effect.

One real worker process per test (a Supervisor), one crash point armed at probability 1 until
the first death (crash_once): `after_control_applied` (the thread and files are deleted at the
API, the batch not settled) or `after_run_stopped` (the interrupt cancelled the run at the API,
nothing settled). The restarted worker runs without crash points.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.harness import ReplyCollector, Supervisor, chaos_env, check
from tests.support import drain, publish, until, user_texts, worker_env
from tests.test_control import (
    SLOW,
    control,
    dump,
    holds,
    runs,
    settled,
    thread_exists,
    written,
)
from worker.crashpoints import CrashPoint
from worker.settings import Settings, Topology

Json = dict[str, Any]

pytestmark = pytest.mark.timeout(60)

# Long enough for the restarted worker to come up and take over the dead one's lease (2 s in
# chaos_env), with room to spare on a loaded machine.
RECOVERY_S = 20


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def killed_once_at(
    settings: Settings, tmp_path: Path, point: CrashPoint
) -> AsyncIterator[Supervisor]:
    """One worker process that dies at `point` the first time it gets there; its restart
    runs without crash points."""
    env = chaos_env(worker_env(settings))
    supervisor = Supervisor(env, 1, tmp_path, crash_points=f"{point}=1", crash_once=True)
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


async def killed(supervisor: Supervisor) -> None:
    """Until the worker has died at its crash point (SIGKILL), once."""
    deadline = time.monotonic() + RECOVERY_S
    while supervisor.kills == 0:
        assert time.monotonic() < deadline, f"no kill\n{supervisor.log_tail()}"
        await asyncio.sleep(0.02)
    assert supervisor.kills == 1


async def replies_to(
    collector: ReplyCollector, supervisor: Supervisor, event_id: str
) -> list[Json]:
    """Waits for the event's reply; every distinct reply (by its event_id) that answers it."""
    missing = await collector.wait_for({event_id}, RECOVERY_S)
    assert not missing, f"no reply for {event_id}\n{supervisor.log_tail()}"
    return answering(collector, event_id)


def answering(collector: ReplyCollector, event_id: str) -> list[Json]:
    distinct = {r.reply["event_id"]: r.reply for r in collector.received}
    return [r for r in distinct.values() if event_id in r["in_reply_to"]]


async def status_of(db: asyncpg.Connection, event_id: str) -> str | None:
    found = await db.fetchval(
        "SELECT status::text FROM inbound_events WHERE event_id = $1", event_id
    )
    return None if found is None else str(found)


def thread_of(run: Json) -> str:
    return str(run["thread_id"] or run["conversation_id"])


def logged(tmp_path: Path, *events: str) -> list[str]:
    """Which of these log events any worker process of the test logged."""
    text = b"".join(p.read_bytes() for p in tmp_path.glob("worker-*.log"))
    return [e for e in events if f'"{e}"'.encode() in text]


async def test_close_killed_after_deleting_is_done_again_and_settled_answered(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    collector: ReplyCollector,
    tmp_path: Path,
    backend: str,
) -> None:
    c = "c-close-killed"
    note = {"filename": "note.txt", "content_base64": base64.b64encode(b"a note").decode()}
    async with killed_once_at(settings, tmp_path, CrashPoint.AFTER_CONTROL_APPLIED) as sup:
        first = await publish(
            channel, topology, conversation_id=c, text="see file", attachments=[note]
        )
        [reply] = await replies_to(collector, sup, first["event_id"])
        thread = reply["thread_id"]
        assert len(standin.files()) == 1
        closing = await control(channel, topology, c, "close")
        await killed(sup)

        # Killed between the API's deletes and the settling: the redo is a real redo.
        assert not thread_exists(standin, backend, thread)
        assert [f["deleted"] for f in standin.files()] == [True]
        assert await status_of(db, closing["event_id"]) not in ("answered", "dead_lettered")

        assert await settled(db, closing["event_id"], RECOVERY_S) == "answered"
        assert await db.fetchval("SELECT count(*) FROM attachments") == 0
        again = await publish(channel, topology, conversation_id=c, text="new topic")
        [fresh] = await replies_to(collector, sup, again["event_id"])
        await _quiet()

    assert fresh["thread_id"] != thread
    assert user_texts(standin, backend, fresh["thread_id"]) == ["new topic"]
    assert not thread_exists(standin, backend, thread)
    assert [f["deleted"] for f in standin.files()] == [True]  # no second upload, none left
    assert [r["in_reply_to"] for r in answering(collector, again["event_id"])] == [
        [again["event_id"]]
    ]
    assert check([first, again], collector, standin).violations == {}
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []
    assert logged(tmp_path, "batch_failed", "batch_dead_lettered") == []
    assert sup.kills == 1


async def test_takeover_killed_after_stopping_the_run_withholds_its_reply_for_good(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    collector: ReplyCollector,
    tmp_path: Path,
    backend: str,
) -> None:
    c = "c-takeover-killed"
    async with killed_once_at(settings, tmp_path, CrashPoint.AFTER_RUN_STOPPED) as sup:
        slow = await publish(channel, topology, conversation_id=c, text=f"help {SLOW}")
        await until(lambda: len(runs(standin)) == 1, RECOVERY_S)
        takeover = await control(channel, topology, c, "takeover", occurred_at=written(1))
        await killed(sup)

        # Killed right after the cancel: the run is stopped, its batch not settled.
        assert runs(standin)[0]["status"] in ("cancelling", "cancelled")
        assert await status_of(db, slow["event_id"]) not in ("answered", "dead_lettered")

        held = await publish(
            channel, topology, conversation_id=c, text="are you there?", occurred_at=written(2)
        )
        assert await settled(db, takeover["event_id"], RECOVERY_S) == "answered"
        assert await settled(db, held["event_id"], RECOVERY_S) == "answered"
        # The slow message's batch was settled too, its reply withheld.
        assert await status_of(db, slow["event_id"]) == "answered"
        thread = thread_of(runs(standin)[0])
        assert "are you there?" in user_texts(standin, backend, thread)
        assert len(runs(standin)) == 1  # the restart made no second run, the held message none

        await control(channel, topology, c, "release", occurred_at=written(3))
        after = await publish(
            channel, topology, conversation_id=c, text="thanks, bot", occurred_at=written(4)
        )
        [reply] = await replies_to(collector, sup, after["event_id"])
        await _quiet()

    assert answering(collector, slow["event_id"]) == []
    assert answering(collector, held["event_id"]) == []
    assert [r["in_reply_to"] for r in answering(collector, after["event_id"])] == [
        [after["event_id"]]
    ]
    assert reply["status"] == "completed"
    assert reply["sequence"] == 1  # the withheld reply took no number
    assert reply["text"].endswith("are you there? | thanks, bot")
    first, last = runs(standin)
    assert (first["status"], last["status"]) == ("cancelled", "completed")
    assert thread_of(last) == thread == reply["thread_id"]
    # A cancelled background response leaves its input out of the Conversation.
    cancelled_input = [f"help {SLOW}"] if backend == "assistants" else []
    assert user_texts(standin, backend, thread) == [
        *cancelled_input,
        "are you there?",
        "thanks, bot",
    ]
    assert check([after], collector, standin).violations == {}
    assert sup.kills == 1


async def test_cancel_killed_after_stopping_the_run_tells_its_events_cancelled_once(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    collector: ReplyCollector,
    tmp_path: Path,
    backend: str,
) -> None:
    c = "c-cancel-killed"
    async with killed_once_at(settings, tmp_path, CrashPoint.AFTER_RUN_STOPPED) as sup:
        slow = await publish(channel, topology, conversation_id=c, text=f"long one {SLOW}")
        await until(lambda: len(runs(standin)) == 1, RECOVERY_S)
        cancelling = await control(channel, topology, c, "cancel")
        await killed(sup)

        assert runs(standin)[0]["status"] in ("cancelling", "cancelled")
        assert answering(collector, slow["event_id"]) == []  # the dead worker told nobody
        assert await status_of(db, slow["event_id"]) not in ("answered", "dead_lettered")

        [reply] = await replies_to(collector, sup, slow["event_id"])
        assert await settled(db, cancelling["event_id"], RECOVERY_S) == "answered"
        await _quiet()
        assert len(answering(collector, slow["event_id"])) == 1
        assert [r["status"] for r in runs(standin)] == ["cancelled"]  # no second run

        nxt = await publish(channel, topology, conversation_id=c, text="still there?")
        [answered] = await replies_to(collector, sup, nxt["event_id"])
        await _quiet()

    assert reply["in_reply_to"] == [slow["event_id"]]
    assert reply["status"] == "cancelled"
    assert answered["status"] == "completed"
    assert (reply["sequence"], answered["sequence"]) == (1, 2)
    assert [r["status"] for r in runs(standin)] == ["cancelled", "completed"]
    assert check([slow, nxt], collector, standin).violations == {}
    assert sup.kills == 1
    # As unkilled, the reply says why, although the worker that cancelled it died first.
    assert reply["error"]["code"] == "cancelled"


async def test_erase_killed_after_deleting_leaves_none_of_the_texts_once_redone(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
    database_url: str,
    collector: ReplyCollector,
    tmp_path: Path,
    backend: str,
) -> None:
    c = "c-erase-killed"
    canary = f"canary-{uuid.uuid4().hex}"
    second_canary = f"canary-{uuid.uuid4().hex}"
    note = {
        "filename": f"{canary}.txt",
        "content_base64": base64.b64encode(canary.encode()).decode(),
    }
    async with killed_once_at(settings, tmp_path, CrashPoint.AFTER_CONTROL_APPLIED) as sup:
        first = await publish(
            channel, topology, conversation_id=c, text=f"my secret {canary}", attachments=[note]
        )
        [reply] = await replies_to(collector, sup, first["event_id"])
        second = await publish(
            channel, topology, conversation_id=c, text=f"and also {second_canary}"
        )
        [later] = await replies_to(collector, sup, second["event_id"])
        assert canary in reply["text"]
        assert second_canary in later["text"]
        await _quiet()
        before = dump(database_url)
        # The second canary is only in bodies (bytea, dumped as hex): the search must see those.
        assert holds(before, canary)
        assert holds(before, second_canary)

        erasing = await control(channel, topology, c, "erase")
        await killed(sup)

        # Killed after the API's deletes, before the store forgot anything.
        assert not thread_exists(standin, backend, reply["thread_id"])
        assert await status_of(db, erasing["event_id"]) not in ("answered", "dead_lettered")
        assert holds(dump(database_url), canary)

        assert await settled(db, erasing["event_id"], RECOVERY_S) == "answered"
        after = dump(database_url)
        nxt = await publish(channel, topology, conversation_id=c, text="after")
        [fresh] = await replies_to(collector, sup, nxt["event_id"])
        await _quiet()

    assert not holds(after, canary)
    assert not holds(after, second_canary)
    assert [f["deleted"] for f in standin.files()] == [True]
    # What duplicate detection needs stays.
    assert await status_of(db, first["event_id"]) == "answered"
    assert fresh["thread_id"] != reply["thread_id"]
    assert user_texts(standin, backend, fresh["thread_id"]) == ["after"]
    assert check([first, second, nxt], collector, standin).violations == {}
    assert await drain(channel, topology.dead_letter_queue, quiet_s=0.3) == []
    assert logged(tmp_path, "batch_failed", "batch_dead_lettered") == []
    assert sup.kills == 1


async def _quiet() -> None:
    """A moment for a late or second reply to show up in the collector."""
    await asyncio.sleep(1.0)
