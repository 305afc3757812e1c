"""The named SQL statements of sql/queries.sql, read once, looked up by name.

SQL lives only in the .sql files: no statement is ever built from strings.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Named statements from queries.sql, keyed by their `-- name:` header."""
    text = (SQL_DIR / "queries.sql").read_text()
    parts = _QUERY_HEADER.split(text)[1:]
    return {name: body.strip() for name, body in zip(parts[::2], parts[1::2], strict=True)}


def q(name: str) -> str:
    """The statement named `name` (a KeyError names a typo at its first use)."""
    return queries()[name]
