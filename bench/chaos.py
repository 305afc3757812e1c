"""`make chaos`: workers under steady load are killed again and again; nothing may be lost.

    python -m bench.chaos --duration 300 --workers 2 --backend responses

Runs against the local RabbitMQ and Postgres (a fresh database and fresh queue names, removed
afterwards) and an in-process OpenAI stand-in. Worker processes die at random crash points and
from kill -9 at random moments, and are restarted each time. Beside the plain load, a few
steered conversations play takeover, release, cancel and close again and again. At the end it
prints what was sent, answered, dead-lettered, duplicated and lost, what the control events did,
and the longest recovery, and exits 1 if any guarantee was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    SteeredScript,
    SteeringReport,
    Supervisor,
    chaos_env,
    check,
    check_steering,
    drive_steered,
    max_recovery_s,
    publish_load,
    wait_settled,
)
from tests.support import AMQP_URL, API_KEY, tagged_topology, worker_env
from tests.webhook_receiver import WEBHOOK_FAULTS, running_receiver, with_webhooks
from worker.settings import BackendName, Settings, Topology

CONTROL_ACTIONS = ("takeover", "release", "cancel", "close")
# With --webhooks: a run whose delivery was dropped is looked at this long after its last look.
WEBHOOK_SWEEP_S = 5.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load and kills")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--backend", choices=["responses", "assistants"], default="responses")
    parser.add_argument("--rate", type=float, default=20, help="events per second")
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument(
        "--steered", type=int, default=6, help="conversations steered by control events (0: none)"
    )
    parser.add_argument("--kill-every", type=float, default=5, help="seconds between kill -9s")
    parser.add_argument("--run-ms", type=int, default=300, help="stand-in run duration")
    parser.add_argument(
        "--keep-logs", type=Path, help="keep the worker logs in this directory (else removed)"
    )
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="responses: runs end by webhook (the receiver in-process), deliveries faulted",
    )
    args = parser.parse_args()
    if args.webhooks and args.backend != "responses":
        parser.error("--webhooks needs --backend responses (only background responses send them)")
    return args


@dataclass
class Outcome:
    report: Report
    steering: SteeringReport

    @property
    def violations(self) -> dict[str, object]:
        return {**self.report.violations, **self.steering.violations}


@dataclass
class Rig:
    """What one chaos run talks to."""

    args: argparse.Namespace
    settings: Settings
    channel: aio_pika.abc.AbstractChannel
    standin: StandIn
    console: Console

    @property
    def topology(self) -> Topology:
        return self.settings.topology


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
            settings = Settings(
                amqp_url=SecretStr(AMQP_URL),
                database_url=SecretStr(database_url),
                openai_base_url=base_url,
                openai_api_key=SecretStr(API_KEY),
                backend=BackendName(args.backend),
                topology=topology,
            )
            channel = await connection.channel(publisher_confirms=True)
            rig = Rig(args, settings, channel, standin, console)
            async with _receiver(rig) as rig:
                outcome = await _run(rig, tag)
    finally:
        await standin.stop()
    _print(console, args, outcome)
    return 1 if outcome.violations else 0


@contextlib.asynccontextmanager
async def _receiver(rig: Rig) -> AsyncIterator[Rig]:
    """With --webhooks: the receiver, the workers' settings for it, and every delivery fault."""
    if not rig.args.webhooks:
        yield rig
        return
    settings = with_webhooks(rig.settings, rig.standin, WEBHOOK_SWEEP_S)
    rig.standin.add_faults(WEBHOOK_FAULTS)
    async with running_receiver(settings, rig.standin):
        yield dataclasses.replace(rig, settings=settings)


async def _run(rig: Rig, tag: str) -> Outcome:
    args = rig.args
    collector = ReplyCollector()
    await collector.start(rig.channel, rig.topology)
    scripts = [SteeredScript(f"steer-{tag}-{k}") for k in range(args.steered)]
    with _log_dir(args.keep_logs) as logs:
        hooks = {"AW_WEBHOOKS": "true", "AW_WEBHOOK_SWEEP_S": f"{WEBHOOK_SWEEP_S:g}"}
        env = chaos_env(worker_env(rig.settings, **(hooks if args.webhooks else {})))
        supervisor = Supervisor(env, args.workers, Path(logs), crash_points=ALL_CRASH_POINTS)
        await supervisor.start()
        await supervisor.wait_ready()
        rig.console.print(
            f"chaos: {args.duration:g} s, {args.workers} workers, backend {args.backend}, "
            f"{args.rate:g} events/s over {args.conversations} conversations, "
            f"{args.steered} steered" + (", webhooks (faulted)" if args.webhooks else "")
        )
        shooter = asyncio.create_task(_shoot(supervisor, args.kill_every))
        sent = await _publish(rig, scripts, collector)
        shooter.cancel()
        supervisor.crash_points = None
        rig.console.print(f"load done ({len(sent)} events, {supervisor.kills} kills); draining")
        statuses = await _drain(rig, sent, scripts, collector)
        await asyncio.sleep(2)
        await supervisor.stop()
        recovery = max_recovery_s(supervisor.kill_times, collector)
        kills = supervisor.kills
    dead_queue = await rig.channel.get_queue(rig.topology.dead_letter_queue)
    # The plain load's checks see the plain events only; check_steering judges the rest.
    report = check(sent, collector, rig.standin)
    report.max_recovery_s = recovery
    report.kills = kills
    report.dead_lettered = dead_queue.declaration_result.message_count or 0
    return Outcome(report, check_steering(scripts, collector, rig.standin, statuses))


async def _publish(
    rig: Rig, scripts: list[SteeredScript], collector: ReplyCollector
) -> list[dict[str, Any]]:
    """The plain load and, beside it, every steered conversation's script, until the load's
    duration ends (a steered segment begun by then is played to its end)."""
    args = rig.args
    until = time.monotonic() + args.duration
    steering = [
        asyncio.create_task(drive_steered(rig.channel, rig.topology, s, collector, until=until))
        for s in scripts
    ]
    sent = await publish_load(
        rig.channel,
        rig.topology,
        events=int(args.duration * args.rate),
        conversations=args.conversations,
        rate_per_s=args.rate,
    )
    await asyncio.gather(*steering)
    return sent


async def _drain(
    rig: Rig, sent: list[dict[str, Any]], scripts: list[SteeredScript], collector: ReplyCollector
) -> dict[str, str]:
    """Waits for every reply that must come and for every steered event to settle in Postgres;
    the steered events' statuses."""
    started = time.monotonic()
    must_answer = {e["event_id"] for e in sent} | {i for s in scripts for i in s.ids("B", "D")}
    missing = await collector.wait_for(must_answer, timeout_s=120)
    steered = {e.event_id for s in scripts for e in s.events}
    database_url = rig.settings.database_url.get_secret_value()
    statuses = await wait_settled(database_url, steered, timeout_s=60)
    unsettled = sum(1 for e in steered if statuses.get(e) not in ("answered", "dead_lettered"))
    rig.console.print(
        f"drained in {time.monotonic() - started:.1f} s, {len(missing)} missing, "
        f"{unsettled} steered events unsettled"
    )
    return statuses


@contextlib.contextmanager
def _log_dir(keep: Path | None) -> Iterator[str]:
    """Where the workers log: `keep` if given (to read after a broken guarantee), else a
    temporary directory."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield str(keep)
        return
    with tempfile.TemporaryDirectory(prefix="aw-chaos-") as logs:
        yield logs


async def _shoot(supervisor: Supervisor, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        supervisor.kill_one()


def _print(console: Console, args: argparse.Namespace, outcome: Outcome) -> None:
    table = Table(
        title=f"chaos summary ({args.duration:g} s, {args.workers} workers, {args.backend})"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = _plain_rows(outcome.report)
    if args.steered:
        rows += _steering_rows(outcome.steering)
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    console.print(
        "[bold green]no guarantee broken[/]"
        if not outcome.violations
        else f"[bold red]broken: {', '.join(outcome.violations)}[/]"
    )


def _plain_rows(report: Report) -> list[tuple[str, object]]:
    return [
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
        ("replies misnumbered (conversations)", len(report.misnumbered_replies)),
        ("worker kills (kill -9)", report.kills),
        ("max recovery (kill to next reply)", f"{report.max_recovery_s:.2f} s"),
    ]


def _steering_rows(steering: SteeringReport) -> list[tuple[str, object]]:
    sent = f"{steering.messages} + {steering.controls.total()}"
    controls = "/".join(str(steering.controls[a]) for a in CONTROL_ACTIONS)
    held = f"{steering.held - len(steering.replies_after_takeover)}/{steering.held}"
    return [
        ("steered conversations", steering.conversations),
        ("steered events sent (messages + control)", sent),
        ("control events (takeover/release/cancel/close)", controls),
        ("steered events not settled (lost)", len(steering.lost)),
        ("held messages (H) never answered", held),
        ("replies after a takeover", len(steering.replies_after_takeover)),
        ("A/C replies withheld (takeover/close mid-run)", steering.withheld),
        ("B replies cancelled (cancel mid-run)", steering.cancelled),
        ("steered messages answered more than once", len(steering.answered_more_than_once)),
        ("B/D messages never answered", len(steering.unanswered)),
        ("steered replies with a wrong status", len(steering.wrong_status)),
        ("replies on a thread deleted by a close", len(steering.replies_on_closed_threads)),
        ("closed threads still at the API", len(steering.closed_threads_kept)),
    ]


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_arguments())))
