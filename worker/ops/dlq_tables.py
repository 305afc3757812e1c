"""The dead-letter tables as people read them: fit to the terminal (100 columns is the bar),
values shortened with an ellipsis or wrapped between words, never cut inside a word.

Each column's width is decided here rather than by rich's own shrinking, which crops a table
whose longest words do not fit (cutting them without an ellipsis). `--json` and `dlq show`
carry every value whole; these tables are for reading at a glance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker.ops.dlq import DeadLetter

# The error is a sentence or two: cut at a word after this many characters, then wrapped.
ERROR_CHARS = 120
ELLIPSIS = "…"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def short_time(when: datetime) -> str:
    """To the second, in UTC, without the offset: the header says UTC."""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime(TIME_FORMAT)


def abbreviated(text: str, limit: int) -> str:
    """`text` cut after the last whole word within `limit` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = head.rsplit(None, 1)[0] if " " in head.strip() else text[:limit]
    return cut.rstrip(" ,;:") + ELLIPSIS


@dataclass(frozen=True, slots=True)
class Column:
    """A column's header, its values' widest (or its cap), and the least it may be given."""

    header: str
    natural: int
    floor: int
    wraps: bool = False  # between words; a column that does not wrap shortens with an ellipsis
    right: bool = False
    # Only its natural width or its floor helps (a time wraps whole at its space, or not).
    snaps: bool = False


def fitted(columns: Sequence[Column], width: int, give_way: Sequence[Sequence[int]]) -> list[int]:
    """Each column's width so that the table fits in `width`: every column at its natural
    width if they fit; else the groups in `give_way` shrink, in that order, the widest column
    of a group first, down to their floors. Below the floors' sum it overflows."""
    widths = [max(c.natural, 1) for c in columns]
    floors = [min(c.floor, w) for c, w in zip(columns, widths, strict=True)]
    over = sum(widths) + _overhead(len(columns)) - width
    for group in give_way:
        while over > 0:
            slack = {i: widths[i] - floors[i] for i in group if widths[i] > floors[i]}
            if not slack:
                break
            widest = max(slack, key=lambda i: widths[i])
            give = slack[widest] if columns[widest].snaps else 1
            widths[widest] -= give
            over -= give
    return widths


def _overhead(count: int) -> int:
    """What the rules and padding of a `count`-column table take, measured from rich."""
    probe = _frame([Column(str(n), 1, 1) for n in range(count)], [1] * count)
    return Console(width=10_000).measure(probe).maximum - count


def _frame(columns: Sequence[Column], widths: Sequence[int]) -> Table:
    # No vertical rules, no outer edge, two spaces between columns: the columns get the room.
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), pad_edge=False, highlight=False
    )
    for column, width in zip(columns, widths, strict=True):
        table.add_column(
            column.header,
            width=width,
            no_wrap=not column.wraps,
            overflow="ellipsis",
            justify="right" if column.right else "left",
        )
    return table


def _table(columns: Sequence[Column], width: int, give_way: Sequence[Sequence[int]]) -> Table:
    return _frame(columns, fitted(columns, width, give_way))


def _widest(values: Iterable[str], header: str, cap: int | None = None) -> int:
    natural = max((len(v) for v in values), default=0)
    natural = max(natural, len(header))
    return natural if cap is None else min(natural, cap)


def letters_table(letters: Sequence[DeadLetter], width: int) -> Table:
    """One row a dead letter: IDs and reason shortened, the error wrapped between words."""
    rows = [_row(letter) for letter in letters]
    cells = list(zip(*rows, strict=True)) if rows else [()] * 8
    columns = [
        Column("#", _widest(cells[0], "#"), 1, right=True),
        Column("event", _widest(cells[1], "event", 36), 12),
        Column("conversation", _widest(cells[2], "conversation", 36), 12),
        Column("reason", _widest(cells[3], "reason"), 12),
        Column("tries", 5, 5, right=True),
        Column("replays", 7, 7, right=True),
        Column("failed at (UTC)", _widest(cells[6], "failed at"), 10, wraps=True, snaps=True),
        Column("error", _widest(cells[7], "error", 60), 16, wraps=True),
    ]
    # The time gives way first (its date above its hour), then the IDs (shortened: `show`
    # and `--json` have them whole), then the error (it wraps), then the reason.
    table = _table(columns, width, give_way=((6,), (1, 2), (7,), (3,)))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _row(letter: DeadLetter) -> tuple[str, ...]:
    return (
        str(letter.position),
        letter.event_id or "-",
        letter.conversation_id or "-",
        letter.reason,
        str(letter.attempts),
        str(letter.replay_count),
        short_time(letter.failed_at) if letter.failed_at else "-",
        abbreviated(letter.error, ERROR_CHARS) or "-",
    )


def stats_tables(
    by_reason: Sequence[tuple[str, int]],
    by_conversation: Sequence[tuple[str, int]],
    width: int,
) -> list[Table]:
    tables = []
    for title, counts in (("reason", by_reason), ("conversation", by_conversation)):
        columns = [
            Column(title, _widest((key for key, _ in counts), title), 12),
            Column("events", _widest((str(n) for _, n in counts), "events"), 6, right=True),
        ]
        table = _table(columns, width, give_way=((0,),))
        table.title = f"by {title}"
        for key, count in counts:
            table.add_row(Text(key), str(count))
        tables.append(table)
    return tables
