"""The issue's targets, checked against the medians: met or missed, with the numbers.

They are reported, never asserted: a missed target is a finding for the report, not a failure.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench.measure import RunMetrics
from bench.poll_schedules import learned, sdk_default, simulate
from bench.report import Row, Table, median, ratio, value
from bench.scenarios import (
    ASSISTANTS,
    BASELINE,
    CONTROL,
    RESPONSES,
    SAMPLED,
    TRACED,
    WEBHOOKS,
    Scenario,
    contender,
)

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
    contender: str = ""


def minimum_requests_per_event(m: RunMetrics, conversations: int) -> float:
    backend = contender(m.contender).backend or "assistants"
    return (REQUESTS_PER_RUN[backend] * m.runs + conversations) / max(1, m.answered)


def _row(get: Callable[[RunMetrics], float]) -> Row:
    return Row("", get)


def _median(
    results: list[RunMetrics], s: str, contender: str, get: Callable[[RunMetrics], float]
) -> float:
    return value(results, s, contender, _row(get))


def _sum(
    results: list[RunMetrics], s: str, contender: str, get: Callable[[RunMetrics], float]
) -> float:
    return value(results, s, contender, Row("", get, summed=True))


def _runs(results: list[RunMetrics], s: Scenario, contender: str) -> list[RunMetrics]:
    return [m for m in results if m.scenario == s.key and m.contender == contender]


def _verdict(target: str, measured: str, ok: bool) -> Verdict:
    return Verdict(target, measured, ok)


def _cpu_ratios(results: list[RunMetrics], s: Scenario, w: str, reference: str) -> str:
    """The worker's CPU per event over the reference's and, with webhooks, the worker's and its
    receiver's together: the receiver's share is not left out of sight."""
    alone = ratio(results, s.key, w, _row(lambda m: m.cpu_ms_per_event), reference)
    if not contender(w).webhooks:
        return f"ratio {alone:.2f}"
    both = ratio(results, s.key, w, _row(lambda m: m.total_cpu_ms_per_event), reference)
    return f"ratio {alone:.2f} (worker + receiver: {both:.2f})"


def scenario_a(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    rate = _median(results, s.key, w, lambda m: m.events_per_s)
    cpu_ratio = ratio(results, s.key, w, _row(lambda m: m.cpu_ms_per_event))
    # Webhooks spare the polls, so the worker alone is held to a lower share.
    bound = 0.4 if contender(w).webhooks else 0.5
    excess = median(
        [
            m.requests_per_event - minimum_requests_per_event(m, s.conversations)
            for m in _runs(results, s, w)
        ]
    )
    requests = _median(results, s.key, w, lambda m: m.requests_per_event)
    return [
        _verdict("(a) >= 150 answered events/s, one worker process", f"{rate:.0f}/s", rate >= 150),
        _verdict(
            f"(a) worker CPU per event <= {bound:g} x the baseline's",
            _cpu_ratios(results, s, w, BASELINE.key),
            cpu_ratio <= bound,
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


def webhooks_b(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    """The webhooks worker against the polling one (responses) in the same invocation."""
    polling = RESPONSES.key

    def both(get: Callable[[RunMetrics], float]) -> tuple[float, float]:
        return _median(results, s.key, w, get), _median(results, s.key, polling, get)

    p50, polling_p50 = both(lambda m: m.detection_ms["p50"])
    p99, polling_p99 = both(lambda m: m.detection_ms["p99"])
    # A conversation's own create is once per conversation, not per run: each event of (b)
    # is a new conversation, so it is counted apart.
    per_run, polling_per_run = both(lambda m: m.requests_per_run - m.conversation_requests_per_run)
    creates = _median(results, s.key, w, lambda m: m.conversation_requests_per_run)
    retrieves = _median(results, s.key, w, lambda m: m.polls_per_run)
    cpu_ratio = ratio(results, s.key, w, _row(lambda m: m.cpu_ms_per_event), polling)
    return [
        _verdict(
            "(b) detection delay p50 <= 100 ms and p99 <= 500 ms",
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms "
            f"(polling: p50 {polling_p50:.0f} ms, p99 {polling_p99:.0f} ms)",
            p50 <= 100 and p99 <= 500,
        ),
        _verdict(
            "(b) OpenAI requests per run <= 2.1 (a conversation's create aside)",
            f"{per_run:.2f}, of which retrieves {retrieves:.2f}; besides, conversation "
            f"creates {creates:.2f} (polling: {polling_per_run:.2f})",
            per_run <= 2.1,
        ),
        _verdict(
            "(b) worker CPU per event <= 0.5 x the polling responses worker's",
            _cpu_ratios(results, s, w, polling),
            cpu_ratio <= 0.5,
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


def scenario_e(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    """Forged deliveries while real events flow, against the control run without them."""
    runs = _runs(results, s, w)
    answers: Counter[str] = Counter()
    for m in runs:
        for counts in m.forged.get("answers", {}).values():
            answers.update(counts)
    not_refused = sum(n for status, n in answers.items() if not status.startswith("4"))
    # 200s the receiver counted beyond the stand-in's real deliveries: forgeries it took.
    surplus = sum(max(0, _answered_200(m) - m.webhooks.get("delivered", 0)) for m in runs)
    lost = _sum(results, s.key, w, lambda m: m.lost)
    doubled = _sum(results, s.key, w, lambda m: m.duplicated)
    growth = max((m.rss_growth_mb for m in runs), default=float("nan"))
    receiver_growth = max((m.receiver_rss_growth_mb for m in runs), default=float("nan"))
    control_growth = max(
        (m.rss_growth_mb for m in _runs(results, s, CONTROL.key)), default=float("nan")
    )
    return [
        _verdict(
            "(e) no forged delivery accepted: every answer 4xx",
            f"{not_refused} of {answers.total()} not refused "
            f"({', '.join(f'{k}: {n}' for k, n in sorted(answers.items()))}); "
            f"the receiver's 200s beyond the real deliveries: {surplus}",
            not_refused == 0 and surplus == 0,
        ),
        _verdict(
            "(e) every real event answered exactly once under forgeries",
            f"lost {lost:.0f}, answered twice {doubled:.0f}; {_latencies(results, s, w)}",
            lost == 0 and doubled == 0,
        ),
        _verdict(
            "(e) worker RSS growth <= 50 MB under forgeries",
            f"worker +{growth:.1f} MB, receiver +{receiver_growth:.1f} MB (largest of "
            f"{len(runs)} runs; control: worker +{control_growth:.1f} MB)",
            growth <= 50,
        ),
    ]


def _answered_200(m: RunMetrics) -> int:
    outcomes = m.webhooks.get("outcomes", {})
    return int(outcomes.get("accepted", 0) + outcomes.get("duplicate", 0))


def _latencies(results: list[RunMetrics], s: Scenario, w: str) -> str:
    """The real events' latency under forgeries and in the control run."""

    def latency(key: str, q: str) -> float:
        return _median(results, s.key, key, lambda m: m.latency_ms[q])

    c = CONTROL.key
    return (
        f"latency p50 {latency(w, 'p50'):.0f} ms, p99 {latency(w, 'p99'):.0f} ms "
        f"(control: {latency(c, 'p50'):.0f} ms, {latency(c, 'p99'):.0f} ms)"
    )


# What tracing with every span exported may cost the worker (issue 15).
TRACING_CPU_BOUND = 1.05


def tracing_cost(results: list[RunMetrics], s: Scenario, w: str) -> list[Verdict]:
    """The traced worker's CPU per event against the same worker untraced, same repetition."""
    cpu = ratio(results, s.key, w, _row(lambda m: m.cpu_ms_per_event), RESPONSES.key)
    spans = _median(results, s.key, w, lambda m: m.extra.get("spans_per_event", math.nan))
    sampled = f"{contender(w).traced:.0%} of traces"
    return [
        _verdict(
            f"({s.key}) tracing on ({sampled} exported) costs <= 5 % worker CPU per event",
            f"ratio {cpu:.3f} to {RESPONSES.label}; {spans:.1f} spans per event",
            cpu <= TRACING_CPU_BOUND,
        )
    ]


Check = Callable[[list[RunMetrics], Scenario, str], list[Verdict]]


@dataclass(frozen=True, slots=True)
class Checked:
    """A scenario's check: applied to each of `contenders` that ran, with `reference` beside it
    (the numbers it compares with)."""

    check: Check
    contenders: tuple[str, ...]
    reference: str


_WORKERS = (RESPONSES.key, ASSISTANTS.key, WEBHOOKS.key)
_TRACING = Checked(tracing_cost, (TRACED.key, SAMPLED.key), RESPONSES.key)
CHECKS: dict[str, tuple[Checked, ...]] = {
    "a": (Checked(scenario_a, _WORKERS, BASELINE.key), _TRACING),
    "b": (
        Checked(scenario_b, _WORKERS, BASELINE.key),
        Checked(webhooks_b, (WEBHOOKS.key,), RESPONSES.key),
        _TRACING,
    ),
    "c": (Checked(scenario_c, _WORKERS, BASELINE.key), _TRACING),
    "d": (Checked(scenario_d, _WORKERS, BASELINE.key), _TRACING),
    "e": (Checked(scenario_e, (WEBHOOKS.key,), CONTROL.key),),
}


def evaluate(results: list[RunMetrics], scenarios: tuple[Scenario, ...]) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for s in scenarios:
        ran = {m.contender for m in results if m.scenario == s.key}
        for checked in CHECKS[s.key]:
            for key in checked.contenders:
                if {key, checked.reference} <= ran:
                    verdicts += [
                        dataclasses.replace(v, contender=key)
                        for v in checked.check(results, s, key)
                    ]
    # A target whose numbers are missing (too few events, say) is neither met nor missed.
    return [dataclasses.replace(v, met=None) if "nan" in v.measured else v for v in verdicts]


def table(verdicts: list[Verdict]) -> Table:
    rows = [
        [v.target, v.contender, v.measured, {True: "met", False: "MISSED", None: "n/a"}[v.met]]
        for v in verdicts
    ]
    note = (
        "Verdicts from the medians below. 'Schedules alone' is what the poll schedules would do "
        "for these run durations at no cost (python -m bench.poll_schedules): a worker that "
        "polls fewer times than its schedule says is polling late, because it is saturated."
    )
    headers = ["target", "contender", "measured", "verdict"]
    return Table("Targets", headers, rows, note, text_columns=4)
