"""RabbitMQ and Postgres restart under load: the worker goes unready, recovers by itself, and
every event is still answered exactly once.

These restart the machine's own servers (marker `disruptive`); `make test` runs them.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.harness import ReplyCollector, Supervisor, chaos_env, check
from tests.support import publish, worker_env
from worker.settings import Settings, Topology

pytestmark = [pytest.mark.disruptive, pytest.mark.timeout(180)]


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture
async def one_worker(settings: Settings, tmp_path: Path) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(chaos_env(worker_env(settings)), 1, tmp_path)
    await supervisor.start()
    await supervisor.wait_ready()
    yield supervisor
    await supervisor.stop()


async def _readiness(port: int) -> int | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response,
        ):
            return response.status
    except aiohttp.ClientError:
        return None


async def _wait_for_readiness(port: int, status: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while await _readiness(port) != status:  # noqa: ASYNC110 - polling an HTTP probe
            await asyncio.sleep(0.2)


async def _load(channel: AbstractChannel, topology: Topology) -> list[dict[str, object]]:
    return [
        await publish(
            channel, topology, conversation_id=f"restart-{n % 10}", text=f"r{n} [[delay_ms:400]]"
        )
        for n in range(60)
    ]


def _postgres(action: str) -> tuple[str, ...]:
    cluster = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    fast = ("-m", "fast") if action == "stop" else ()
    return ("pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", action, *fast)


# What stops a server, and what brings it back (and waits until it serves).
Commands = list[tuple[str, ...]]
OUTAGES: dict[str, tuple[Commands, Commands]] = {
    "rabbitmq": (
        [("rabbitmqctl", "stop_app")],
        [("rabbitmqctl", "start_app"), ("rabbitmqctl", "await_startup")],
    ),
    "postgres": ([_postgres("stop")], [_postgres("start")]),
}


@pytest.mark.parametrize("server", sorted(OUTAGES))
async def test_a_server_restart_mid_load_is_survived(
    server: str,
    one_worker: Supervisor,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    collector: ReplyCollector,
) -> None:
    stop, start = OUTAGES[server]
    sent = await _load(channel, topology)
    await asyncio.sleep(0.5)
    [port] = one_worker.health_ports()
    for command in stop:
        await asyncio.to_thread(_run, *command)
    try:
        await _wait_for_readiness(port, 503, timeout_s=15)
        await asyncio.sleep(1.5)
    finally:
        for command in start:
            await asyncio.to_thread(_run, *command)
    await _wait_for_readiness(port, 200, timeout_s=60)

    await collector.wait_for_all(sent, timeout_s=90, workers=one_worker)
    assert check(sent, collector, standin).violations == {}
