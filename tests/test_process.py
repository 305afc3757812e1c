"""`assistant-worker` as a real process: start, answer, stop on SIGTERM, keep secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from tests.support import API_KEY, publish, replies_for, worker_env
from worker.settings import Settings, Topology

CLI = [sys.executable, "-m", "worker"]
REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode())

    async def wait_for_log(self, event: str, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(f'"event": "{event}"' in line for line in self.lines):
                if self.proc.returncode is not None:
                    raise AssertionError("worker exited early:\n" + "".join(self.lines))
                await asyncio.sleep(0.05)

    def log_record(self, event: str) -> dict[str, Any]:
        return next(json.loads(line) for line in self.lines if f'"event": "{event}"' in line)

    async def probe(self, path: str) -> int:
        return (await self.fetch(path))[0]

    async def fetch(self, path: str) -> tuple[int, str]:
        port = self.log_record("worker_started")["health_port"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()

    async def metrics_missing(self, samples: tuple[str, ...]) -> list[str]:
        page = (await self.fetch("/metrics"))[1]
        return [sample for sample in samples if sample not in page]

    async def finish(self, timeout_s: float = 20) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code


@pytest.fixture
async def spawn() -> AsyncIterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc.returncode is None:
            w.proc.kill()
            await w.proc.wait()


async def _spawn(env: dict[str, str], *args: str) -> WorkerProcess:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    return WorkerProcess(proc)


@pytest.mark.parametrize("backend", ["assistants", "responses"])
async def test_a_spawned_worker_runs_the_backend_its_test_asked_for(
    settings: Settings, spawn: list[WorkerProcess]
) -> None:
    # Every process test (guarantees, restarts, chaos) covers a backend only through this.
    worker = await _spawn(worker_env(settings), "run")
    spawn.append(worker)
    await worker.wait_for_log("worker_started")
    assert worker.log_record("worker_started")["backend"] == settings.backend.value


async def test_worker_process_answers_then_exits_cleanly_on_sigterm(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    spawn: list[WorkerProcess],
) -> None:
    worker = await _spawn(worker_env(settings), "run")
    spawn.append(worker)
    await worker.wait_for_log("worker_started")
    assert await worker.probe("/livez") == 200
    assert await worker.probe("/readyz") == 200
    event = await publish(channel, topology, conversation_id="c-proc", text="hello process")
    [reply] = await replies_for(channel, topology, {event["event_id"]})
    assert reply["text"] == "Echo: hello process"
    expected = (
        'assistant_worker_events_received_total{outcome="new"} 1.0',
        'assistant_worker_runs_finished_total{backend="responses",status="completed"} 1.0',
        "assistant_worker_replies_published_total 1.0",
        "assistant_worker_reply_latency_seconds_count 1.0",
        'assistant_worker_openai_requests_total{operation="start_run",status="ok"} 1.0',
        "assistant_worker_conversations_in_flight 0.0",
        "assistant_worker_pacing_limit ",
        "assistant_worker_build_info{version=",
    )
    # The reply can reach us a moment before the relay has counted its broker confirm.
    async with asyncio.timeout(5):
        while await worker.metrics_missing(expected):  # noqa: ASYNC110 - polling an HTTP page
            await asyncio.sleep(0.05)

    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0
    records = [json.loads(line) for line in worker.lines]
    events = [r["event"] for r in records]
    assert "worker_stopping" in events
    assert "worker_stopped" in events
    reply_log = next(r for r in records if r["event"] == "reply_recorded")
    assert reply_log["conversation_id"] == "c-proc"
    assert reply_log["thread_id"] == reply["thread_id"]
    assert reply_log["run_id"] == reply["run_id"]
    assert API_KEY not in "".join(worker.lines)


async def test_secrets_stay_out_of_logs_when_a_connection_fails(
    settings: Settings, spawn: list[WorkerProcess]
) -> None:
    password = "wr0ng-s3cret-pw"
    env = worker_env(settings, AW_AMQP_URL=f"amqp://guest:{password}@127.0.0.1:5672/")
    worker = await _spawn(env, "run")
    spawn.append(worker)
    assert await worker.finish() == 1
    output = "".join(worker.lines)
    assert "worker_failed" in output
    assert password not in output
    assert API_KEY not in output


async def test_migrate_command_reports_what_it_applied(
    settings: Settings, spawn: list[WorkerProcess]
) -> None:
    migrate = await _spawn(worker_env(settings), "migrate")
    spawn.append(migrate)
    assert migrate.proc.stdout is not None
    out = (await migrate.proc.stdout.read()).decode()
    assert await migrate.finish() == 0
    assert out.strip() == "database schema is up to date"


async def test_demo_command_prints_a_reply_for_every_scripted_message(
    settings: Settings, spawn: list[WorkerProcess]
) -> None:
    demo = await _spawn(worker_env(settings), "demo", "--timeout-s", "30")
    spawn.append(demo)
    assert demo.proc.stdout is not None
    out = (await demo.proc.stdout.read()).decode()
    assert await demo.finish(timeout_s=40) == 0, out + "".join(demo.lines)
    assert "every message was answered" in out
    assert out.count("assistant A") >= 2
    assert out.count("assistant B") >= 1


async def test_sigterm_turns_unready_drains_in_flight_work_and_exits_in_time(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    spawn: list[WorkerProcess],
) -> None:
    env = worker_env(settings, AW_SHUTDOWN_GRACE_S="4")
    worker = await _spawn(env, "run")
    spawn.append(worker)
    await worker.wait_for_log("worker_started")
    events = [
        await publish(
            channel, topology, conversation_id=f"c-drain-{n}", text=f"d{n} [[delay_ms:1500]]"
        )
        for n in range(4)
    ]
    await worker.wait_for_log("run_started")
    worker.proc.send_signal(signal.SIGTERM)
    statuses = set()
    while worker.proc.returncode is None:
        with contextlib.suppress(aiohttp.ClientError):
            statuses.add(await worker.probe("/readyz"))
        await asyncio.sleep(0.05)
    assert 503 in statuses, "readiness should fail while draining"
    assert await worker.finish(timeout_s=10) == 0
    # In-flight runs finished within the grace period: every reply is out, none twice.
    replies = await replies_for(channel, topology, {e["event_id"] for e in events})
    assert sorted(r["in_reply_to"][0] for r in replies) == sorted(e["event_id"] for e in events)
