"""Assembly of the stand-in: the aiohttp app, its lifecycle and the Python API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from worker.standin.assistants_api import AssistantsApi
from worker.standin.clock import Clock
from worker.standin.config import LiveConfig, StandInConfig
from worker.standin.control_api import ControlApi
from worker.standin.conversations_api import ConversationsApi
from worker.standin.faults import FaultInjector, FaultRule
from worker.standin.files_api import FilesApi
from worker.standin.journal import Journal
from worker.standin.middleware import v1_middleware
from worker.standin.response_engine import ResponseEngine
from worker.standin.responses_api import ResponsesApi
from worker.standin.run_engine import RunEngine
from worker.standin.runs_api import RunsApi
from worker.standin.state import StandInState

logger = logging.getLogger(__name__)

_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# In-flight handlers (slow faults, hanging requests) must not hold up a test's teardown.
_SHUTDOWN_TIMEOUT_S = 1.0


class StandIn:
    """An in-process OpenAI API stand-in listening on a real socket."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        self._config = LiveConfig(config or StandInConfig())
        self.state = StandInState()
        self._clock = Clock()
        self._faults = FaultInjector(self._config.current.seed)
        self._journal = Journal()
        runs = RunEngine(self.state, self._clock, self._config)
        responses = ResponseEngine(self.state, self._clock, self._config)
        self.app = web.Application(
            middlewares=[v1_middleware(self._faults, self._journal)],
            client_max_size=_MAX_UPLOAD_BYTES,
        )
        apis = (
            AssistantsApi(self.state, runs, self._config),
            RunsApi(self.state, runs, self._config),
            FilesApi(self.state),
            ResponsesApi(self.state, responses, self._config),
            ConversationsApi(self.state, responses),
            ControlApi(self),
        )
        for api in apis:
            self.app.add_routes(api.routes())
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def config(self) -> StandInConfig:
        return self._config.current

    @property
    def journal(self) -> list[dict[str, Any]]:
        return self._journal.entries

    @property
    def fault_rules(self) -> list[FaultRule]:
        return self._faults.rules

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the stand-in is not running")
        return self._base_url

    def add_faults(self, rules: Iterable[Mapping[str, Any]]) -> None:
        self._faults.add(rules)

    def clear_faults(self) -> None:
        self._faults.clear()

    def clear_journal(self) -> None:
        self._journal.clear()

    def update_config(self, changes: Mapping[str, Any]) -> StandInConfig:
        config = self._config.current.updated(changes)
        self._config.current = config
        if "seed" in changes:
            self._faults.reseed(config.seed)
        return config

    def reset(self) -> None:
        """Forget everything: state, pending timers, faults and the journal."""
        self._clock.cancel_all()
        self._release_waiters()
        self.state.clear()
        self._faults.clear()
        self._faults.reseed(self._config.current.seed)
        self._journal.clear()

    def _release_waiters(self) -> None:
        """Answer non-background creates whose response will never settle now."""
        for response in self.state.responses.values():
            response.settled.set()

    def run_records(self) -> list[dict[str, Any]]:
        """Every run and response ever created, oldest first."""
        records = [run.record() for run in self.state.runs.values()]
        records += [response.record() for response in self.state.responses.values()]
        return sorted(records, key=lambda record: float(record["created_at"]))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); returns the ``/v1`` base URL."""
        if self._runner is not None:
            raise RuntimeError("the stand-in is already running")
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{url_host}:{bound_port}/v1"
        return self._base_url

    async def stop(self) -> None:
        self._clock.cancel_all()
        self._release_waiters()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._base_url = None


async def serve(config: StandInConfig, host: str, port: int) -> None:
    """Run a stand-in until cancelled (the ``assistant-worker standin`` command)."""
    standin = StandIn(config)
    base_url = await standin.start(host, port)
    logger.info("OpenAI stand-in listening on %s", base_url)
    try:
        await asyncio.Event().wait()
    finally:
        await standin.stop()
