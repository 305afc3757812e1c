"""Polls per run and detection delay of poll schedules alone, with no CPU or network cost.

    python -m bench.poll_schedules [--run-ms 2000] [--jitter 0.25] [--queue-ms 20]

Scenario (b)'s run durations (uniform run_ms +- jitter, after queue_ms queued) against:
the SDK's `create_and_poll` without a server hint (a GET at once, then every 1 s), the worker's
geometric schedule (100 ms x1.5 up to 2 s: what it uses until it has seen 20 runs), and the
worker's learned schedule (`worker.relay.polling.PollPlan` after 100 runs of the same lengths),
jitter left out. The figures are lower bounds: a real poll also waits for the event loop, the
network and the server.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
from collections.abc import Callable, Iterator

from worker.relay.polling import PollPlan, PollSchedule, RunDurations

Schedule = Callable[[], Iterator[float]]  # successive poll times after the create returned


def sdk_default() -> Iterator[float]:
    return itertools.count(0.0, 1.0)


# The worker's defaults, jitter left out.
SCHEDULE = PollSchedule(initial_ms=100, max_ms=2000, growth=1.5, jitter=0.0)


def worker_default() -> Iterator[float]:
    at = 0.0
    for n in itertools.count():
        at += SCHEDULE.delay_s(n)
        yield at


def learned(seen: list[float]) -> Schedule:
    """The worker's PollPlan, having learned from runs of lengths `seen`."""
    durations = RunDurations()
    for length in seen:
        durations.observe(length)

    def polls() -> Iterator[float]:
        plan = PollPlan(SCHEDULE, durations, started_at=0.0)
        at = 0.0
        while True:
            at += plan.next_delay_s(at)
            yield at

    return polls


def simulate(schedule: Schedule, durations: list[float]) -> tuple[float, float, float]:
    """(polls per run, median detection delay ms, p90 detection delay ms)."""
    polls, delays = [], []
    for duration in durations:
        for n, at in enumerate(schedule(), start=1):
            if at >= duration:
                polls.append(n)
                delays.append(at - duration)
                break
    ordered = sorted(delays)
    return (
        statistics.mean(polls),
        1000 * ordered[len(ordered) // 2],
        1000 * ordered[int(0.9 * len(ordered))],
    )


def main(args: argparse.Namespace) -> None:
    rng = random.Random(0)
    spread = args.run_ms * args.jitter
    durations = [
        (args.queue_ms + args.run_ms + rng.uniform(-spread, spread)) / 1000 for _ in range(10_000)
    ]
    schedules = {
        "SDK create_and_poll, no hint (baseline)": sdk_default,
        "worker, geometric (100 ms x1.5, max 2 s)": worker_default,
        "worker, learned from 100 runs": learned(durations[:100]),
    }
    print(f"runs {args.queue_ms} + {args.run_ms} ms +- {args.jitter:.0%}, schedule only:")
    print(f"  {'polls/run':>9} {'delay p50':>10} {'delay p90':>10}  schedule")
    for name, schedule in schedules.items():
        polls, p50, p90 = simulate(schedule, durations)
        print(f"  {polls:9.2f} {p50:8.0f} ms {p90:7.0f} ms  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.poll_schedules", description=__doc__)
    parser.add_argument("--run-ms", type=int, default=2000)
    parser.add_argument("--jitter", type=float, default=0.25)
    parser.add_argument("--queue-ms", type=int, default=20)
    main(parser.parse_args(sys.argv[1:]))
