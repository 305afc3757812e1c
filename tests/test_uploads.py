"""An inline attachment is uploaded exactly once: across a lost answer, a retried batch, and
a worker killed between the upload and recording its file ID."""

from __future__ import annotations

import asyncio
import base64
import sys

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.conftest import RunningWorker, start_worker
from tests.support import publish, replies_for, worker_env
from worker.settings import Settings, Topology

NOTE_BYTES = b"order 1042, shipped Monday"
NOTE = {"filename": "note.txt", "content_base64": base64.b64encode(NOTE_BYTES).decode()}


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _uploads(standin: StandIn) -> list[dict[str, object]]:
    return [f for f in standin.files() if standin.file_content(str(f["id"])) == NOTE_BYTES]


async def test_an_upload_whose_answer_was_lost_is_found_not_repeated(
    worker: RunningWorker,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
) -> None:
    # The stand-in stores the file, then drops the connection before answering.
    standin.add_faults([{"kind": "drop_after", "method": "POST", "path": "/files$", "times": 1}])
    event = await publish(
        channel, topology, conversation_id="c-lost-upload", text="see file", attachments=[NOTE]
    )
    [reply] = await replies_for(channel, topology, {event["event_id"]})

    assert reply["text"] == "Echo: see file [files: note.txt]"
    [upload] = _uploads(standin)
    stored = await db.fetch("SELECT file_id, uploaded FROM attachments")
    assert [tuple(r) for r in stored] == [(upload["id"], True)]


async def test_a_worker_killed_between_upload_and_record_does_not_upload_again(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    db: asyncpg.Connection,
) -> None:
    env = worker_env(settings, AW_CRASH_POINTS="after_upload=1", AW_LEASE_TTL_S="2")
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    event = await publish(
        channel, topology, conversation_id="c-kill-upload", text="see file", attachments=[NOTE]
    )
    assert await asyncio.wait_for(doomed.wait(), 30) == -9
    assert len(_uploads(standin)) == 1
    assert await db.fetchval("SELECT count(*) FROM attachments") == 0

    survivor = await start_worker(settings.model_copy(update={"lease_ttl_s": 2.0}))
    try:
        [reply] = await replies_for(channel, topology, {event["event_id"]}, timeout_s=30)
    finally:
        await survivor.shutdown()
    assert reply["text"] == "Echo: see file [files: note.txt]"
    [upload] = _uploads(standin)
    assert await db.fetchval("SELECT file_id FROM attachments") == upload["id"]
