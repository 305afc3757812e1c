"""Configuration of the OpenAI stand-in.

The config is immutable so a handler never sees a half-applied update; run-time
changes (``POST /_standin/config``) swap in a new object through ``LiveConfig``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StandInConfig:
    """Timing and behaviour knobs; every duration carries its unit in the name."""

    queue_ms: int = 20
    run_duration_ms: int = 200
    cancel_ms: int = 20
    poll_after_ms: int | None = 500
    seed: int = 0
    auto_assistants: bool = True
    default_model: str = "gpt-4o-mini"
    run_expires_after_s: int = 600

    def __post_init__(self) -> None:
        for name in ("queue_ms", "run_duration_ms", "cancel_ms", "run_expires_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.poll_after_ms is not None and self.poll_after_ms < 0:
            raise ValueError("poll_after_ms must be >= 0 or null")

    def updated(self, changes: Mapping[str, Any]) -> StandInConfig:
        """Return a copy with ``changes`` applied; values are type-checked because
        they usually come from JSON."""
        hints = typing.get_type_hints(StandInConfig)
        for name, value in changes.items():
            if name not in hints:
                raise ValueError(f"unknown config field {name!r}")
            if not _matches(value, hints[name]):
                raise ValueError(f"config field {name!r} must be {hints[name]}, got {value!r}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _matches(value: object, hint: object) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    # JSON booleans are ints in Python; an int field must not accept true/false.
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


class LiveConfig:
    """Shared pointer to the current config, so components see run-time updates."""

    def __init__(self, config: StandInConfig) -> None:
        self.current = config
