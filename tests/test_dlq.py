"""`assistant-worker dlq`: read without disturbing, replay safely, export and import losslessly."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import typer
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from typer.testing import CliRunner

from standin import StandIn
from tests.conftest import RunningWorker
from tests.support import publish, publish_raw, replies_for, run_cli, worker_env
from worker.ops.cli import app as cli_app
from worker.ops.dlq import (
    REASONS,
    UNFIXABLE,
    DeadLetter,
    DeadLetterQueue,
    ReplayRules,
    Selection,
    replay_plan,
)
from worker.ops.dlq_filters import selecting
from worker.settings import Settings, Topology

REPO = Path(__file__).resolve().parent.parent


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
    worker: RunningWorker,
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
) -> None:
    # Rejected by the API every time: a cause that may be fixed, so replay does not ask first.
    standin.add_faults(
        [{"kind": "status", "status": 400, "method": "POST", "path": r"/responses$", "times": 6}]
    )
    for n in range(2):
        await publish(channel, topology, conversation_id=f"poison-{n}", text="again")
        await wait_for_dead_letters_count(channel, topology, n + 1)
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

    args = ["pick", "--reason", "schema_invalid", "--reason", "delivery_limit"]
    args += ["--event-id", "e1", "--until", "2h"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [selection] = chosen
    assert selection.reasons == frozenset({"schema_invalid", "delivery_limit"})
    assert selection.event_ids == frozenset({"e1"})
    assert selection.conversations == frozenset()
    assert selection.since is None
    assert selection.until is not None
    assert selection.limit == 50
    assert CliRunner().invoke(app, ["pick", "--since", "soon"]).exit_code == 2


# --- conventions: filters, exports, tables, warnings (issue 15) ---------------------------------


async def dlq_in(
    settings: Settings, *args: str, cwd: Path | None = None, stdin: bytes = b"", **env: str
) -> tuple[int, str, str]:
    """`assistant-worker dlq ARGS` at 100 columns (unless `env` says otherwise), in `cwd`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "dlq",
        *args,
        env=worker_env(settings, **{"COLUMNS": "100", "PYTHONPATH": str(REPO), **env}),
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def on_terminal(settings: Settings, *args: str, typed: bytes) -> tuple[int, str]:
    """`assistant-worker dlq ARGS` with a terminal for stdin and stdout, `typed` at it: the
    exit code, and what the terminal showed (prompts, the progress bar), colours taken out."""
    master, replica = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "dlq", *args],
        stdin=replica,
        stdout=replica,
        stderr=replica,
        env=worker_env(settings, COLUMNS="100", PYTHONPATH=str(REPO)),
    )
    os.close(replica)
    os.write(master, typed)
    shown = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        shown.append(chunk)
    os.close(master)
    text = b"".join(shown).decode("utf-8", "replace")
    return proc.wait(timeout=30), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # no colours


async def _import(settings: Settings, tmp_path: Path, letters: list[dict[str, Any]]) -> None:
    """Puts dead letters straight into the queue: each a dict of headers, with its body."""
    records = []
    for n, headers in enumerate(letters):
        event_id = headers.get("x-aw-event-id", f"imp-{n}")
        body = headers.pop("body", None) or json.dumps({"event_id": event_id}).encode()
        records.append(
            DeadLetter(
                position=0,
                body=body,
                headers={"x-aw-event-id": event_id, **headers},
                message_id=event_id,
                routing_key="user_message.v1",
            ).to_record()
        )
    source = tmp_path / f"seed-{uuid.uuid4().hex[:6]}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, _, err = await dlq(settings, "import", str(source))
    assert code == 0, err


@pytest.mark.parametrize("command", ["list", "replay", "export -", "purge"])
def test_an_unknown_reason_is_refused_with_the_valid_ones(command: str) -> None:
    result = CliRunner().invoke(cli_app, ["dlq", *command.split(), "--reason", "schema_invalud"])
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert "--reason" in line
    assert "did you mean schema_invalid?" in line
    assert all(reason in line for reason in REASONS)


async def test_a_schema_invalid_events_valid_ids_reach_the_tools(
    worker: RunningWorker, settings: Settings, channel: AbstractChannel, topology: Topology
) -> None:
    body = {"event_id": "bad-ids", "conversation_id": "ticket-9", "text": "", "colour": "red"}
    await publish_raw(channel, topology, json.dumps(body).encode())
    await wait_for_dead_letters_count(channel, topology, 1)
    [listed] = await dlq_json(settings, "list", "--reason", "schema_invalid")
    assert (listed["event_id"], listed["conversation_id"]) == ("bad-ids", "ticket-9")
    stats = await dlq_json(settings, "stats")
    assert stats["by_conversation"] == {"ticket-9": 1}


async def test_purge_says_where_it_exports_and_never_needs_a_writable_working_directory(
    settings: Settings, channel: AbstractChannel, topology: Topology, tmp_path: Path
) -> None:
    await _import(settings, tmp_path, [{"x-aw-reason": "openai_rejected"}] * 2)
    read_only = Path("/proc")  # nobody, root included, can create a file here

    code, out, err = await dlq_in(settings, "purge", "--yes", cwd=read_only)
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert "/proc is not writable" in line
    assert "--export-to" in line
    assert "Traceback" not in err
    assert await queue_depth(channel, topology.dead_letter_queue) == 2

    code, out, _ = await dlq_in(settings, "purge", cwd=tmp_path, stdin=b"n\n")
    assert code == 2
    assert re.search(rf"exported to {re.escape(str(tmp_path))}/dlq-purged-\S+\.jsonl first", out)
    code, _, _ = await dlq_in(settings, "purge", cwd=tmp_path)  # no answer at all: a no
    assert code == 2
    assert await queue_depth(channel, topology.dead_letter_queue) == 2
    assert [name for name in os.listdir(tmp_path) if name.startswith("dlq-purged-")] == []

    saved = tmp_path / "kept.jsonl"
    code, out, err = await dlq_in(
        settings, "purge", "--yes", "--export-to", str(saved), cwd=read_only
    )
    assert code == 0, err
    assert len(saved.read_text().splitlines()) == 2
    assert await queue_depth(channel, topology.dead_letter_queue) == 0


def _words(values: list[str]) -> set[str]:
    return {word for value in values for word in value.split()}


def assert_fits_without_splitting_a_word(shown: str, values: list[str], width: int) -> None:
    """Every line within `width`; every word on it one of `values`' words, whole, or the start
    of one followed by an ellipsis."""
    whole = _words(values)
    for line in shown.splitlines():
        assert len(line) <= width, line
        for word in line.split():
            if word in whole or set(word) <= set("─"):
                continue
            assert word.endswith("…"), f"{word!r} is split: {line!r}"
            assert any(w.startswith(word[:-1]) for w in whole), f"{word!r} shortened from what?"


async def test_tables_fit_100_columns_shortening_whole_words_only(
    settings: Settings, tmp_path: Path
) -> None:
    long_error = (
        "http_404: HTTP 404: Error code: 404 - The model 'gpt-9' does not exist, see "
        "https://platform.example.com/docs/models/overview-of-every-model-and-its-limits "
        "for the models this key can use"
    )
    letters: list[dict[str, Any]] = [
        {
            "x-aw-event-id": str(uuid.uuid4()),
            "x-aw-conversation-id": f"helpdesk-{n}-" + "conversation" * (n + 2),
            "x-aw-reason": reason,
            "x-aw-error": long_error[: 40 + 60 * n],
            "x-aw-last-failure-at": "2026-11-25T04:25:21.265970Z",
            "x-aw-replay-count": 2,
        }
        for n, reason in enumerate(["openai_rejected", "message_id_mismatch", "schema_invalid"])
    ]
    await _import(settings, tmp_path, [dict(letter) for letter in letters])
    values = [str(v) for letter in letters for v in letter.values()]
    values += ["2026-11-25 04:25:21 04:25:21,", "1 2 3 -", "# event conversation reason tries"]
    values += ["replays failed at (UTC) error events by", "3 dead-lettered; oldest newest"]

    shown = {}
    for command in ("list", "stats"):
        code, shown[command], err = await dlq_in(settings, command)
        assert code == 0, err
        assert_fits_without_splitting_a_word(shown[command], values, 100)
    assert "…" in shown["list"]  # the long IDs and errors were shortened, not dropped
    assert all(f" {letter['x-aw-reason']} " in shown["list"] for letter in letters)

    listed = await dlq_json(settings, "list")
    assert [e["conversation_id"] for e in listed] == [
        letter["x-aw-conversation-id"] for letter in letters
    ]
    code, out, _ = await dlq_in(settings, "show", letters[2]["x-aw-event-id"])
    assert code == 0
    assert f"  x-aw-error: {letters[2]['x-aw-error']}\n" in out  # whole, on one line


async def test_replay_refuses_events_that_cannot_succeed_off_a_terminal_unless_forced(
    settings: Settings, channel: AbstractChannel, topology: Topology, tmp_path: Path
) -> None:
    await _import(
        settings,
        tmp_path,
        [{"x-aw-reason": "openai_unavailable"}, {"x-aw-reason": "schema_invalid"}],
    )
    code, out, err = await dlq_in(settings, "replay")
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert "1 of the 2 events to replay cannot succeed as they are (1 schema_invalid)" in line
    assert "--force" in line
    assert await queue_depth(channel, topology.dead_letter_queue) == 2
    assert await queue_depth(channel, topology.inbound_queue) == 0

    # A dry run moves nothing, so it does not ask, but it marks what cannot succeed.
    code, out, _ = await dlq_in(settings, "replay", "--dry-run")
    assert code == 0
    assert "  imp-1  schema_invalid  (cannot succeed as it is)\n" in out
    assert "  imp-0  openai_unavailable\n" in out
    moved = await dlq_json(settings, "replay", "--reason", "openai_unavailable")
    assert moved["moved"] == ["imp-0"]
    forced = await dlq_json(settings, "replay", "--force")
    assert forced["moved"] == ["imp-1"]
    assert await queue_depth(channel, topology.inbound_queue) == 2


async def test_replay_asks_on_a_terminal_and_its_progress_knows_the_total(
    settings: Settings, channel: AbstractChannel, topology: Topology, tmp_path: Path
) -> None:
    reasons = ["openai_unavailable", "malformed_json", "openai_unavailable"]
    await _import(settings, tmp_path, [{"x-aw-reason": reason} for reason in reasons])

    code, shown = await asyncio.to_thread(on_terminal, settings, "replay", typed=b"n\n")
    assert code == 2
    assert "1 of the 3 events to replay cannot succeed as they are (1 malformed_json)" in shown
    assert "Replay them anyway? [y/N]" in shown
    assert await queue_depth(channel, topology.dead_letter_queue) == 3

    code, shown = await asyncio.to_thread(on_terminal, settings, "replay", typed=b"y\n")
    assert code == 0, shown
    assert "moved 3 of 3 examined" in shown
    assert re.search(r"\b[0-3]/3\b", shown), shown  # the bar counts towards a known total
    assert "/?" not in shown
    assert await queue_depth(channel, topology.inbound_queue) == 3


async def test_an_exchange_the_command_needs_that_does_not_exist_is_exit_4(
    settings: Settings, channel: AbstractChannel, topology: Topology, tmp_path: Path
) -> None:
    await _import(settings, tmp_path, [{"x-aw-reason": "openai_unavailable"}])
    code, _, err = await dlq_in(settings, "replay", AW_INBOUND_EXCHANGE="nope")
    assert code == 4
    [line] = err.splitlines()
    assert "exchange 'nope' not found; check AW_INBOUND_EXCHANGE" in line
    assert await queue_depth(channel, topology.dead_letter_queue) == 1


def test_the_replay_plan_is_what_replay_takes_up() -> None:
    letters = [
        DeadLetter(position=n, body=b"", headers={"x-aw-reason": r, "x-aw-replay-count": c})
        for n, (r, c) in enumerate(
            [("openai_rejected", 3), ("schema_invalid", 0), ("openai_rejected", 0), ("x", 0)],
            start=1,
        )
    ]
    everything = Selection()
    assert replay_plan(letters, everything, ReplayRules()) == letters
    # --limit counts what moves: the refused first one does not use it up.
    one = replay_plan(letters, Selection(limit=1), ReplayRules(max_replays=3))
    assert [letter.position for letter in one] == [1, 2]
    forced = replay_plan(letters, Selection(limit=1), ReplayRules(force=True))
    assert [letter.position for letter in forced] == [1]
    rejected = Selection(reasons=frozenset({"openai_rejected"}))
    assert [letter.position for letter in replay_plan(letters, rejected, ReplayRules())] == [1, 3]
    assert {"schema_invalid", "malformed_json"} <= {str(reason) for reason in UNFIXABLE}
