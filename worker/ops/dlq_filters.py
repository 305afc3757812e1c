"""The options that choose dead letters, declared once for every `dlq` command that takes them.

`@selecting()` puts them among a command's options where its `selection: Selection` parameter
stands, and calls the command with the Selection they make. Typer reads a command's options
from its signature, so each command's `--help` lists the filters with its own options.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from worker.ops.dlq import REASONS, Selection
from worker.ops.when import parse_when


def known_reasons(values: list[str] | None) -> list[str] | None:
    """The `--reason` values, each one a reason code: a misspelt one would match nothing and
    look like an empty queue, so it is refused, with the likely code and every valid one."""
    for value in values or ():
        if value not in REASONS:
            raise typer.BadParameter(_unknown(value, REASONS), param_hint="--reason")
    return values


def _unknown(value: str, valid: Iterable[str]) -> str:
    choices = list(valid)
    close = difflib.get_close_matches(value, choices, n=1)
    guess = f" (did you mean {close[0]}?)" if close else ""
    return f"{value!r} is no reason code{guess}; valid: {', '.join(choices)}"


def _complete_reason(incomplete: str) -> list[str]:
    return [reason for reason in REASONS if reason.startswith(incomplete)]


ReasonOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--reason",
        callback=known_reasons,
        autocompletion=_complete_reason,
        help=f"Reason code (repeatable): {', '.join(REASONS)}.",
    ),
]
ConversationOpt = Annotated[
    list[str] | None, typer.Option("--conversation", help="Conversation ID (repeatable).")
]
EventOpt = Annotated[list[str] | None, typer.Option("--event-id", help="Event ID (repeatable).")]
SinceOpt = Annotated[
    str | None, typer.Option(help="Failed at or after: RFC 3339 time, or an age such as 2h, 30m.")
]
UntilOpt = Annotated[str | None, typer.Option(help="Failed at or before (same forms as --since).")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="At most this many events.")]

# Parameter name and type of each filter, in the order `--help` lists them.
_FILTERS: tuple[tuple[str, Any], ...] = (
    ("reason", ReasonOpt),
    ("conversation", ConversationOpt),
    ("event_id", EventOpt),
    ("since", SinceOpt),
    ("until", UntilOpt),
    ("limit", LimitOpt),
)
Command = Callable[..., None]


def selection_of(
    reason: list[str] | None,
    conversation: list[str] | None,
    event_id: list[str] | None,
    since: str | None,
    until: str | None,
    limit: int | None,
) -> Selection:
    """The Selection the filter options name; a bad time is a usage error naming its option."""
    return Selection(
        reasons=frozenset(reason or ()),
        conversations=frozenset(conversation or ()),
        event_ids=frozenset(event_id or ()),
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        limit=limit,
    )


def selecting(*, limit: int | None = None) -> Callable[[Command], Command]:
    """Gives a command the filter options; `limit` is its default for `--limit`."""
    return lambda command: _Selecting(command, limit)


class _Selecting:
    """A command as typer sees it: its own options with the filters in place of `selection`.

    A callable object rather than a function, so that it can carry the signature typer reads.
    """

    def __init__(self, command: Command, limit: int | None) -> None:
        functools.update_wrapper(self, command)
        self._command = command
        self.__signature__ = _with_filters(inspect.signature(command, eval_str=True), limit)

    def __call__(self, **options: Any) -> None:
        filters = {name: options.pop(name) for name, _ in _FILTERS}
        self._command(selection=selection_of(**filters), **options)


def _with_filters(signature: inspect.Signature, limit: int | None) -> inspect.Signature:
    filters = [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=annotation,
            default=limit if name == "limit" else None,
        )
        for name, annotation in _FILTERS
    ]
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        parameters.extend(filters if parameter.name == "selection" else [parameter])
    return signature.replace(parameters=parameters)
