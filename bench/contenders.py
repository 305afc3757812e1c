"""Starting and stopping the measured processes: the worker (either backend) or the baseline,
and, for the webhooks worker, its receiver (bench/webhooks.py)."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aio_pika.abc import AbstractChannel

from bench.scenarios import Contender, Scenario
from bench.services import REPO, clean_env, queue_stats, topology_env
from tests.support import AMQP_URL
from worker.settings import Topology

_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Wiring:
    """Where a contender connects for one run."""

    database_url: str
    openai_base_url: str
    topology: Topology


def command(contender: Contender) -> list[str]:
    if contender.is_baseline:
        return [sys.executable, "-m", "bench.baseline"]
    return [sys.executable, "-m", "worker", "run"]


def environment(contender: Contender, scenario: Scenario, wiring: Wiring) -> dict[str, str]:
    env = {
        **clean_env(),
        **topology_env(wiring.topology),
        "AW_AMQP_URL": AMQP_URL,
        "AW_DATABASE_URL": wiring.database_url,
        "AW_OPENAI_BASE_URL": wiring.openai_base_url,
        "AW_OPENAI_API_KEY": "sk-bench",
        "AW_CONCURRENCY": str(scenario.concurrency),
        # Logging costs CPU; warnings still show what went wrong.
        "AW_LOG_LEVEL": "warning",
        "AW_LOG_FORMAT": "json",
        "AW_HEALTH_HOST": "127.0.0.1",
        "AW_HEALTH_PORT": "0",
        "AW_WORKER_NAME": f"bench-{contender.key}",
    }
    if contender.backend is not None:
        env["AW_BACKEND"] = contender.backend
    if contender.webhooks:
        env["AW_WEBHOOKS"] = "true"
    return env


class MeasuredProcess:
    """A process whose CPU and memory a run measures: started with the run's environment,
    stopped with SIGTERM (kill -9 if it hangs); its output goes to `log_path`."""

    def __init__(self, label: str, argv: list[str], log_path: Path) -> None:
        self.label = label
        self.log_path = log_path
        self._argv = argv
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, env=env, cwd=REPO, stdout=log, stderr=log
            )

    async def stop(self) -> int | None:
        """SIGTERM, then kill -9 if it does not exit in time; returns the exit code."""
        if self._proc is None or self._proc.returncode is not None:
            return self.exit_code
        self._proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._proc.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            self._proc.kill()
            return await self._proc.wait()

    def check_running(self) -> None:
        if self.exit_code is not None:
            raise RuntimeError(f"{self.label} exited: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ContenderProcess(MeasuredProcess):
    """The worker or the baseline, ready once it consumes the inbound queue."""

    def __init__(self, contender: Contender, log_path: Path) -> None:
        super().__init__(contender.label, command(contender), log_path)

    async def wait_consuming(
        self, channel: AbstractChannel, queue: str, timeout_s: float = 60
    ) -> None:
        """Until the process consumes the inbound queue.

        The worker logs `worker_started` at info level, which AW_LOG_LEVEL=warning hides, so
        readiness is read from the broker instead: the queue has a consumer.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                self.check_running()
                if (await queue_stats(channel, queue)).consumers > 0:
                    return
                await asyncio.sleep(0.05)
