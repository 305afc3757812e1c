"""The receiver's HTTP server: OpenAI posts deliveries to POST /webhooks/openai; the probes
(`/livez`, `/readyz`) and `/metrics` share the port, as on the worker's health server.

A delivery is verified before anything else is done with it, recorded once (on its webhook-id)
and answered 200, a duplicate too; one that cannot be recorded is answered 503, so OpenAI
retries it (for up to 72 hours). Nothing from a body is logged but the event type and the
response ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from worker.errors import StoreUnavailable
from worker.health import Health
from worker.metrics import add_runtime_collectors, start_at_zero
from worker.settings import Settings
from worker.startup import Endpoint, Server, StoppedWhileWaiting, wait_for
from worker.store.migrate import check_schema
from worker.store.postgres import create_pool
from worker.webhooks.store import DeliveryStore
from worker.webhooks.verify import Delivery, Refusal, Refused, Verifier, signed_headers

# The URL to register with OpenAI (https://<ingress host>/webhooks/openai).
WEBHOOK_PATH = "/webhooks/openai"
ACCEPTED, DUPLICATE, UNAVAILABLE = "accepted", "duplicate", "unavailable"
OUTCOMES = (ACCEPTED, DUPLICATE, *(refusal.value for refusal in Refusal), UNAVAILABLE)

log = structlog.get_logger("worker.webhooks")


class WebhookMetrics:
    """The receiver's metrics, in a registry of its own (as the worker's), every outcome counted
    from zero so that an alert sees the first one, its readiness as a gauge (the receiver sets
    it), with the process and runtime collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        add_runtime_collectors(self.registry)
        self.deliveries = Counter(
            "assistant_worker_webhook_deliveries",
            "Webhook deliveries by outcome: accepted, duplicate, unavailable (answered 503, for "
            "OpenAI to retry) or why refused.",
            ["outcome"],
            registry=self.registry,
        )
        start_at_zero(self.deliveries, ((outcome,) for outcome in OUTCOMES))
        self.ready = Gauge(
            "assistant_worker_webhooks_ready",
            "1 while the receiver's /readyz answers 200 (Postgres connected); 0 while starting, "
            "waiting for Postgres or draining.",
            registry=self.registry,
        )

    def count(self, outcome: str) -> None:
        self.deliveries.labels(outcome=outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WebhookReceiver:
    """POST /webhooks/openai, `/livez`, `/readyz` and `/metrics` on one port.

    It answers as soon as it listens: alive, unready and 503 to deliveries until `connect`
    gives it the store, unready again once `stop` begins.
    """

    def __init__(self, verifier: Verifier, metrics: WebhookMetrics, max_body_bytes: int) -> None:
        self._verifier = verifier
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._store: DeliveryStore | None = None
        self._draining = False
        self._runner: web.AppRunner | None = None
        # wait_for says here what the receiver is waiting for while it starts.
        self.startup = Health()
        # Read at each scrape, so an alert sees what /readyz would answer then.
        metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    async def start(self, host: str, port: int, *, shutdown_timeout_s: float = 10.0) -> int:
        """Listens on `host`:`port` (0: any free port) and returns the port."""
        # aiohttp stops reading a body past client_max_size: no body is held whole beyond it.
        app = web.Application(client_max_size=self._max_body_bytes)
        app.add_routes(
            [
                web.post(WEBHOOK_PATH, self._deliver),
                web.get("/livez", self._livez),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics_page),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound: int = self._runner.addresses[0][1]
        return bound

    def connect(self, store: DeliveryStore) -> None:
        self._store = store

    async def stop(self) -> None:
        """Stops listening; deliveries in flight finish first (within the shutdown timeout)."""
        self._draining = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def ready(self) -> bool:
        return self._store is not None and not self._draining

    async def _deliver(self, request: web.Request) -> web.Response:
        try:
            signed = signed_headers(request.headers)
            delivery = self._verifier.verify(await self._body(request), signed)
        except Refused as refused:
            self._metrics.count(refused.refusal.value)
            # Debug only: a flood of forged deliveries must not flood the log; the metric counts.
            log.debug("webhook_refused", outcome=refused.refusal.value)
            return _json({"refused": refused.refusal.value}, refused.refusal.status)
        return await self._record(delivery)

    async def _body(self, request: web.Request) -> bytes:
        declared = request.content_length
        if declared is not None and declared > self._max_body_bytes:
            raise Refused(Refusal.TOO_LARGE)  # refused unread
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:  # no length declared, or a false one
            raise Refused(Refusal.TOO_LARGE) from None

    async def _record(self, delivery: Delivery) -> web.Response:
        event_type, response_id = delivery.event_type, delivery.response_id
        try:
            if self._store is None:
                raise StoreUnavailable("Postgres not connected yet")
            new = await self._store.record(delivery.webhook_id, event_type, response_id)
        except StoreUnavailable as exc:
            self._metrics.count(UNAVAILABLE)
            log.warning(
                "webhook_unrecorded", event_type=event_type, response_id=response_id, error=str(exc)
            )
            return _json({"status": UNAVAILABLE}, 503)
        outcome = ACCEPTED if new else DUPLICATE
        self._metrics.count(outcome)
        log.info(f"webhook_{outcome}", event_type=event_type, response_id=response_id)
        return _json({"status": outcome}, 200)

    async def _livez(self, _request: web.Request) -> web.Response:
        return _json({"alive": True}, 200)

    async def _readyz(self, _request: web.Request) -> web.Response:
        body: dict[str, object] = {"ready": self.ready}
        if self.startup.waiting_for is not None:
            body["waiting_for"] = self.startup.waiting_for
        return _json(body, 200 if self.ready else 503)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), content_type="text/plain", charset="utf-8"
        )


class WebhookService:
    """The `assistant-worker webhooks` process: the receiver, and Postgres waited for."""

    def __init__(self, settings: Settings, verifier: Verifier) -> None:
        self.settings = settings
        self.metrics = WebhookMetrics()
        self.receiver = WebhookReceiver(verifier, self.metrics, settings.webhook_max_body_bytes)
        self.ready = asyncio.Event()
        self.port: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Listens at once (alive, unready), waits for Postgres, receives until `stop` is set,
        then lets deliveries in flight finish. Raises what will not mend by waiting: refused
        credentials, a missing database, an old schema."""
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            self.port = await self.receiver.start(
                s.webhook_host, s.webhook_port, shutdown_timeout_s=s.shutdown_grace_s
            )
            stack.push_async_callback(self.receiver.stop)
            postgres = Endpoint.of(Server.POSTGRES, s.database_url.get_secret_value())
            try:
                pool = await wait_for(postgres, self._open_pool, stop, self.receiver.startup)
            except StoppedWhileWaiting as exc:
                log.info("webhooks_stopped", while_waiting_for=str(exc))
                return
            stack.push_async_callback(pool.close)
            self.receiver.connect(DeliveryStore(pool))
            self.ready.set()
            log.info("webhooks_serving", port=self.port, path=WEBHOOK_PATH)
            await stop.wait()
            log.info("webhooks_stopping", grace_s=s.shutdown_grace_s)
            await self.receiver.stop()  # before the pool closes under deliveries in flight
        log.info("webhooks_stopped")

    async def _open_pool(self) -> asyncpg.Pool:
        dsn = self.settings.database_url.get_secret_value()
        await check_schema(dsn)
        return await create_pool(dsn)


def _json(body: object, status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")
