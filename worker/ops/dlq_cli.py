"""`assistant-worker dlq ...`: the operator's tools for the dead-letter queue.

Exit codes (worker/ops/exits.py): 0 done; 1 done, but some events were refused (replay's
poison protection); 2 bad usage, a bad filter, a purge or replay not confirmed, or an export
that cannot be written; 3 RabbitMQ unreachable; 4 the dead-letter queue (or an exchange the
command needs) does not exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aio_pika
import typer
from aiormq.exceptions import AMQPConnectionError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from worker.ops.conventions import console
from worker.ops.dlq import (
    UNFIXABLE,
    DeadLetter,
    DeadLetterQueue,
    MoveReport,
    NotFound,
    ReplayRules,
    Selection,
    replay_plan,
)
from worker.ops.dlq_filters import selecting
from worker.ops.dlq_tables import letters_table, short_time, stats_tables
from worker.ops.exits import ExitCode, exit_codes
from worker.settings import Settings

T = TypeVar("T")

_ALWAYS = {
    ExitCode.OK: "done",
    ExitCode.USAGE: "bad usage or filter",
    ExitCode.UNREACHABLE: "RabbitMQ unreachable",
    ExitCode.NOT_FOUND: "the dead-letter queue does not exist",
}
READING = exit_codes(_ALWAYS)
# Replay publishes to the inbound exchange, import to the dead-letter exchange.
_MOVING = {
    **_ALWAYS,
    ExitCode.NOT_FOUND: "the dead-letter queue, or the exchange to move to, does not exist",
}

app = typer.Typer(
    help="Inspect, replay, export and purge the dead-letter queue.",
    epilog=exit_codes(
        {
            **_ALWAYS,
            ExitCode.FAILED: "done, but some events were refused (replay)",
            ExitCode.USAGE: "bad usage or filter, or not confirmed",
            ExitCode.NOT_FOUND: "the dead-letter queue (or an exchange) does not exist",
        }
    ),
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output, full values.")]


def _run(work: Callable[[DeadLetterQueue], Awaitable[T]]) -> T:
    settings = Settings()
    # This command reports connection problems itself, in one line.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)

    async def main() -> T:
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with connection:
            return await work(DeadLetterQueue(connection, settings.topology))

    try:
        return asyncio.run(main())
    except (AMQPConnectionError, ConnectionError, OSError) as exc:
        _fail(f"cannot connect to RabbitMQ ({type(exc).__name__}); check AW_AMQP_URL")
        raise typer.Exit(ExitCode.UNREACHABLE) from None
    except NotFound as exc:
        _fail(f"{exc} not found; check {exc.variable}")
        raise typer.Exit(ExitCode.NOT_FOUND) from None


def _fail(message: str) -> None:
    """One line on stderr, never folded: the operator may grep or copy it."""
    console(stderr=True).print(f"[red]{escape(message)}[/]", soft_wrap=True, highlight=False)


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "position": letter.position,
        "event_id": letter.event_id,
        "conversation_id": letter.conversation_id,
        "reason": letter.reason,
        "error": letter.error,
        "attempts": letter.attempts,
        "replays": letter.replay_count,
        "failed_at": letter.failed_at.isoformat() if letter.failed_at else None,
    }


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command(epilog=READING)
def stats(as_json: JsonOpt = False) -> None:
    """Counts by reason and by conversation, with the oldest and newest failure."""
    letters = _run(lambda q: q.read())
    times = sorted(t for t in (letter.failed_at for letter in letters) if t)
    by_reason = Counter(letter.reason for letter in letters).most_common()
    by_conversation = Counter(letter.conversation_id or "-" for letter in letters).most_common()
    if as_json:
        _print_json(
            {
                "total": len(letters),
                "by_reason": dict(by_reason),
                "by_conversation": dict(by_conversation),
                "oldest": times[0].isoformat() if times else None,
                "newest": times[-1].isoformat() if times else None,
            }
        )
        return
    out = console()
    span = f"; oldest {short_time(times[0])}, newest {short_time(times[-1])} (UTC)" if times else ""
    out.print(f"{len(letters)} dead-lettered{span}", highlight=False)
    for table in stats_tables(by_reason, by_conversation, out.width):
        out.print(table)


@app.command("list", epilog=READING)
@selecting(limit=50)
def list_(selection: Selection, as_json: JsonOpt = False) -> None:
    """Page through dead letters, head of the queue first. Nothing is removed or reordered.

    Long IDs and errors are shortened to fit the terminal; `show` and `--json` give them whole.
    """
    letters = _run(lambda q: q.read(selection))
    if as_json:
        _print_json([_summary(letter) for letter in letters])
        return
    out = console()
    out.print(letters_table(letters, out.width))


@app.command(
    epilog=exit_codes({**_ALWAYS, ExitCode.USAGE: "bad usage, or no dead letter has that ID"})
)
def show(
    event_id: Annotated[str, typer.Argument(help="The event ID (or AMQP message ID).")],
    as_json: JsonOpt = False,
) -> None:
    """One dead letter with all its headers and its body, nothing shortened."""
    found = _run(lambda q: q.read(Selection(event_ids=frozenset({event_id}), limit=1)))
    if not found:
        _fail(f"no dead letter with event ID {event_id!r}")
        raise typer.Exit(ExitCode.USAGE)
    letter = found[0]
    if as_json:
        _print_json({**_summary(letter), **letter.to_record()})
        return
    # Soft-wrapped: long values reach the terminal whole, for it to wrap and to copy from.
    out = console()
    out.print(
        f"[bold]{escape(letter.event_id or '-')}[/] at position {letter.position}: "
        f"{escape(letter.reason)}",
        soft_wrap=True,
    )
    for key, value in sorted(letter.headers.items()):
        out.print(f"  {key}: {value}", highlight=False, markup=False, soft_wrap=True)
    out.print(letter.body.decode("utf-8", "replace"), highlight=False, markup=False, soft_wrap=True)


@app.command(
    epilog=exit_codes(
        {
            **_MOVING,
            ExitCode.FAILED: "done, but some events were refused (replayed --max-replays times)",
            ExitCode.USAGE: (
                "bad usage or filter, or events that cannot succeed as they are, not confirmed "
                "(no terminal to ask on, and no --force)"
            ),
        }
    )
)
@selecting()
def replay(
    selection: Selection,
    rate: Annotated[float | None, typer.Option(min=0.01, help="Events per second.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would move.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Answer again even if already answered; ignore --max-replays; replay events "
            "that cannot succeed as they are without asking."
        ),
    ] = False,
    max_replays: Annotated[
        int, typer.Option(min=1, help="Refuse events replayed this many times already.")
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Move matching events back to the inbound exchange (confirmed before removal).

    Events dead-lettered as malformed_json, schema_invalid or message_id_mismatch fail again
    as they are: before moving any, replay asks (on a terminal) or refuses (off one), unless
    --force.
    """
    rules = ReplayRules(force=force, max_replays=max_replays)
    found = _run(lambda q: q.read(dataclasses.replace(selection, limit=None)))
    plan = replay_plan(found, selection, rules)
    if not dry_run and not force:
        _confirm_unfixable([letter for letter in plan if not rules.refuses(letter)])
    with _progress(not as_json and console().is_terminal, total=len(plan)) as progress:
        report = _run(
            lambda q: q.replay(
                selection,
                rate_per_s=rate,
                force=force,
                max_replays=max_replays,
                dry_run=dry_run,
                progress=progress,
            )
        )
    _report_move("would move" if dry_run else "moved", report, as_json)
    if report.refused:
        raise typer.Exit(ExitCode.FAILED)


def _confirm_unfixable(moving: list[DeadLetter]) -> None:
    """Asks before replaying events that will only be dead-lettered again; off a terminal
    there is nobody to ask, and the answer is no."""
    unfixable = Counter(letter.reason for letter in moving if letter.reason in UNFIXABLE)
    if not unfixable:
        return
    kinds = ", ".join(f"{count} {reason}" for reason, count in sorted(unfixable.items()))
    what = (
        f"{unfixable.total()} of the {len(moving)} events to replay cannot succeed as they are "
        f"({kinds}): a replay sends them unchanged, and they would be dead-lettered again"
    )
    if not sys.stdin.isatty():
        _fail(f"{what}; leave them out (--reason) or add --force to replay them anyway")
        raise typer.Exit(ExitCode.USAGE)
    if not _confirmed(f"{what}. Replay them anyway?"):
        raise typer.Exit(ExitCode.USAGE)


def _confirmed(question: str) -> bool:
    """The operator's yes; end of input or Ctrl-C at the prompt is a no."""
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:
        return False


@contextmanager
def _progress(show_bar: bool, total: int) -> Iterator[Callable[[MoveReport], None] | None]:
    if not show_bar:
        yield None
        return
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console(), transient=True) as bar:
        task = bar.add_task("replay", total=total, note="")

        def update(report: MoveReport) -> None:
            note = f"moved {len(report.moved)}, refused {len(report.refused)}"
            bar.update(task, completed=report.taken_up, note=note)

        yield update


def _report_move(verb: str, report: MoveReport, as_json: bool) -> None:
    if as_json:
        _print_json(report.as_json())
        return
    out = console()
    out.print(f"{verb} {len(report.moved)} of {report.examined} examined")
    for letter in report.moved:
        note = "  (cannot succeed as it is)" if letter.reason in UNFIXABLE else ""
        out.print(f"  {letter.event_id}  {letter.reason}{note}", highlight=False, soft_wrap=True)
    if report.refused:
        out.print(
            f"[yellow]refused {len(report.refused)} already replayed too often "
            "(use --force to replay anyway):[/]"
        )
        for letter in report.refused:
            out.print(f"  {letter.event_id}  replays={letter.replay_count}", highlight=False)


@app.command(
    "export",
    epilog=exit_codes({**_ALWAYS, ExitCode.USAGE: "bad usage or filter, or FILE not writable"}),
)
@selecting()
def export(
    file: Annotated[Path, typer.Argument(help="JSON Lines file to write; - for stdout.")],
    selection: Selection,
) -> None:
    """Write matching dead letters (headers + body, lossless) as JSON Lines; none are removed."""
    letters = _run(lambda q: q.read(selection))
    if str(file) == "-":
        sys.stdout.write(_jsonl(letters))
        return
    _write_or_exit(file, letters, "nothing was exported")
    console().print(f"exported {len(letters)} dead letters to {file}", soft_wrap=True)


def _jsonl(letters: list[DeadLetter]) -> str:
    return "".join(json.dumps(letter.to_record()) + "\n" for letter in letters)


def _write_or_exit(file: Path, letters: list[DeadLetter], consequence: str) -> None:
    try:
        file.write_text(_jsonl(letters))
    except OSError as exc:
        _fail(f"cannot write {file}: {exc.strerror or type(exc).__name__}; {consequence}")
        raise typer.Exit(ExitCode.USAGE) from None


@app.command(
    "import",
    epilog=exit_codes({**_MOVING, ExitCode.USAGE: "bad usage, or FILE unreadable"}),
)
def import_(
    file: Annotated[Path, typer.Argument(help="JSON Lines file written by `dlq export`.")],
) -> None:
    """Add exported dead letters to this cluster's dead-letter queue."""
    try:
        letters = [
            DeadLetter.from_record(json.loads(line), n)
            for n, line in enumerate(file.read_text().splitlines(), start=1)
            if line.strip()
        ]
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot read {file}: {exc}")
        raise typer.Exit(ExitCode.USAGE) from None
    count = _run(lambda q: q.add(letters))
    console().print(f"imported {count} dead letters")


@app.command(
    epilog=exit_codes(
        {
            **_ALWAYS,
            ExitCode.USAGE: (
                "bad usage or filter, not confirmed, or the export has nowhere to go "
                "(nothing is deleted then)"
            ),
        }
    )
)
@selecting()
def purge(
    selection: Selection,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    export_to: Annotated[
        Path | None,
        typer.Option(
            help="Where to export them first (default: dlq-purged-<time>.jsonl in the working "
            "directory, which must then be writable)."
        ),
    ] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="Do not export first.")] = False,
) -> None:
    """Delete matching dead letters, exporting them first unless told not to.

    Where the export goes is checked, and said, before anything is deleted.
    """
    target = None if no_export else _export_target(export_to)
    letters = _run(lambda q: q.read(selection))
    if not letters:
        console().print("nothing matches; nothing purged")
        return
    where = f"exported to {target} first" if target else "not exported (--no-export)"
    if not yes and not _confirmed(f"Delete {len(letters)} dead letters, {where}?"):
        raise typer.Exit(ExitCode.USAGE)
    if target is not None:
        _write_or_exit(target, letters, "nothing was purged")
        console().print(f"exported {len(letters)} dead letters to {target}", soft_wrap=True)
    chosen = Selection(event_ids=frozenset(e for e in (x.event_id for x in letters) if e))
    report = _run(lambda q: q.purge(chosen))
    console().print(f"purged {len(report.moved)} dead letters")


def _export_target(export_to: Path | None) -> Path:
    """Where purge exports to, checked writable before anything is read or deleted: the
    shipped image's working directory may well be read-only."""
    default = export_to is None
    target = (export_to or Path(f"dlq-purged-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl")).absolute()
    if _can_create_in(target.parent):
        return target
    if default:
        _fail(
            f"the working directory {target.parent} is not writable, so purge has nowhere to "
            "export to: name a file with --export-to, or pass --no-export"
        )
    else:
        _fail(f"cannot write {target}: {target.parent} is not a writable directory")
    raise typer.Exit(ExitCode.USAGE)


def _can_create_in(directory: Path) -> bool:
    """Tried, not inferred from permission bits: root passes those on a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False
