"""What every `assistant-worker` command does alike: `-h`, `--version`, one-line usage errors,
and output that fits the terminal (or `COLUMNS`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperGroup

from worker.ops.exits import ExitCode

PROGRAM = "assistant-worker"
CONTEXT = {"help_option_names": ["-h", "--help"]}
# Off a terminal (pipes, files), without COLUMNS, lines are not folded at 80 columns.
UNBOUNDED_WIDTH = 240


class OneLineErrors(TyperGroup):
    """The root command: a usage error (a bad flag or filter value, an unknown option) is one
    line on stderr naming what to change, as a bad setting is, instead of a framed box that
    folds the message at 80 columns; the exit code stays 2."""

    def main(  # type: ignore[override]  # the same parameters, spelt out for the override
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        # `python -m worker` (and a test's runner) is the same program, and says so.
        prog_name = PROGRAM
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except ClickException as exc:
            _fail(exc, prog_name)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(ExitCode.FAILED)
        # Without standalone mode an explicit Exit comes back as its code.
        sys.exit(result if isinstance(result, int) else ExitCode.OK)


def _fail(exc: ClickException, prog_name: str) -> NoReturn:
    where = prog_name
    hint = ""
    if isinstance(exc, UsageError) and exc.ctx is not None:
        where = exc.ctx.command_path
        hint = f" (see {where} -h)"
    # Typer words a refused choice as pydantic does ("Value error, 'x' is not one of ...").
    message = exc.format_message().replace("Value error, ", "")
    typer.echo(f"{where}: {message}{hint}", err=True)
    sys.exit(exc.exit_code)


def show_version(value: bool) -> None:
    """The eager `--version` option: prints the installed version and exits."""
    if value:
        typer.echo(f"{PROGRAM} {installed_version()}")
        raise typer.Exit(ExitCode.OK)


def installed_version() -> str:
    try:
        return version(PROGRAM)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def console(*, stderr: bool = False) -> Console:
    """A console as wide as COLUMNS says, else as the terminal; off a terminal, wide enough
    that lines are not folded. Made when a command runs, so COLUMNS is read then."""
    stream = sys.stderr if stderr else sys.stdout
    bounded = "COLUMNS" in os.environ or stream.isatty()
    return Console(stderr=stderr, width=None if bounded else UNBOUNDED_WIDTH)
