"""Scripted outcomes: markers that let a test or demo choose how a run ends.

Markers live in the newest user text (``[[outcome:failed]]``, ``[[delay_ms:500]]``)
or in metadata ``standin_outcome`` (``"failed"``, ``"requires_action:lookup"`` or
a full marker string). A misspelt marker is rejected with a 400 rather than
silently completing, so a scenario never passes by accident.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from standin.errors import bad_request

Outcome = Literal[
    "completed", "failed", "failed_once", "incomplete", "expired", "hang", "requires_action"
]
FailureCode = Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]

METADATA_KEY = "standin_outcome"
_OUTCOME_MARKER = re.compile(r"\[\[outcome:([^\]]*)\]\]")
_DELAY_MARKER = re.compile(r"\[\[delay_ms:(\d+)\]\]")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FAILURE_CODES: tuple[FailureCode, ...] = ("server_error", "rate_limit_exceeded", "invalid_prompt")
_PLAIN_OUTCOMES: tuple[Outcome, ...] = ("completed", "failed_once", "incomplete", "expired", "hang")


@dataclass(frozen=True)
class Script:
    outcome: Outcome = "completed"
    failure_code: FailureCode = "server_error"
    tool_name: str | None = None
    delay_ms: int | None = None

    def duration_ms(self, default_ms: int) -> int:
        return default_ms if self.delay_ms is None else self.delay_ms

    def settle_failed_once(self, is_first: bool) -> Script:
        """``failed_once`` fails only the first run of a thread (or response of a
        conversation), so the client's retry succeeds."""
        if self.outcome != "failed_once":
            return self
        return Script("failed" if is_first else "completed", delay_ms=self.delay_ms)


def parse_script(newest_user_text: str | None, metadata: Mapping[str, str]) -> Script:
    """Text markers win over metadata, which in turn may be a bare outcome value."""
    script = _from_markers(newest_user_text or "")
    if script is not None:
        return script
    value = metadata.get(METADATA_KEY)
    if value is None:
        return Script()
    if "[[" in value:
        return _from_markers(value) or Script()
    return _parse_outcome(value)


def _from_markers(text: str) -> Script | None:
    outcome = _OUTCOME_MARKER.search(text)
    delay = _DELAY_MARKER.search(text)
    if outcome is None and delay is None:
        return None
    script = _parse_outcome(outcome.group(1)) if outcome else Script()
    if delay is None:
        return script
    return Script(script.outcome, script.failure_code, script.tool_name, int(delay.group(1)))


def _parse_outcome(value: str) -> Script:
    name, _, argument = value.removeprefix("outcome:").partition(":")
    if name == "failed":
        return Script("failed", failure_code=_failure_code(argument or "server_error"))
    if name == "requires_action" and _TOOL_NAME.match(argument):
        return Script("requires_action", tool_name=argument)
    for outcome in _PLAIN_OUTCOMES:
        if name == outcome and not argument:
            return Script(outcome)
    raise bad_request(f"Unknown stand-in outcome marker '{value}'.")


def _failure_code(value: str) -> FailureCode:
    for code in _FAILURE_CODES:
        if value == code:
            return code
    raise bad_request(f"Unknown stand-in failure code '{value}'.")
