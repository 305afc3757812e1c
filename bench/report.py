"""From runs to tables: medians over repetitions, worker/baseline ratios, targets, Markdown."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.forge import KINDS
from bench.measure import RunMetrics
from bench.scenarios import BASELINE, WEBHOOKS, Scenario, contender
from worker.webhooks.receiver import ACCEPTED, DUPLICATE, UNAVAILABLE
from worker.webhooks.verify import Refusal

Getter = Callable[[RunMetrics], float]


@dataclass(frozen=True, slots=True)
class Row:
    """One measure in the result tables: how it is read from a run, shown and combined over
    repetitions, and whether a ratio to the baseline means anything."""

    label: str
    get: Getter
    fmt: str = "{:.1f}"
    # Counts of failures are summed over repetitions (one loss in any run matters), not medians.
    summed: bool = False
    ratio: bool = True


ROWS = (
    Row("events answered", lambda m: m.answered, "{:.0f}", ratio=False),
    Row("answered events/s (sustained)", lambda m: m.events_per_s),
    Row("worker CPU ms per answered event", lambda m: m.cpu_ms_per_event, "{:.2f}"),
    Row("receiver CPU ms per answered event", lambda m: m.receiver_cpu_ms_per_event, "{:.2f}"),
    Row(
        "worker + receiver CPU ms per answered event", lambda m: m.total_cpu_ms_per_event, "{:.2f}"
    ),
    Row("end-to-end latency p50 (ms)", lambda m: m.latency_ms["p50"], "{:.0f}"),
    Row("end-to-end latency p99 (ms)", lambda m: m.latency_ms["p99"], "{:.0f}"),
    Row("detection delay p50 (ms)", lambda m: m.detection_ms["p50"], "{:.0f}"),
    Row("detection delay p90 (ms)", lambda m: m.detection_ms["p90"], "{:.0f}"),
    Row("detection delay p99 (ms)", lambda m: m.detection_ms["p99"], "{:.0f}"),
    Row("OpenAI requests per answered event", lambda m: m.requests_per_event, "{:.2f}"),
    Row("OpenAI requests per run", lambda m: m.requests_per_run, "{:.2f}"),
    Row("polls per run", lambda m: m.polls_per_run, "{:.2f}"),
    Row("runs per conversation", lambda m: m.runs_per_conversation, "{:.2f}"),
    Row("'active run' 400s", lambda m: m.active_run_400s, "{:.0f}", summed=True, ratio=False),
    Row("injected faults", lambda m: m.injected_faults, "{:.0f}", ratio=False),
    Row("lost replies", lambda m: m.lost, "{:.0f}", summed=True, ratio=False),
    Row("events answered twice", lambda m: m.duplicated, "{:.0f}", summed=True, ratio=False),
    Row("dead-lettered", lambda m: m.dead_lettered, "{:.0f}", summed=True, ratio=False),
    Row("replies not 'completed'", lambda m: m.not_completed, "{:.0f}", summed=True, ratio=False),
    Row("worker peak RSS (MB)", lambda m: m.peak_rss_mb),
    Row("worker RSS growth under load (MB)", lambda m: m.rss_growth_mb),
    Row("receiver peak RSS (MB)", lambda m: m.receiver_peak_rss_mb),
    Row("receiver RSS growth under load (MB)", lambda m: m.receiver_rss_growth_mb),
    Row("events in flight (max)", lambda m: m.max_in_flight, "{:.0f}", ratio=False),
    Row("runs active at once (max)", lambda m: m.max_runs_active, "{:.0f}", ratio=False),
    Row("RSS per event in flight (KB)", lambda m: m.rss_per_in_flight_kb, "{:.0f}"),
    Row("Postgres transactions per event", lambda m: m.commits_per_event, "{:.1f}"),
    Row("Postgres CPU ms per event (context)", lambda m: m.postgres_cpu_ms_per_event, "{:.2f}"),
    Row("RabbitMQ CPU ms per event (context)", lambda m: m.rabbitmq_cpu_ms_per_event, "{:.2f}"),
    Row("stand-in CPU ms per event (context)", lambda m: m.standin_cpu_ms_per_event, "{:.2f}"),
    Row("machine CPU busy % (context)", lambda m: m.machine_busy_pct, "{:.0f}", ratio=False),
)


@dataclass(frozen=True, slots=True)
class Table:
    """A result table, already formatted, that renders as Markdown (RESULTS.md) or on a terminal."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    # Leading columns that hold text (left-aligned); the rest are numbers.
    text_columns: int = 1


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def median(values: Sequence[float]) -> float:
    finite = _finite(values)
    return statistics.median(finite) if finite else math.nan


def _runs(results: list[RunMetrics], scenario: str, contender: str) -> list[RunMetrics]:
    return [m for m in results if m.scenario == scenario and m.contender == contender]


def value(results: list[RunMetrics], scenario: str, contender: str, row: Row) -> float:
    values = [float(row.get(m)) for m in _runs(results, scenario, contender)]
    if not values:
        return math.nan
    return sum(values) if row.summed else median(values)


def ratio(
    results: list[RunMetrics],
    scenario: str,
    contender: str,
    row: Row,
    reference: str = BASELINE.key,
) -> float:
    """Median over repetitions of (contender / reference) measured in the same repetition."""
    of_reference = {m.repetition: float(row.get(m)) for m in _runs(results, scenario, reference)}
    ratios = [
        float(row.get(m)) / of_reference[m.repetition]
        for m in _runs(results, scenario, contender)
        if of_reference.get(m.repetition) not in (None, 0.0)
    ]
    return median(ratios)


def _fmt(fmt: str, v: float) -> str:
    return "n/a" if math.isnan(v) else fmt.format(v)


def scenario_table(results: list[RunMetrics], scenario: Scenario, contenders: list[str]) -> Table:
    """Metrics as rows; each contender a column, each followed by its ratio to the scenario's
    reference (the baseline; in a security scenario the control run)."""
    keys = scenario.runs_in(contenders)
    reference = scenario.reference
    headers = ["metric", *_contender_headers(keys, reference)]
    rows = [
        [
            row.label + (" (sum)" if row.summed else ""),
            *_cells(results, scenario, keys, row, reference),
        ]
        for row in ROWS
    ]
    reps = len({m.repetition for m in results if m.scenario == scenario.key})
    title = f"({scenario.key}) {scenario.title}"
    against = contender(reference).label
    note = f"{scenario.describe()}. Medians of {reps} runs; ratio = median of contender/{against}."
    if scenario.forged:
        note += (
            f" Only {WEBHOOKS.label} runs here, beside its control run (the same load, the same "
            "worker, no forgeries)."
        )
    return Table(title, headers, rows, note)


def _contender_headers(contenders: list[str], reference: str) -> list[str]:
    """Each contender's label, each but the reference followed by "ratio" (if it ran)."""
    headers = []
    for key in contenders:
        headers.append(contender(key).label)
        if reference in contenders and key != reference:
            headers.append("ratio")
    return headers


def _cells(
    results: list[RunMetrics], scenario: Scenario, contenders: list[str], row: Row, reference: str
) -> list[str]:
    """One metric's cells under `_contender_headers`."""
    cells = []
    for key in contenders:
        cells.append(_fmt(row.fmt, value(results, scenario.key, key, row)))
        if reference in contenders and key != reference:
            ratio_cell = ratio(results, scenario.key, key, row, reference) if row.ratio else None
            cells.append("" if ratio_cell is None else _fmt("{:.2f}", ratio_cell))
    return cells


# What each scenario is about, for the one-table summary (README).
SUMMARY = {
    "a": (
        "answered events/s (sustained)",
        "worker CPU ms per answered event",
        "worker + receiver CPU ms per answered event",
        "OpenAI requests per answered event",
        "detection delay p50 (ms)",
    ),
    "b": (
        "events in flight (max)",
        "worker peak RSS (MB)",
        "worker CPU ms per answered event",
        "worker + receiver CPU ms per answered event",
        "detection delay p50 (ms)",
        "detection delay p99 (ms)",
        "OpenAI requests per run",
        "polls per run",
    ),
    "c": ("runs per conversation", "'active run' 400s", "lost replies"),
    "d": ("lost replies", "events answered twice", "answered events/s (sustained)"),
}


def summary_table(
    results: list[RunMetrics], scenarios: tuple[Scenario, ...], contenders: list[str]
) -> Table:
    """The headline metrics of every scenario the contenders all run, in one table (the ratio is
    to the baseline); a security scenario has a table of its own (`forgery_table`)."""
    by_label = {row.label: row for row in ROWS}
    headers = ["scenario", "metric", *_contender_headers(contenders, BASELINE.key)]
    rows = []
    for scenario in scenarios:
        for label in SUMMARY.get(scenario.key, ()):
            row = by_label[label]
            cells = [f"({scenario.key}) {scenario.title}", label + (" (sum)" if row.summed else "")]
            rows.append(cells + _cells(results, scenario, contenders, row, BASELINE.key))
    note = "Medians over repetitions; ratio = contender/baseline."
    return Table("Summary", headers, rows, note, text_columns=2)


def forgery_table(results: list[RunMetrics], scenario: Scenario) -> Table:
    """A security scenario's forged deliveries by kind, with the receiver's answers (summed over
    repetitions), and the receiver's own count of what it accepted."""
    runs = _runs(results, scenario.key, WEBHOOKS.key)
    rows = []
    for kind in KINDS:
        answers: Counter[str] = Counter()
        for m in runs:
            answers.update(m.forged.get("answers", {}).get(kind.name, {}))
        rows.append([kind.name, kind.what, str(answers.total()), _by_status(answers)])
    every: Counter[str] = Counter()
    for m in runs:
        for counts in m.forged.get("answers", {}).values():
            every.update(counts)
    rows.append(["all", "", str(every.total()), _by_status(every)])
    headers = ["forgery", "what it is", "sent (sum)", "answers by status (sum)"]
    return Table(f"({scenario.key}) forged deliveries", headers, rows, _forgery_note(runs), 2)


def _by_status(answers: Counter[str]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(answers.items())) or "none"


def _forgery_note(runs: list[RunMetrics]) -> str:
    """What the receiver counted and how the forging overlapped the real load."""
    outcomes: Counter[str] = Counter()
    delivered = 0
    for m in runs:
        outcomes.update(m.webhooks.get("outcomes", {}))
        delivered += m.webhooks.get("delivered", 0)
    answered_200 = outcomes[ACCEPTED] + outcomes[DUPLICATE]
    refused = sum(outcomes[refusal.value] for refusal in Refusal)
    spans = ", ".join(
        f"{m.forged.get('span_s', math.nan):.1f} s of forging during {m.wall_s:.1f} s of load"
        for m in runs
    )
    return (
        f"The receiver's own count (its /metrics, over the load): {answered_200} deliveries "
        f"answered 200, the stand-in's real deliveries answered 2xx being {delivered}; "
        f"{refused} refused, {outcomes[UNAVAILABLE]} answered 503. Forgeries that named a "
        "running response: "
        f"{sum(m.forged.get('real_ids', 0) for m in runs)}. Per run: {spans or 'none'}."
    )


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(table.headers) + " |")
    numbers = len(table.headers) - table.text_columns
    lines.append("|" + "|".join(["---"] * table.text_columns + ["---:"] * numbers) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def to_rich(table: Table) -> Any:
    from rich.table import Table as RichTable

    rich = RichTable(title=table.title, caption=table.note)
    for n, header in enumerate(table.headers):
        rich.add_column(header, justify="left" if n < table.text_columns else "right")
    for row in table.rows:
        rich.add_row(*row)
    return rich
