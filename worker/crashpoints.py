"""Deliberate crashes and failures at named points, for the tests that prove nothing is lost
or doubled, and that every failure is bounded.

Off unless AW_CRASH_POINTS is set, e.g. `after_run_created=0.05,mid_poll=0.02`: at each named
point the process kills itself with SIGKILL with that probability: no cleanup, no finally
blocks, exactly like a node dying. AW_FAULT_POINTS, e.g. `run_create=2`, makes the stage raise
InjectedFault that many times instead. Never set either in production.
"""

from __future__ import annotations

import os
import random
import signal
from enum import StrEnum


class CrashPoint(StrEnum):
    """Where AW_CRASH_POINTS may kill the process: the moments when the API, the broker and
    Postgres know different things, which the next owner must neither lose nor repeat."""

    AFTER_UPLOAD = "after_upload"  # the API has an attachment's file, Postgres not its ID
    BEFORE_RUN_START = "before_run_start"  # batch recorded, nothing sent to the API yet
    AFTER_RUN_CREATED = "after_run_created"  # the API has the run, Postgres has not its ID
    MID_POLL = "mid_poll"  # the run is stored and being polled
    AFTER_REPLY_RECORDED = "after_reply_recorded"  # reply in the outbox, not yet published
    AFTER_PUBLISH_CONFIRMED = "after_publish_confirmed"  # broker has it, outbox row not marked
    AFTER_RUN_STOPPED = "after_run_stopped"  # an interrupt cancelled the run at the API
    AFTER_CONTROL_APPLIED = "after_control_applied"  # its API effect done, not yet settled
    AFTER_TOOL_RAN = "after_tool_ran"  # a tool's handler ran; its outcome is not recorded


def _parse(spec: str) -> dict[str, float]:
    chances: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, chance = part.partition("=")
        CrashPoint(name)  # an unknown name is a typo in a test: fail loudly
        chances[name] = float(chance or 1.0)
    return chances


_CHANCES = _parse(os.environ.get("AW_CRASH_POINTS", ""))


def maybe_crash(point: CrashPoint) -> None:
    chance = _CHANCES.get(point)
    if chance and random.random() < chance:
        os.kill(os.getpid(), signal.SIGKILL)


class FaultPoint(StrEnum):
    """The stages of handling an event, where AW_FAULT_POINTS makes the worker raise."""

    INTAKE = "intake"  # a delivery is being parsed and stored
    BATCH_OPEN = "batch_open"  # a batch was opened, nothing sent for it yet
    THREAD_CREATE = "thread_create"  # the conversation needs its thread
    UPLOAD = "upload"  # an attachment is being uploaded or looked up
    RUN_CREATE = "run_create"  # the run is about to be started
    POLL = "poll"  # the run is being polled
    RECORD = "record"  # the run ended; its reply is about to be recorded
    PUBLISH = "publish"  # an outbox row is being published


class InjectedFault(Exception):
    """Raised on purpose at a fault point: a failure no class covers, as a bug would be."""


def _parse_counts(spec: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, times = part.partition("=")
        FaultPoint(name)  # a typo in a test fails loudly
        counts[name] = int(times or 1)
    return counts


# How many more times each point raises in this process, e.g. `run_create=2,poll=1`.
_FAULTS = _parse_counts(os.environ.get("AW_FAULT_POINTS", ""))


def arm_faults(spec: str) -> None:
    """Replaces the armed faults (for in-process tests; processes read AW_FAULT_POINTS)."""
    _FAULTS.clear()
    _FAULTS.update(_parse_counts(spec))


def maybe_fail(point: FaultPoint) -> None:
    if _FAULTS.get(point, 0) > 0:
        _FAULTS[point] -= 1
        raise InjectedFault(f"fault injected at {point}")
