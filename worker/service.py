"""The worker process: wires the parts together and owns their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aio_pika
import asyncpg
import openai
import structlog
from aio_pika.abc import AbstractRobustConnection

from worker import topology, tracing
from worker.backends.assistants import AssistantsBackend
from worker.backends.base import Backend
from worker.backends.files import Files
from worker.backends.responses import ResponsesBackend
from worker.health import Health, HealthServer, probe_database_forever
from worker.metrics import Metrics
from worker.profiles.config import close_tools
from worker.profiles.model import Profiles
from worker.profiles.synced import with_synced_ids
from worker.relay.activity import Activity, ActivityPublisher, ActivitySink, NoActivity
from worker.relay.consume import Consumer
from worker.relay.conversation import ConversationProcessor
from worker.relay.endings import WebhookEndings
from worker.relay.intake import Intake
from worker.relay.ownership import Ownership
from worker.relay.pacing import Pacer
from worker.relay.polling import PollSchedule
from worker.relay.publish import OutboxRelay
from worker.relay.retry import RetryPolicy, internal_backoff
from worker.relay.runner import Runner
from worker.settings import BackendName, Settings
from worker.startup import Endpoint, Server, StoppedWhileWaiting, check_contract, wait_for
from worker.store.migrate import check_schema
from worker.store.ports import OutboxStore, Store
from worker.store.postgres import PostgresStore, create_pool

log = structlog.get_logger("worker.service")
# How long a stopping worker waits for its last spans to be exported.
TRACES_FLUSH_S = 5.0


def make_backends(settings: Settings, client: openai.AsyncOpenAI) -> dict[str, Backend]:
    """Both backends: new conversations use the configured one, older ones keep theirs."""
    return {
        BackendName.ASSISTANTS.value: AssistantsBackend(client),
        BackendName.RESPONSES.value: ResponsesBackend(client, prompt_id=settings.prompt_id),
    }


def make_client(settings: Settings) -> openai.AsyncOpenAI:
    # max_retries=0: worker.relay.retry owns retries (see there why). The aiohttp transport costs
    # about 40 % less CPU per request than the default one (bench/sdk_cost.py).
    return openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        timeout=settings.openai_timeout_s,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(timeout=settings.openai_timeout_s),
    )


class WorkerService:
    """One worker process: its servers, its relay loops, and their start and stop.

    It wires the relay (consumer, intake, ownership, conversation loop, outbox relay) to the
    store, the broker and the model API, keeps the health probes honest about each, and stops
    as a whole when any background loop dies, so Kubernetes restarts a process that is whole.
    """

    def __init__(self, settings: Settings, profiles: Profiles) -> None:
        """`profiles` are read before (profiles_of): a bad file stops the process before it
        opens anything."""
        self.settings = settings
        self._profiles = profiles
        # Webhooks on: where runs hear of their endings (made with the pools).
        self._endings: WebhookEndings | None = None
        self.ready = asyncio.Event()
        self.metrics = Metrics()
        self.health = Health()
        self.health_port: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Waits (unready) for the servers, consumes until `stop` is set, then drains within the
        grace period and returns. Raises what will not mend by waiting: bad credentials, a
        missing database or schema, a missing schema or SQL file."""
        check_contract()
        # Before any client is made: the instrumentations hook aiohttp's and aio-pika's classes.
        traces = tracing.setup()
        try:
            async with self._resources(stop) as resources:
                await self._serve(stop, *resources)
        except StoppedWhileWaiting as exc:
            log.info("worker_stopped", while_waiting_for=str(exc))
            return
        finally:
            if traces is not None:
                traces.shutdown(TRACES_FLUSH_S)
        log.info("worker_stopped")

    async def _serve(
        self,
        stop: asyncio.Event,
        store: Store,
        relay_store: OutboxStore,
        connection: AbstractRobustConnection,
        client: openai.AsyncOpenAI,
    ) -> None:
        s = self.settings
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=s.concurrency)
        publish_channel = await connection.channel(publisher_confirms=True)
        if s.declare_topology:
            await topology.declare(publish_channel, s.topology)
        relay = OutboxRelay(relay_store, publish_channel, s.outbox_interval_s, self.metrics)
        pacer = Pacer(ceiling=s.concurrency, lag_limit_s=s.loop_lag_limit_ms / 1000)
        activity = await self._activity(connection)
        ownership = self._ownership(store, client, relay, pacer, activity)
        self.metrics.in_flight.set_function(lambda: ownership.in_flight)
        self.metrics.pacing_limit.set_function(lambda: pacer.limit)
        intake = Intake(s, self._profiles, store, ownership, relay.wake, self.metrics, pacer)
        # A declared (passive) queue, not a bare handle: only those get their consumer back
        # when the robust connection recovers from a broker restart.
        queue = await consume_channel.get_queue(s.topology.inbound_queue)
        consumer = Consumer(queue, intake, internal_backoff(s))
        async with _background(
            relay.run_forever(),
            pacer.watch_forever(),
            ownership.renew_forever(),
            ownership.sweep_forever(),
            probe_database_forever(store, self.health, self.metrics, interval_s=2.0),
            *([activity.run_forever()] if isinstance(activity, ActivityPublisher) else []),
            *([self._endings.listen_forever()] if self._endings is not None else []),
        ) as crashed:
            self.health.database_ok = True
            await consumer.start()
            self.health.consuming = True
            self.ready.set()
            log.info(
                "worker_started",
                backend=s.backend.value,
                concurrency=s.concurrency,
                health_port=self.health_port,
            )
            await _first_of(stop.wait(), crashed.wait())
            self.health.failed = crashed.is_set()
            await self._drain(consumer, ownership, relay)
            if crashed.is_set():
                raise RuntimeError("a background task died; see the log above")

    async def _drain(self, consumer: Consumer, ownership: Ownership, relay: OutboxRelay) -> None:
        """Stops taking work, lets in-flight work finish within the grace period, hands back the
        rest (unacknowledged, so the broker redelivers it) and publishes what was recorded."""
        self.ready.clear()
        self.health.draining = True
        log.info("worker_stopping", grace_s=self.settings.shutdown_grace_s)
        await consumer.stop_consuming()
        await ownership.stop_sweeps()
        await consumer.drain(self.settings.shutdown_grace_s)
        await relay.stop()

    async def _activity(self, connection: AbstractRobustConnection) -> ActivitySink:
        """assistant_activity.v1 on its own unconfirmed channel, when configured."""
        s = self.settings
        if not s.activity_routing_key:
            return NoActivity()
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.get_exchange(s.topology.outbound_exchange, ensure=False)

        def message(body: bytes, activity: Activity) -> aio_pika.Message:
            return aio_pika.Message(
                body,
                content_type="application/json",
                message_id=activity.event_id,
                headers={"x-aw-conversation-id": activity.conversation_id},
                expiration=60,  # a minute-old "typing..." is noise
            )

        return ActivityPublisher(exchange, s.activity_routing_key, message)

    def _ownership(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        relay: OutboxRelay,
        pacer: Pacer,
        activity: ActivitySink,
    ) -> Ownership:
        s = self.settings
        api_retry = RetryPolicy(
            s.api_attempts, s.api_backoff_base_s, s.api_backoff_cap_s, metrics=self.metrics
        )
        schedule = PollSchedule(s.poll_initial_ms, s.poll_max_ms, s.poll_growth)
        runners = {
            name: Runner(
                backend,
                api_retry,
                schedule,
                s.run_deadline_s,
                pacer,
                self._endings if name == BackendName.RESPONSES else None,
            )
            for name, backend in make_backends(s, client).items()
        }
        processor = ConversationProcessor(
            s,
            store,
            runners,
            self._profiles,
            Files(client),
            api_retry,
            relay.wake,
            self.metrics,
            pacer,
            activity,
        )
        return Ownership(
            store,
            processor.process,
            owner=s.worker_name,
            capacity=s.concurrency,
            ttl_s=s.lease_ttl_s,
            sweep_interval_s=s.sweep_interval_s,
            metrics=self.metrics,
        )

    @contextlib.asynccontextmanager
    async def _resources(
        self, stop: asyncio.Event
    ) -> AsyncIterator[tuple[Store, OutboxStore, AbstractRobustConnection, openai.AsyncOpenAI]]:
        """The conversations' store, the relay's store (own connections, so a reply waiting to
        be published does not queue behind every conversation's statements), the broker and
        the API client. The probes answer first, so a worker waiting for a server that is down
        is seen alive and unready rather than restarted over and over."""
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            server = HealthServer(self.health, self.metrics)
            self.health_port = await server.start(s.health_host, s.health_port)
            stack.push_async_callback(server.stop)
            log.info("health_serving", health_port=self.health_port)
            postgres = Endpoint.of(Server.POSTGRES, s.database_url.get_secret_value())
            pool, relay_pool = await wait_for(postgres, self._open_pools, stop, self.health)
            stack.push_async_callback(pool.close)
            stack.push_async_callback(relay_pool.close)
            self.health.database_ok = True
            # What `assistants sync` made for the profiles (their knowledge's vector stores,
            # their assistants), read once the database is there.
            self._profiles = await with_synced_ids(
                self._profiles, s.database_url.get_secret_value()
            )
            rabbitmq = Endpoint.of(Server.RABBITMQ, s.amqp_url.get_secret_value())
            connection = await wait_for(rabbitmq, self._connect_broker, stop, self.health)
            stack.push_async_callback(connection.close)
            self.health.broker_connected = connection.connected.is_set
            client = await stack.enter_async_context(make_client(s))
            stack.push_async_callback(close_tools, self._profiles)
            store = PostgresStore(pool, batch_max_events=s.batch_max_events)
            if s.webhooks:
                self._endings = WebhookEndings(
                    lambda: asyncpg.connect(s.database_url.get_secret_value()),
                    store.response_ended,
                    s.webhook_sweep_s,
                )
                self.metrics.webhook_wait_oldest.set_function(self._endings.oldest_wait_s)
            yield store, PostgresStore(relay_pool), connection, client

    async def _open_pools(self) -> tuple[asyncpg.Pool, asyncpg.Pool]:
        """Both pools, once the schema is known to be new enough; nothing is left open if not."""
        dsn = self.settings.database_url.get_secret_value()
        await check_schema(dsn)
        pool = await create_pool(dsn, max_size=min(20, self.settings.concurrency + 4))
        try:
            relay_pool = await create_pool(dsn, max_size=2)
        except BaseException:
            await pool.close()
            raise
        return pool, relay_pool

    async def _connect_broker(self) -> AbstractRobustConnection:
        s = self.settings
        return await aio_pika.connect_robust(
            s.amqp_url.get_secret_value(),
            client_properties={"connection_name": f"assistant-worker {s.worker_name}"},
        )


@contextlib.asynccontextmanager
async def _background(*loops: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Event]:
    """Runs side loops for the block; the event fires if one of them dies (then we stop)."""
    crashed = asyncio.Event()

    def on_done(task: asyncio.Task[None]) -> None:
        # Returning normally is a deliberate stop; only an exception means the loop died.
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_died", task=task.get_name(), error=repr(task.exception()))
            crashed.set()

    tasks = [asyncio.create_task(loop) for loop in loops]
    for task in tasks:
        task.add_done_callback(on_done)
    try:
        yield crashed
    finally:
        for task in tasks:
            task.remove_done_callback(on_done)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.create_task(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
