"""Liveness and readiness over HTTP (`/livez`, `/readyz`), for Kubernetes probes and tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from worker.metrics import Metrics
from worker.store.ports import HealthStore

log = structlog.get_logger("worker.health")


@dataclass
class Health:
    """What the probes report. Ready means: connected to both servers and consuming."""

    broker_connected: Callable[[], bool] = lambda: False
    database_ok: bool = False
    consuming: bool = False
    draining: bool = False
    failed: bool = False
    # While starting: the server waited for and why, e.g. "rabbitmq: connection refused".
    waiting_for: str | None = None

    def checks(self) -> dict[str, bool]:
        return {
            "rabbitmq": self.broker_connected(),
            "postgres": self.database_ok,
            "consuming": self.consuming and not self.draining,
        }

    @property
    def ready(self) -> bool:
        return all(self.checks().values())


async def probe_database_forever(
    store: HealthStore, health: Health, metrics: Metrics, interval_s: float
) -> None:
    """Keeps readiness and the outbox backlog gauge current, one cheap query a round."""
    while True:
        try:
            async with asyncio.timeout(interval_s):
                metrics.outbox_backlog.set(await store.outbox_backlog())
            ok = True
        except Exception:  # noqa: BLE001 - any failure means "not reachable now"
            ok = False
        if ok != health.database_ok:
            log.warning("postgres_reachable" if ok else "postgres_unreachable")
        health.database_ok = ok
        await asyncio.sleep(interval_s)


class HealthServer:
    """`/livez`, `/readyz` and `/metrics` on one port."""

    def __init__(self, health: Health, metrics: Metrics) -> None:
        self._health = health
        self._metrics = metrics
        # Read at each scrape, so an alert sees what /readyz would answer then.
        metrics.ready.set_function(lambda: 1.0 if health.ready else 0.0)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.add_routes(
            [
                web.get("/livez", self._livez),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics_page),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _livez(self, _request: web.Request) -> web.Response:
        # Answering at all proves the event loop runs; a dead side loop means restart us.
        alive = not self._health.failed
        return _json({"alive": alive}, 200 if alive else 503)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), content_type="text/plain", charset="utf-8"
        )

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = self._health.checks()
        ready = all(checks.values())
        body: dict[str, object] = {"ready": ready, "checks": checks}
        if not ready:
            body["missing"] = [name for name, ok in checks.items() if not ok]
        if self._health.waiting_for is not None:
            body["waiting_for"] = self._health.waiting_for
        return _json(body, 200 if ready else 503)


def _json(body: object, status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")
