"""Exit codes, declared once: every command exits with these and lists its own in `--help`.

The same number means the same kind of outcome in every command, so a script or a Job can
tell "retry later" (3) from "fix how it is started" (2) without knowing which command ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status says."""

    OK = 0
    # The command ran but did not get everything done: a logged failure, a sync that left
    # something out, a replay that refused some events.
    FAILED = 1
    # Bad usage: a flag, a filter, a setting, an answer of "no"; nothing was changed.
    USAGE = 2
    # RabbitMQ could not be reached (or refused the credentials); nothing was changed.
    UNREACHABLE = 3
    # A queue or exchange the command needs does not exist.
    NOT_FOUND = 4


def exit_codes(meanings: Mapping[ExitCode, str]) -> str:
    """The `Exit codes:` paragraph of a command's help, in the order of the codes."""
    listed = "; ".join(f"{int(code)} {meanings[code]}" for code in sorted(meanings))
    return f"Exit codes: {listed}."
