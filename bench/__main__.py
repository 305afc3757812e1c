"""`make bench`: every scenario, for the worker and the baseline, repeated; writes RESULTS.md.

python -m bench [--quick] [--repeat 3] [--scenarios a,b,c,d,e]
                [--contenders assistants,baseline,responses,webhooks] [--output bench]
                [--profile DIR] [--render bench/results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import results_doc
from bench.machine import describe
from bench.measure import RunMetrics
from bench.run import Bench, bench, run_once
from bench.scenarios import (
    CONTENDERS,
    FULL,
    QUICK,
    Scenario,
    contender,
    select,
    selected_contenders,
)
from bench.services import postgres_version

HERE = Path(__file__).resolve().parent


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="small scenarios, one repetition (also BENCH_QUICK=1): a smoke run",
    )
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, 1 with --quick)")
    parser.add_argument(
        "--scenarios", default="a,b,c,d,e", help="any of a,b,c,d,e (e: forged webhooks)"
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"any of {', '.join(CONTENDERS)} (e runs webhooks only, with its control run)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where RESULTS.md and results.json go (default bench/; --quick writes nothing)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="AW_NAME=VALUE",
        help="a setting (AW_* or OTEL_*) for the worker contenders only, to measure a lever "
        "(repeatable)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy profiles of every run, into DIR")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="write RESULTS.md again from a results.json, without running anything",
    )
    return parser.parse_args(argv)


def contender_order(contenders: list[str], repetition: int) -> list[str]:
    """Rotated each repetition, so no contender always runs first on a fresh machine."""
    shift = repetition % len(contenders)
    return contenders[shift:] + contenders[:shift]


async def measure_all(
    b: Bench, scenarios: tuple[Scenario, ...], contenders: list[str], repeat: int, console: Console
) -> list[RunMetrics]:
    results = []
    total = repeat * sum(len(s.runs_in(contenders)) for s in scenarios)
    for scenario in scenarios:
        if not scenario.runs_in(contenders):
            console.print(f"({scenario.key}) skipped: only the webhooks contender runs it")
    for repetition in range(repeat):
        for scenario in scenarios:
            for key in contender_order(scenario.runs_in(contenders), repetition):
                m = await run_once(b, scenario, contender(key), repetition)
                results.append(m)
                console.print(f"[{len(results)}/{total}] {progress(scenario, key, m)}")
    return results


def progress(scenario: Scenario, key: str, m: RunMetrics) -> str:
    line = (
        f"({scenario.key}) {contender(key).label:<20} {m.answered}/{m.events} answered, "
        f"{m.events_per_s:.0f}/s, {m.cpu_ms_per_event:.2f} ms CPU/event, "
        f"detection p50 {m.detection_ms['p50']:.0f} ms p99 {m.detection_ms['p99']:.0f} ms, "
        f"{m.requests_per_run:.2f} requests/run, lost {m.lost}, "
        f"machine {m.machine_busy_pct:.0f}% busy, {m.wall_s:.1f} s"
    )
    if contender(key).webhooks:
        line += f"; receiver {m.receiver_cpu_ms_per_event:.2f} ms CPU/event"
    if m.forged:
        line += f"; {m.forged['sent']} forged in {m.forged['span_s']:.1f} s"
    if "spans_per_event" in m.extra:
        line += f"; {m.extra['spans_per_event']:.1f} spans/event exported"
    return line


async def main(args: argparse.Namespace) -> int:
    console = Console()
    if args.render:
        doc = load(args.render)
        (args.output or args.render.parent).joinpath("RESULTS.md").write_text(doc.markdown())
        return 0
    scenarios = select(QUICK if args.quick else FULL, args.scenarios)
    contenders = selected_contenders(args.contenders)
    repeat = args.repeat or (1 if args.quick else 3)
    log_dir = Path(tempfile.mkdtemp(prefix="aw-bench-"))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    console.print(f"bench: logs in {log_dir}")
    async with bench(log_dir, args.profile) as b:
        b.worker_env.update(_settings_of(args.worker_env))
        machine = describe(postgres=await postgres_version(), rabbitmq=b.rabbitmq_version)
        results = await measure_all(b, scenarios, contenders, repeat, console)
    command = " ".join(["python -m bench", *sys.argv[1:]])
    doc = results_doc.Document(command, machine, scenarios, contenders, repeat, results)
    for renderable in doc.rich():
        console.print(renderable)
    # A quick run is a smoke test: it must not replace the recorded results by accident.
    output = args.output or (None if args.quick else HERE)
    if output is not None and not args.no_write:
        write(output, doc, machine, results)
        console.print(f"wrote {output / 'RESULTS.md'} and {output / 'results.json'}")
    return 0


def _settings_of(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        # OTEL_* too: the SDK's own settings for the traced contenders (the others ignore them).
        if not sep or not name.startswith(("AW_", "OTEL_")):
            raise SystemExit(
                f"python -m bench: --worker-env wants AW_NAME=VALUE or OTEL_NAME=VALUE, "
                f"got {pair!r}"
            )
        settings[name] = value
    return settings


def write(
    output: Path, doc: results_doc.Document, machine: dict[str, Any], results: list[RunMetrics]
) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "RESULTS.md").write_text(doc.markdown())
    raw = {
        "command": doc.command,
        "machine": machine,
        "scenarios": [dataclasses.asdict(s) for s in doc.scenarios],
        "contenders": doc.contenders,
        "repeat": doc.repeat,
        "runs": [dataclasses.asdict(m) for m in results],
    }
    (output / "results.json").write_text(json.dumps(raw, indent=1) + "\n")


def load(path: Path) -> results_doc.Document:
    """The document a results.json was written with (to change the text, not the numbers)."""
    raw = json.loads(path.read_text())
    return results_doc.Document(
        raw["command"],
        raw["machine"],
        tuple(Scenario(**s) for s in raw["scenarios"]),
        raw["contenders"],
        raw["repeat"],
        [RunMetrics(**m) for m in raw["runs"]],
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_arguments(sys.argv[1:]))))
