"""`make chaos`: workers under steady load are killed again and again; nothing may be lost.

    python -m bench.chaos --duration 300 --workers 2 --backend responses

Runs against the local RabbitMQ and Postgres (a fresh database and fresh queue names, removed
afterwards) and an in-process OpenAI stand-in. Worker processes die at random crash points and
from kill -9 at random moments, and are restarted each time. At the end it prints what was sent,
answered, dead-lettered, duplicated and lost, and the longest recovery, and exits 1 if any
guarantee was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from bench.services import declared, fresh_database
from standin import StandIn, StandInConfig
from tests.harness import (
    ALL_CRASH_POINTS,
    ReplyCollector,
    Report,
    Supervisor,
    chaos_env,
    check,
    max_recovery_s,
    publish_load,
)
from tests.support import AMQP_URL, API_KEY, tagged_topology, worker_env
from worker.settings import BackendName, Settings, Topology


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load and kills")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--backend", choices=["responses", "assistants"], default="responses")
    parser.add_argument("--rate", type=float, default=20, help="events per second")
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--kill-every", type=float, default=5, help="seconds between kill -9s")
    parser.add_argument("--run-ms", type=int, default=300, help="stand-in run duration")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> int:
    console = Console()
    tag = f"chaos{uuid.uuid4().hex[:8]}"
    topology = tagged_topology(tag)
    standin = StandIn(StandInConfig(run_duration_ms=args.run_ms, poll_after_ms=None))
    base_url = await standin.start()
    try:
        connection = await aio_pika.connect_robust(AMQP_URL)
        async with (
            connection,
            fresh_database(f"aw_{tag}", migrated=True) as database_url,
            declared(await connection.channel(), topology),
        ):
            channel = await connection.channel(publisher_confirms=True)
            settings = Settings(
                amqp_url=SecretStr(AMQP_URL),
                database_url=SecretStr(database_url),
                openai_base_url=base_url,
                openai_api_key=SecretStr(API_KEY),
                backend=BackendName(args.backend),
                topology=topology,
            )
            report, kills, dead = await _run(console, args, settings, channel, topology, standin)
    finally:
        await standin.stop()
    report.kills = kills
    report.dead_lettered = dead
    _print(console, args, report)
    return 1 if report.violations else 0


async def _run(
    console: Console,
    args: argparse.Namespace,
    settings: Settings,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    standin: StandIn,
) -> tuple[Report, int, int]:
    collector = ReplyCollector()
    await collector.start(channel, topology)
    with tempfile.TemporaryDirectory(prefix="aw-chaos-") as logs:
        env = chaos_env(worker_env(settings))
        supervisor = Supervisor(env, args.workers, Path(logs), crash_points=ALL_CRASH_POINTS)
        await supervisor.start()
        await supervisor.wait_ready()
        console.print(
            f"chaos: {args.duration:g} s, {args.workers} workers, backend {args.backend}, "
            f"{args.rate:g} events/s over {args.conversations} conversations"
        )
        shooter = asyncio.create_task(_shoot(supervisor, args.kill_every))
        sent = await publish_load(
            channel,
            topology,
            events=int(args.duration * args.rate),
            conversations=args.conversations,
            rate_per_s=args.rate,
        )
        shooter.cancel()
        supervisor.crash_points = None
        console.print(f"load done ({len(sent)} events, {supervisor.kills} kills); draining")
        started = time.monotonic()
        missing = await collector.wait_for({e["event_id"] for e in sent}, timeout_s=120)
        console.print(f"drained in {time.monotonic() - started:.1f} s, {len(missing)} missing")
        await asyncio.sleep(2)
        await supervisor.stop()
        recovery = max_recovery_s(supervisor.kill_times, collector)
        kills = supervisor.kills
    dead_queue = await channel.get_queue(topology.dead_letter_queue)
    dead = dead_queue.declaration_result.message_count or 0
    report = check(sent, collector, standin)
    report.max_recovery_s = recovery
    return report, kills, dead


async def _shoot(supervisor: Supervisor, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        supervisor.kill_one()


def _print(console: Console, args: argparse.Namespace, report: Report) -> None:
    table = Table(
        title=f"chaos summary ({args.duration:g} s, {args.workers} workers, {args.backend})"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("events sent", report.sent),
        ("answered", report.answered),
        ("dead-lettered", report.dead_lettered),
        ("lost", len(report.lost)),
        ("answered more than once", len(report.answered_more_than_once)),
        ("replies re-published (same ID, same body)", report.republished_replies),
        ("replies with one ID and two bodies", len(report.conflicting_replies)),
        ("user messages duplicated in a thread", len(report.duplicated_user_messages)),
        ("second runs for one batch attempt, not cancelled", len(report.second_runs_not_cancelled)),
        ("second runs cancelled at once (create answer lost)", report.second_runs_cancelled),
        ("threads with two active runs at once", len(report.overlapping_runs)),
        ("worker kills (kill -9)", report.kills),
        ("max recovery (kill to next reply)", f"{report.max_recovery_s:.2f} s"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    console.print(
        "[bold green]no guarantee broken[/]"
        if not report.violations
        else f"[bold red]broken: {', '.join(report.violations)}[/]"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_arguments())))
