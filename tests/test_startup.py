"""A worker started while a server is down waits for it: alive, unready, backing off, one line
an attempt, and SIGTERM ends the wait. What waiting cannot mend ends the process at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from tests.ports import free_port
from tests.support import AMQP_URL, admin_sql, dsn_for, worker_env
from worker import events
from worker.health import Health
from worker.ops.cli import _hint
from worker.profiles.config import profiles_of
from worker.service import WorkerService
from worker.settings import Settings
from worker.startup import Endpoint, Server, StoppedWhileWaiting, wait_for

REPO = Path(__file__).resolve().parent.parent


class Worker:
    """`assistant-worker run` in a process of its own, its JSON log lines read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.raw.append(line.decode())
            with contextlib.suppress(ValueError):
                self.records.append(json.loads(line))

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]

    async def wait_for_log(self, event: str, count: int = 1, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.logged(event)) < count:
                if self.proc.returncode is not None:
                    raise AssertionError("worker exited early:\n" + "".join(self.raw))
                await asyncio.sleep(0.05)

    async def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        [serving] = self.logged("health_serving")
        url = f"http://127.0.0.1:{serving['health_port']}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.json()

    async def terminate(self, timeout_s: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.finish(timeout_s)

    async def finish(self, timeout_s: float = 20) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code


@pytest.fixture
async def spawn() -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.returncode is None:
            w.proc.kill()
            await w.proc.wait()


async def _start(spawned: list[Worker], env: dict[str, str]) -> Worker:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    spawned.append(Worker(proc))
    return spawned[-1]


class LateServer:
    """A port nobody listens on until `open()`; then a TCP relay to the real server there."""

    def __init__(self, url: str) -> None:
        target = urlsplit(url)
        assert target.hostname is not None
        assert target.port is not None
        self._target = (target.hostname, target.port)
        self.port = free_port()
        self.url = url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{self.port}")
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(_copy(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


def _rabbitmq_on(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


async def test_a_worker_waits_for_rabbitmq_alive_unready_and_backing_off(
    settings: Settings, spawn: list[Worker]
) -> None:
    port = free_port()
    worker = await _start(spawn, worker_env(settings, AW_AMQP_URL=_rabbitmq_on(port)))
    await worker.wait_for_log("waiting_for_rabbitmq", count=3)

    assert (await worker.probe("/livez"))[0] == 200
    status, body = await worker.probe("/readyz")
    assert status == 503
    assert body["checks"]["postgres"] is True
    assert {"rabbitmq", "consuming"} <= set(body["missing"])
    assert body["waiting_for"] == "rabbitmq: connection refused"

    waits = worker.logged("waiting_for_rabbitmq")
    assert [w["attempt"] for w in waits] == list(range(1, len(waits) + 1))
    assert all(w["reason"] == "connection refused" for w in waits)
    assert all(w["address"] == f"127.0.0.1:{port}" for w in waits)
    assert waits[2]["retry_in_s"] > waits[0]["retry_in_s"]

    assert await worker.terminate() == 0
    [stopped] = worker.logged("worker_stopped")
    assert stopped["while_waiting_for"] == "rabbitmq"
    assert not worker.logged("worker_started")
    output = "".join(worker.raw)
    # One line an attempt: the client library's own connect errors are not repeated.
    assert len(worker.raw) == len(worker.records)
    assert "error when creating transport" not in output
    assert "guest:guest" not in output


async def test_a_worker_becomes_ready_once_rabbitmq_comes_back(
    settings: Settings, spawn: list[Worker]
) -> None:
    rabbitmq = LateServer(AMQP_URL)
    try:
        worker = await _start(spawn, worker_env(settings, AW_AMQP_URL=rabbitmq.url))
        await worker.wait_for_log("waiting_for_rabbitmq", count=2)
        await rabbitmq.open()
        await worker.wait_for_log("worker_started", timeout_s=20)
        assert (await worker.probe("/readyz"))[0] == 200
        assert await worker.terminate() == 0
    finally:
        await rabbitmq.close()


async def test_a_worker_waits_for_postgres_and_sigterm_ends_the_wait(
    settings: Settings, spawn: list[Worker]
) -> None:
    port = free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/aw"
    worker = await _start(spawn, worker_env(settings, AW_DATABASE_URL=dsn))
    await worker.wait_for_log("waiting_for_postgres", count=2)
    status, body = await worker.probe("/readyz")
    assert status == 503
    assert {"postgres", "rabbitmq", "consuming"} <= set(body["missing"])
    assert body["waiting_for"] == "postgres: connection refused"
    assert await worker.terminate() == 0
    assert not worker.logged("waiting_for_rabbitmq")


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"aw_test_empty_{uuid.uuid4().hex[:10]}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    yield dsn_for(name)
    await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("database", ["missing", "unmigrated"])
async def test_what_waiting_cannot_mend_ends_the_process_at_once(
    settings: Settings, spawn: list[Worker], empty_database: str, database: str
) -> None:
    missing = dsn_for(f"aw_test_missing_{uuid.uuid4().hex[:10]}")
    dsn = missing if database == "missing" else empty_database
    worker = await _start(spawn, worker_env(settings, AW_DATABASE_URL=dsn))
    assert await worker.finish(timeout_s=15) == 1
    [failed] = worker.logged("worker_failed")
    assert "assistant-worker migrate" in failed["hint"]
    assert not worker.logged("waiting_for_postgres")


async def test_a_missing_schema_file_stops_the_worker_before_it_connects(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(events, "SCHEMAS_DIR", tmp_path)
    events.validator.cache_clear()
    try:
        # Nothing listens at these addresses: the check has to come before any connect.
        closed = free_port()
        settings = Settings(
            amqp_url=SecretStr(_rabbitmq_on(closed)),
            database_url=SecretStr(f"postgresql://postgres@127.0.0.1:{closed}/aw"),
            openai_api_key=SecretStr("sk-unused"),
        )
        with pytest.raises(FileNotFoundError) as raised:
            await asyncio.wait_for(
                WorkerService(settings, profiles_of(settings)).run(asyncio.Event()), timeout=5
            )
    finally:
        events.validator.cache_clear()
    missing = str(tmp_path / "user_message.v1.json")
    assert raised.value.filename == missing
    # What `assistant-worker run` logs as the hint of its one worker_failed line.
    assert missing in (_hint(raised.value, settings) or "")


async def test_sigterm_interrupts_a_connect_attempt_that_hangs() -> None:
    # A server that accepts the connection and then says nothing, while the pod is stopped.
    stop = asyncio.Event()

    async def hang() -> None:
        await asyncio.Event().wait()

    asyncio.get_running_loop().call_later(0.1, stop.set)
    endpoint = Endpoint.of(Server.RABBITMQ, "amqp://guest:guest@rabbit.internal/")
    with pytest.raises(StoppedWhileWaiting, match="rabbitmq"):
        await asyncio.wait_for(wait_for(endpoint, hang, stop, Health()), timeout=2)
