"""`assistant-worker dlq ...`: the operator's tools for the dead-letter queue.

Exit codes: 0 done; 1 done, but some events were refused (replay's poison protection);
2 bad usage or filter; 3 RabbitMQ unreachable; 4 the dead-letter queue does not exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aio_pika
import typer
from aiormq.exceptions import AMQPConnectionError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from worker.ops.dlq import DeadLetter, DeadLetterQueue, MoveReport, QueueNotFound, Selection
from worker.ops.dlq_filters import selecting
from worker.settings import Settings

T = TypeVar("T")
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NO_QUEUE = 1, 2, 3, 4

app = typer.Typer(
    help="Inspect, replay, export and purge the dead-letter queue.", no_args_is_help=True
)
# Off a terminal (pipes, files) lines are not folded at 80 columns, and there are no colours.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


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
        err.print(f"[red]cannot connect to RabbitMQ[/] ({type(exc).__name__}); check AW_AMQP_URL")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except QueueNotFound as exc:
        err.print(f"[red]dead-letter queue {exc} not found[/]; check AW_DEAD_LETTER_QUEUE")
        raise typer.Exit(EXIT_NO_QUEUE) from None


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


@app.command()
def stats(as_json: JsonOpt = False) -> None:
    """Counts by reason and by conversation, with the oldest and newest failure."""
    letters = _run(lambda q: q.read())
    times = sorted(t for t in (letter.failed_at for letter in letters) if t)
    result: dict[str, Any] = {
        "total": len(letters),
        "by_reason": dict(Counter(letter.reason for letter in letters).most_common()),
        "by_conversation": dict(
            Counter(letter.conversation_id or "-" for letter in letters).most_common()
        ),
        "oldest": times[0].isoformat() if times else None,
        "newest": times[-1].isoformat() if times else None,
    }
    if as_json:
        _print_json(result)
        return
    out.print(
        f"{result['total']} dead-lettered; oldest {result['oldest']}, newest {result['newest']}"
    )
    for title, counts in (
        ("reason", result["by_reason"]),
        ("conversation", result["by_conversation"]),
    ):
        table = Table(title=f"by {title}")
        table.add_column(title)
        table.add_column("events", justify="right")
        for key, count in counts.items():
            table.add_row(str(key), str(count))
        out.print(table)


@app.command("list")
@selecting(limit=50)
def list_(selection: Selection, as_json: JsonOpt = False) -> None:
    """Page through dead letters, head of the queue first. Nothing is removed or reordered."""
    letters = _run(lambda q: q.read(selection))
    if as_json:
        _print_json([_summary(letter) for letter in letters])
        return
    table = Table()
    for column in (
        "#",
        "event",
        "conversation",
        "reason",
        "attempts",
        "replays",
        "failed at",
        "error",
    ):
        table.add_column(column, overflow="fold")
    for letter in letters:
        s = _summary(letter)
        table.add_row(
            str(s["position"]),
            s["event_id"] or "-",
            s["conversation_id"] or "-",
            s["reason"],
            str(s["attempts"]),
            str(s["replays"]),
            s["failed_at"] or "-",
            s["error"][:80],
        )
    out.print(table)


@app.command()
def show(
    event_id: Annotated[str, typer.Argument(help="The event ID (or AMQP message ID).")],
    as_json: JsonOpt = False,
) -> None:
    """One dead letter with all its headers and its body."""
    found = _run(lambda q: q.read(Selection(event_ids=frozenset({event_id}), limit=1)))
    if not found:
        err.print(f"[red]no dead letter with event ID {event_id!r}[/]")
        raise typer.Exit(EXIT_USAGE)
    letter = found[0]
    if as_json:
        _print_json({**_summary(letter), **letter.to_record()})
        return
    out.print(f"[bold]{letter.event_id}[/] at position {letter.position}: {letter.reason}")
    for key, value in sorted(letter.headers.items()):
        out.print(f"  {key}: {value}", highlight=False)
    out.print(letter.body.decode("utf-8", "replace"), highlight=False, markup=False)


@app.command()
@selecting()
def replay(
    selection: Selection,
    rate: Annotated[float | None, typer.Option(min=0.01, help="Events per second.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would move.")] = False,
    force: Annotated[
        bool,
        typer.Option(help="Answer again even if already answered; ignore --max-replays."),
    ] = False,
    max_replays: Annotated[
        int, typer.Option(min=1, help="Refuse events replayed this many times already.")
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Move matching events back to the inbound exchange (confirmed before removal)."""
    with _progress(not as_json and out.is_terminal) as progress:
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
        raise typer.Exit(EXIT_REFUSED)


@contextmanager
def _progress(show_bar: bool) -> Iterator[Callable[[MoveReport], None] | None]:
    if not show_bar:
        yield None
        return
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task("replay", total=None, note="")

        def update(report: MoveReport) -> None:
            note = f"moved {len(report.moved)}, refused {len(report.refused)}"
            bar.update(task, completed=report.examined, note=note)

        yield update


def _report_move(verb: str, report: MoveReport, as_json: bool) -> None:
    if as_json:
        _print_json(report.as_json())
        return
    out.print(f"{verb} {len(report.moved)} of {report.examined} examined")
    for letter in report.moved:
        out.print(f"  {letter.event_id}  {letter.reason}", highlight=False)
    if report.refused:
        out.print(
            f"[yellow]refused {len(report.refused)} already replayed too often "
            "(use --force to replay anyway):[/]"
        )
        for letter in report.refused:
            out.print(f"  {letter.event_id}  replays={letter.replay_count}", highlight=False)


@app.command("export")
@selecting()
def export(
    file: Annotated[Path, typer.Argument(help="JSON Lines file to write; - for stdout.")],
    selection: Selection,
) -> None:
    """Write matching dead letters (headers + body, lossless) as JSON Lines; none are removed."""
    letters = _run(lambda q: q.read(selection))
    _write_jsonl(file, letters)
    if str(file) != "-":
        out.print(f"exported {len(letters)} dead letters to {file}")


def _write_jsonl(file: Path, letters: list[DeadLetter]) -> None:
    lines = "".join(json.dumps(letter.to_record()) + "\n" for letter in letters)
    if str(file) == "-":
        sys.stdout.write(lines)
    else:
        file.write_text(lines)


@app.command("import")
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
        err.print(f"[red]cannot read {file}:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    count = _run(lambda q: q.add(letters))
    out.print(f"imported {count} dead letters")


@app.command()
@selecting()
def purge(
    selection: Selection,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    export_to: Annotated[
        Path | None, typer.Option(help="Where to export them first (default: a dated file).")
    ] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="Do not export first.")] = False,
) -> None:
    """Delete matching dead letters, exporting them first unless told not to."""
    letters = _run(lambda q: q.read(selection))
    if not letters:
        out.print("nothing matches; nothing purged")
        return
    if not yes and not typer.confirm(f"Delete {len(letters)} dead letters?", default=False):
        raise typer.Exit(EXIT_USAGE)
    if not no_export:
        target = export_to or Path(f"dlq-purged-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl")
        _write_jsonl(target, letters)
        out.print(f"exported {len(letters)} dead letters to {target}")
    chosen = Selection(event_ids=frozenset(e for e in (x.event_id for x in letters) if e))
    report = _run(lambda q: q.purge(chosen))
    out.print(f"purged {len(report.moved)} dead letters")
