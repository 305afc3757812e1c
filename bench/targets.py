"""The issue's targets, checked against the medians: met or missed, with the numbers.

They are reported, never asserted: a missed target is a finding for the report, not a failure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from bench.measure import RunMetrics
from bench.poll_schedules import learned, sdk_default, simulate
from bench.report import Row, Table, median, ratio, value
from bench.scenarios import ASSISTANTS, BASELINE, RESPONSES, Scenario, contender

# Fewest requests a turn can take. Assistants: create the run with its messages
# (additional_messages), retrieve it once, list its messages; Responses: create, retrieve
# (the output comes with it). Plus one thread or conversation per conversation, created
# before the first run so the thread ID is stored before anything runs in it.
REQUESTS_PER_RUN = {"assistants": 3, "responses": 2}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one of the project's performance targets was met, and what was measured for it."""

    target: str
    measured: str
    met: bool | None  # None: the scenario was not run
    backend: str = ""


def minimum_requests_per_event(m: RunMetrics, conversations: int) -> float:
    backend = contender(m.contender).backend or "assistants"
    return (REQUESTS_PER_RUN[backend] * m.runs + conversations) / max(1, m.answered)


def _row(get: Callable[[RunMetrics], float]) -> Row:
    return Row("", get)


def _median(
    results: list[RunMetrics], s: str, contender: str, get: Callable[[RunMetrics], float]
) -> float:
    return value(results, s, contender, _row(get))


def _verdict(target: str, measured: str, ok: bool) -> Verdict:
    return Verdict(target, measured, ok)


def scenario_a(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    rate = _median(results, s.key, w, lambda m: m.events_per_s)
    cpu_ratio = ratio(results, s.key, w, _row(lambda m: m.cpu_ms_per_event))
    runs = [m for m in results if m.scenario == s.key and m.contender == w]
    excess = median(
        [m.requests_per_event - minimum_requests_per_event(m, s.conversations) for m in runs]
    )
    requests = _median(results, s.key, w, lambda m: m.requests_per_event)
    return [
        _verdict("(a) >= 150 answered events/s, one worker process", f"{rate:.0f}/s", rate >= 150),
        _verdict(
            "(a) worker CPU per event <= 1/2 of the baseline's",
            f"ratio {cpu_ratio:.2f}",
            cpu_ratio <= 0.5,
        ),
        _verdict(
            "(a) OpenAI requests per event at the API's minimum",
            f"{requests:.2f} ({excess:+.2f} over the minimum for its runs)",
            excess <= 0.005,
        ),
    ]


def scenario_b(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    b = BASELINE.key
    in_flight = _median(results, s.key, w, lambda m: m.max_in_flight)
    active = _median(results, s.key, w, lambda m: m.max_runs_active)
    rss = _median(results, s.key, w, lambda m: m.peak_rss_mb)
    detection = _median(results, s.key, w, lambda m: m.detection_ms["p50"])
    polls = _median(results, s.key, w, lambda m: m.polls_per_run)
    base_polls = _median(results, s.key, b, lambda m: m.polls_per_run)
    base_detection = _median(results, s.key, b, lambda m: m.detection_ms["p50"])
    durations = [(s.queue_ms + ms) / 1000 for ms in s.run_durations_ms(s.events)]
    # The worker has learned from the warm-up's runs (the first of the same lengths).
    alone, _, _ = simulate(learned(durations[: max(s.warmup, 20)]), durations)
    base_alone, _, _ = simulate(sdk_default, durations)
    return [
        _verdict(
            f"(b) {s.conversations} in flight with worker RSS < 300 MB",
            f"{in_flight:.0f} in flight ({active:.0f} runs active at once), peak {rss:.0f} MB",
            in_flight >= s.conversations and rss < 300,
        ),
        _verdict(
            "(b) median detection delay < 250 ms",
            f"{detection:.0f} ms (baseline {base_detection:.0f} ms)",
            detection < 250,
        ),
        _verdict(
            "(b) fewer polls per run than the baseline's 1 s polling",
            f"{polls:.2f} vs {base_polls:.2f} (schedules alone: {alone:.2f} vs {base_alone:.2f})",
            polls < base_polls,
        ),
    ]


def scenario_c(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    b = BASELINE.key
    runs = _median(results, s.key, w, lambda m: m.runs_per_conversation)
    base_runs = _median(results, s.key, b, lambda m: m.runs_per_conversation)
    base_400 = value(results, s.key, b, Row("", lambda m: m.active_run_400s, summed=True))
    return [
        _verdict(
            f"(c) runs per burst well under {s.per_conversation} (at most half)",
            f"{runs:.2f} (baseline {base_runs:.2f}, its 'active run' 400s: {base_400:.0f})",
            runs <= s.per_conversation / 2,
        )
    ]


def scenario_d(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    def broken(contender: str) -> float:
        return value(
            results, s.key, contender, Row("", lambda m: m.lost + m.duplicated, summed=True)
        )

    lost = value(results, s.key, BASELINE.key, Row("", lambda m: m.lost, summed=True))
    doubled = value(results, s.key, BASELINE.key, Row("", lambda m: m.duplicated, summed=True))
    worker = broken(w)
    return [
        _verdict(
            "(d) zero lost or duplicated replies (worker)",
            f"worker {worker:.0f}; baseline lost {lost:.0f}, doubled {doubled:.0f}",
            worker == 0,
        )
    ]


CHECKS: dict[str, Callable[[list[RunMetrics], Scenario, str], list[Verdict]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
}


def evaluate(results: list[RunMetrics], scenarios: tuple[Scenario, ...]) -> list[Verdict]:
    verdicts: list[Verdict] = []
    contenders = {m.contender for m in results}
    for s in scenarios:
        for worker in (RESPONSES.key, ASSISTANTS.key):
            if {worker, BASELINE.key} <= contenders:
                verdicts += [
                    dataclasses.replace(v, backend=worker)
                    for v in CHECKS[s.key](results, s, worker)
                ]
    # A target whose numbers are missing (too few events, say) is neither met nor missed.
    return [dataclasses.replace(v, met=None) if "nan" in v.measured else v for v in verdicts]


def table(verdicts: list[Verdict]) -> Table:
    rows = [
        [v.target, v.backend, v.measured, {True: "met", False: "MISSED", None: "n/a"}[v.met]]
        for v in verdicts
    ]
    note = (
        "Verdicts from the medians below. 'Schedules alone' is what the poll schedules would do "
        "for these run durations at no cost (python -m bench.poll_schedules): a worker that "
        "polls fewer times than its schedule says is polling late, because it is saturated."
    )
    headers = ["target", "worker backend", "measured", "verdict"]
    return Table("Targets", headers, rows, note, text_columns=4)
