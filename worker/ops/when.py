"""Times as operators type them: an RFC 3339 time, or an age back from now (`30m`, `2h`, `7d`).

Shared by `prune --older-than` and the dead-letter filters `--since` / `--until`, so both
commands take the same forms and refuse a bad one with the same words.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str | None, option: str) -> datetime | None:
    """The time `text` names (UTC unless it says otherwise), None for None; a bad value is a
    usage error naming `option`."""
    if text is None:
        return None
    if match := _AGE.match(text):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an RFC 3339 time nor an age like 30m, 2h, 7d", param_hint=option
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
