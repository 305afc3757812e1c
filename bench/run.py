"""One benchmark run: a fresh database and queues, the contender started, the load, the data."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bench.contenders import ContenderProcess, Wiring, environment
from bench.forge import ForgerProcess
from bench.load import ReplyCollector, Sent, publish_plan
from bench.measure import (
    QueueSampler,
    RunData,
    RunMetrics,
    Samplers,
    compute,
    peak_rss_bytes,
)
from bench.otlp_sink import OtlpSink
from bench.profile import Recording
from bench.scenarios import Contender, Scenario
from bench.services import StandInProcess, commit_count, declared, fresh_database, queue_stats
from bench.webhooks import ReceiverProcess, difference
from tests.support import AMQP_URL, tagged_topology
from worker.settings import Topology

# After the last event is answered, how long to keep listening for late duplicate replies.
SETTLE_S = 1.0


@dataclass
class Bench:
    """What lives for the whole invocation: the stand-in process and a broker connection."""

    standin: StandInProcess
    connection: AbstractRobustConnection
    channel: AbstractChannel
    log_dir: Path
    profile_dir: Path | None = None
    # Settings for the worker contenders only (a tuned row); the baseline keeps its defaults.
    worker_env: dict[str, str] = field(default_factory=dict)
    # Where the traced contender exports its spans.
    sink: OtlpSink = field(default_factory=OtlpSink)

    @property
    def rabbitmq_version(self) -> str:
        transport = getattr(self.connection, "transport", None)
        properties = transport.connection.server_properties if transport else {}
        version = properties.get("version", b"unknown")
        return version.decode() if isinstance(version, bytes) else str(version)


@contextlib.asynccontextmanager
async def bench(log_dir: Path, profile_dir: Path | None = None) -> AsyncIterator[Bench]:
    standin = StandInProcess(log_dir / "standin.log")
    sink = OtlpSink()
    await standin.start()
    await sink.start()
    try:
        connection = await aio_pika.connect_robust(
            AMQP_URL, client_properties={"connection_name": "assistant-worker bench"}
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            yield Bench(standin, connection, channel, log_dir, profile_dir, sink=sink)
        finally:
            await connection.close()
    finally:
        await sink.stop()
        await standin.stop()


@dataclass(frozen=True, slots=True)
class Setup:
    """What one run is and the names it uses: its scenario, contender and repetition, and the
    database and broker names that keep it apart from every other run."""

    scenario: Scenario
    contender: Contender
    repetition: int
    tag: str
    database: str
    topology: Topology

    @property
    def name(self) -> str:
        return f"{self.scenario.key}-{self.contender.key}-{self.repetition}"


async def run_once(
    bench: Bench, scenario: Scenario, contender: Contender, repetition: int
) -> RunMetrics:
    tag = f"bench{uuid.uuid4().hex[:10]}"
    setup = Setup(scenario, contender, repetition, tag, f"aw_{tag}", tagged_topology(tag))
    async with (
        fresh_database(setup.database, migrated=not contender.is_baseline) as dsn,
        declared(bench.channel, setup.topology),
        _receiver(bench, setup, dsn) as receiver,
    ):
        hooks = None if receiver is None else receiver.target
        await bench.standin.prepare(scenario.run_ms, scenario.queue_ms, [], hooks)
        process = await _start(bench, setup, dsn)
        try:
            await process.wait_consuming(bench.channel, setup.topology.inbound_queue)
            await _warm_up(bench, setup)
            await bench.standin.prepare(
                scenario.run_ms, scenario.queue_ms, scenario.fault_rules(), hooks
            )
            async with _profiled(bench, setup, process):
                data = await _drive(bench, setup, process, receiver)
        finally:
            exit_code = await process.stop()
        data.exit_code = exit_code
        if contender.traced:
            # Warm-up and load alike, flushed at the stop.
            data.spans = bench.sink.spans
        data.journal = await bench.standin.journal()
        data.runs = await bench.standin.runs()
        if receiver is not None:
            data.webhook_attempts = await bench.standin.webhook_attempts()
    if receiver is not None:
        data.receiver_exit_code = receiver.exit_code
    return compute(data)


async def _start(bench: Bench, setup: Setup, database_url: str) -> ContenderProcess:
    contender = setup.contender
    process = ContenderProcess(contender, bench.log_dir / f"{setup.name}.log")
    wiring = Wiring(database_url, bench.standin.base_url, setup.topology)
    env = environment(contender, setup.scenario, wiring)
    if not contender.is_baseline:
        env.update(bench.worker_env)
    if contender.traced:
        env.update(bench.sink.environment(contender.traced))
        bench.sink.spans = 0
    await process.start(env)
    return process


@contextlib.asynccontextmanager
async def _receiver(
    bench: Bench, setup: Setup, database_url: str
) -> AsyncIterator[ReceiverProcess | None]:
    """The webhooks worker's receiver, on the run's database, for the whole run (None for the
    other contenders)."""
    if not setup.contender.webhooks:
        yield None
        return
    receiver = ReceiverProcess(bench.log_dir / f"{setup.name}-receiver.log")
    await receiver.start(receiver.environment(database_url, bench.worker_env))
    try:
        await receiver.wait_ready()
        yield receiver
    finally:
        await receiver.stop()


@contextlib.asynccontextmanager
async def _profiled(bench: Bench, setup: Setup, process: ContenderProcess) -> AsyncIterator[None]:
    """py-spy on the contender from its first consumed message on (start-up is not the load)."""
    if bench.profile_dir is None:
        yield
        return
    recording = Recording(process.pid, bench.profile_dir / f"{setup.name}.txt")
    await recording.start()
    try:
        yield
    finally:
        await recording.stop()


async def _warm_up(bench: Bench, setup: Setup) -> None:
    """The contender answers the scenario's warm-up events first; then the stand-in forgets
    them (threads, runs, journal), so the measured load starts from a clean record."""
    plan = setup.scenario.warmup_plan(setup.tag)
    if not plan:
        return
    collector = ReplyCollector({e["event_id"] for e in plan})
    channel = await bench.connection.channel()
    try:
        await collector.start(channel, setup.topology)
        await publish_plan(bench.channel, setup.topology, plan)
        await collector.wait(setup.scenario.quiet_s, SETTLE_S)
    finally:
        await channel.close()
    unanswered = collector.missing | collector.dead_lettered
    if unanswered:
        raise RuntimeError(f"{len(unanswered)} warm-up events were not answered")


async def _drive(
    bench: Bench, setup: Setup, process: ContenderProcess, receiver: ReceiverProcess | None
) -> RunData:
    """From a consuming contender to the last reply: publish, listen, sample."""
    topology = setup.topology
    plan = setup.scenario.plan(setup.tag)
    collector = ReplyCollector({e["event_id"] for e in plan})
    replies_channel = await bench.connection.channel()
    try:
        await collector.start(replies_channel, topology)
        samplers = Samplers.of(
            process.pid, bench.standin.pid, None if receiver is None else receiver.pid
        )
        queue = QueueSampler(
            lambda: _ready(replies_channel, topology.inbound_queue), interval_s=0.1
        )
        commits_before = await commit_count(setup.database)
        outcomes_before = {} if receiver is None else await receiver.outcomes()
        for sampler in samplers.all():
            sampler.start()
        queue.start()
        sent, forged = await _load(bench, setup, plan, collector, receiver)
        peak = peak_rss_bytes(process.pid)
        receiver_peak = 0 if receiver is None else peak_rss_bytes(receiver.pid)
        outcomes = {} if receiver is None else await receiver.outcomes()
        for sampler in samplers.all():
            await sampler.stop()
        await queue.stop()
        commits = await commit_count(setup.database) - commits_before
    finally:
        await replies_channel.close()
    return RunData(
        scenario=setup.scenario,
        contender=setup.contender,
        repetition=setup.repetition,
        sent=sent,
        received=collector.received,
        journal=[],
        runs=[],
        samplers=samplers,
        queue=queue,
        commits=commits,
        peak_rss_bytes=peak,
        dead_lettered=collector.dead_lettered,
        exit_code=None,
        receiver_peak_rss_bytes=receiver_peak,
        receiver_outcomes=difference(outcomes, outcomes_before),
        forged=forged,
    )


async def _load(
    bench: Bench,
    setup: Setup,
    plan: list[dict[str, Any]],
    collector: ReplyCollector,
    receiver: ReceiverProcess | None,
) -> tuple[list[Sent], dict[str, Any]]:
    """Publishes the plan and waits for its replies; in a security scenario the forger posts
    its deliveries to the receiver meanwhile, and its figures come back too."""
    forger = await _forger(bench, setup, receiver)
    try:
        sent = await publish_plan(bench.channel, setup.topology, plan)
        await collector.wait(setup.scenario.quiet_s, SETTLE_S)
        return sent, ({} if forger is None else await forger.result())
    finally:
        if forger is not None:
            await forger.stop()


async def _forger(
    bench: Bench, setup: Setup, receiver: ReceiverProcess | None
) -> ForgerProcess | None:
    """The forger, sending, if this run is attacked: a security scenario's, not its control."""
    scenario = setup.scenario
    if receiver is None or not scenario.forged or setup.contender.control:
        return None
    forger = ForgerProcess(bench.log_dir / f"{setup.name}-forger.log")
    await forger.start(
        receiver.target,
        bench.standin.control_url,
        scenario.forged,
        scenario.forged_per_s,
    )
    return forger


async def _ready(channel: AbstractChannel, queue: str) -> int:
    return (await queue_stats(channel, queue)).messages
