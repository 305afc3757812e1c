"""`assistant-worker dlq`: read without disturbing, replay safely, export and import losslessly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aio_pika
import typer
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from typer.testing import CliRunner

from standin import StandIn
from tests.conftest import RunningWorker
from tests.support import publish, publish_raw, replies_for, run_cli, worker_env
from worker.ops.dlq import DeadLetter, DeadLetterQueue, Selection
from worker.ops.dlq_filters import selecting
from worker.settings import Settings, Topology


async def dlq(settings: Settings, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    return await run_cli(settings, "dlq", *args, stdin=stdin)


async def dlq_json(settings: Settings, *args: str) -> Any:
    code, out, err = await dlq(settings, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    result = await queue.declare()  # the robust channel caches the first declaration's result
    return int(result.message_count or 0)


async def _dead_letter_a_mix(
    channel: AbstractChannel, topology: Topology, standin: StandIn
) -> list[dict[str, Any]]:
    """Two schema-invalid, one malformed, three rejected by the API."""
    standin.add_faults(
        [{"kind": "status", "status": 400, "method": "POST", "path": r"/responses$", "times": 3}]
    )
    await publish_raw(channel, topology, json.dumps({"event_id": "bad-1", "text": "x"}).encode())
    await publish_raw(channel, topology, json.dumps({"event_id": "bad-2", "text": "y"}).encode())
    await publish_raw(channel, topology, b"not json")
    rejected = []
    for n in range(3):
        rejected.append(await publish(channel, topology, conversation_id=f"dl-{n}", text=f"r{n}"))
        await wait_for_dead_letters_count(channel, topology, 4 + n)
    return rejected


async def wait_for_dead_letters_count(
    channel: AbstractChannel, topology: Topology, count: int
) -> None:
    async with asyncio.timeout(15):
        while await queue_depth(channel, topology.dead_letter_queue) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_stats_list_and_show_read_without_disturbing_the_queue(
    worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
) -> None:
    rejected = await _dead_letter_a_mix(channel, topology, standin)

    stats = await dlq_json(settings, "stats")
    assert stats["total"] == 6
    assert stats["by_reason"] == {"openai_rejected": 3, "schema_invalid": 2, "malformed_json": 1}
    assert stats["by_conversation"]["dl-0"] == 1
    assert stats["oldest"] <= stats["newest"]

    first = await dlq_json(settings, "list")
    second = await dlq_json(settings, "list", "--reason", "openai_rejected")
    again = await dlq_json(settings, "list")
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    assert [e["event_id"] for e in second] == [e["event_id"] for e in rejected]
    assert await queue_depth(channel, topology.dead_letter_queue) == 6

    shown = await dlq_json(settings, "show", rejected[1]["event_id"])
    assert shown["reason"] == "openai_rejected"
    assert shown["headers"]["x-aw-conversation-id"] == "dl-1"
    assert json.loads(DeadLetter.from_record(shown).body) == rejected[1]

    code, out, _ = await dlq(settings, "list")
    assert code == 0
    assert "openai_rejected" in out
    assert "\x1b[" not in out  # no colours when not on a terminal


async def test_replay_moves_exactly_what_matches_and_the_worker_answers(
    worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
) -> None:
    rejected = await _dead_letter_a_mix(channel, topology, standin)

    dry = await dlq_json(settings, "replay", "--reason", "openai_rejected", "--dry-run")
    assert dry["moved"] == [e["event_id"] for e in rejected]
    assert await queue_depth(channel, topology.dead_letter_queue) == 6

    moved = await dlq_json(settings, "replay", "--reason", "openai_rejected", "--limit", "2")
    assert moved["moved"] == [e["event_id"] for e in rejected[:2]]
    replies = await replies_for(channel, topology, {e["event_id"] for e in rejected[:2]})
    assert {r["status"] for r in replies} == {"completed"}
    assert await queue_depth(channel, topology.dead_letter_queue) == 4


async def test_replay_counts_and_refuses_poison_unless_forced(
    worker: RunningWorker, settings: Settings, channel: AbstractChannel, topology: Topology
) -> None:
    await publish_raw(channel, topology, b"poison one")
    await publish_raw(channel, topology, b"poison two")
    await wait_for_dead_letters_count(channel, topology, 2)
    for round_ in (1, 2):
        # Paced, so the first is back in the queue before the walk ends: it must not be
        # met (and replayed) a second time in the same run.
        report = await dlq_json(settings, "replay", "--max-replays", "2", "--rate", "4")
        assert len(report["moved"]) == 2
        await wait_for_dead_letters_count(channel, topology, 2)
        listed = await dlq_json(settings, "list")
        assert [e["replays"] for e in listed] == [round_, round_]

    code, out, _ = await dlq(settings, "replay", "--max-replays", "2", "--json")
    assert code == 1
    assert len(json.loads(out)["refused"]) == 2
    forced = await dlq_json(settings, "replay", "--max-replays", "2", "--force")
    assert len(forced["moved"]) == 2


async def _import_letters(settings: Settings, tmp_path: Path, count: int) -> list[str]:
    records = [
        DeadLetter(
            position=0,
            body=json.dumps({"event_id": f"imp-{n}", "conversation_id": "c", "text": "t"}).encode(),
            headers={"x-aw-reason": "openai_unavailable", "x-aw-event-id": f"imp-{n}"},
            message_id=f"imp-{n}",
            content_type="application/json",
            routing_key="user_message.v1",
        ).to_record()
        for n in range(count)
    ]
    source = tmp_path / "seed.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, _, err = await dlq(settings, "import", str(source))
    assert code == 0, err
    return [f"imp-{n}" for n in range(count)]


async def _event_ids_in(amqp: AbstractRobustConnection, queue_name: str) -> list[str]:
    browse = await amqp.channel()
    queue = await browse.get_queue(queue_name)
    ids = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        ids.append(str(message.message_id))
    await browse.close()
    return ids


async def test_a_replay_killed_midway_loses_nothing(
    settings: Settings,
    amqp: AbstractRobustConnection,
    channel: AbstractChannel,
    topology: Topology,
    tmp_path: Path,
) -> None:
    ids = await _import_letters(settings, tmp_path, 60)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "dlq",
        "replay",
        "--rate",
        "20",
        env=worker_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
    )
    # Kill it once the move is well under way (however slowly the process started).
    async with asyncio.timeout(30):
        while await queue_depth(channel, topology.inbound_queue) < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    in_dlq = await _event_ids_in(amqp, topology.dead_letter_queue)
    inbound = await _event_ids_in(amqp, topology.inbound_queue)
    assert 0 < len(inbound) < len(ids), "the kill should land mid-replay"
    assert set(in_dlq) | set(inbound) == set(ids)
    # The dead-letter queue kept its order for what was left.
    assert in_dlq == sorted(in_dlq, key=lambda e: int(e.split("-")[1]))


async def test_export_then_import_round_trips_bodies_and_headers(
    settings: Settings, channel: AbstractChannel, topology: Topology, tmp_path: Path
) -> None:
    exchange = await channel.get_exchange(topology.dead_letter_exchange)
    odd = bytes(range(256))  # not JSON, not UTF-8: still kept byte for byte
    await exchange.publish(
        aio_pika.Message(odd, headers={"x-aw-reason": "malformed_json", "n": 7}, message_id="m1"),
        routing_key="user_message.v1",
    )
    await _import_letters(settings, tmp_path, 3)
    exported = tmp_path / "out.jsonl"
    assert (await dlq(settings, "export", str(exported)))[0] == 0
    code, _, _ = await dlq(settings, "purge", "--yes", "--no-export")
    assert code == 0
    assert await queue_depth(channel, topology.dead_letter_queue) == 0
    assert (await dlq(settings, "import", str(exported)))[0] == 0
    again = tmp_path / "again.jsonl"
    assert (await dlq(settings, "export", str(again)))[0] == 0

    before = [json.loads(line) for line in exported.read_text().splitlines()]
    after = [json.loads(line) for line in again.read_text().splitlines()]
    assert after == before
    assert DeadLetter.from_record(before[0]).body == odd
    assert before[0]["headers"] == {"x-aw-reason": "malformed_json", "n": 7}


async def test_purge_asks_exports_first_and_deletes_only_matches(
    settings: Settings,
    amqp: AbstractRobustConnection,
    channel: AbstractChannel,
    topology: Topology,
    tmp_path: Path,
) -> None:
    await _import_letters(settings, tmp_path, 3)
    code, _, _ = await dlq(settings, "purge", "--event-id", "imp-1", stdin=b"n\n")
    assert code == 2
    assert await queue_depth(channel, topology.dead_letter_queue) == 3

    saved = tmp_path / "purged.jsonl"
    code, out, err = await dlq(
        settings, "purge", "--event-id", "imp-1", "--export-to", str(saved), stdin=b"y\n"
    )
    assert code == 0, err
    assert "purged 1" in out
    assert [json.loads(line)["message_id"] for line in saved.read_text().splitlines()] == ["imp-1"]
    remaining = await DeadLetterQueue(amqp, topology).read()
    assert [letter.event_id for letter in remaining] == ["imp-0", "imp-2"]


async def test_bad_filters_and_missing_queues_are_clear_errors(settings: Settings) -> None:
    code, _, err = await dlq(settings, "list", "--since", "last tuesday")
    assert code == 2
    assert "RFC 3339" in err
    missing = settings.model_copy(
        update={"topology": settings.topology.model_copy(update={"dead_letter_queue": "nope"})}
    )
    code, _, err = await dlq(missing, "stats")
    assert code == 4
    assert "nope" in err


def test_the_filter_options_reach_a_command_as_one_selection() -> None:
    chosen: list[Selection] = []
    app = typer.Typer()

    @app.command()
    @selecting(limit=50)
    def pick(selection: Selection, as_json: bool = False) -> None:
        chosen.append(selection)

    @app.command()
    def other() -> None:  # two commands, so each is named on the command line
        pass

    args = ["pick", "--reason", "a", "--reason", "b", "--event-id", "e1", "--until", "2h"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [selection] = chosen
    assert selection.reasons == frozenset({"a", "b"})
    assert selection.event_ids == frozenset({"e1"})
    assert selection.conversations == frozenset()
    assert selection.since is None
    assert selection.until is not None
    assert selection.limit == 50
    assert CliRunner().invoke(app, ["pick", "--since", "soon"]).exit_code == 2
