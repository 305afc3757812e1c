"""Deliberate crashes at named points, for the tests that prove nothing is lost or doubled.

Off unless AW_CRASH_POINTS is set, e.g. `after_run_created=0.05,mid_poll=0.02`: at each named
point the process kills itself with SIGKILL with that probability: no cleanup, no finally
blocks, exactly like a node dying. Never set it in production.
"""

from __future__ import annotations

import os
import random
import signal
from enum import StrEnum


class CrashPoint(StrEnum):
    BEFORE_RUN_START = "before_run_start"  # batch recorded, nothing sent to the API yet
    AFTER_RUN_CREATED = "after_run_created"  # the API has the run, Postgres has not its ID
    MID_POLL = "mid_poll"  # the run is stored and being polled
    AFTER_REPLY_RECORDED = "after_reply_recorded"  # reply in the outbox, not yet published
    AFTER_PUBLISH_CONFIRMED = "after_publish_confirmed"  # broker has it, outbox row not marked


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
