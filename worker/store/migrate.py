"""Applies sql/migrations/NNNN_*.sql in order, each once, under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "sql" / "migrations"
_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant works; it only has to be the same for every migrating process.
_ADVISORY_LOCK_KEY = 0x61775F6D6967  # "aw_mig"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One file of sql/migrations/, applied once, in version order."""

    version: int
    name: str
    path: Path


def available_migrations() -> list[Migration]:
    found = []
    for path in MIGRATIONS_DIR.glob("*.sql"):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    return sorted(found, key=lambda m: m.version)


async def _connect_creating(dsn: str) -> asyncpg.Connection:
    """Connects, creating the database first if it does not exist yet."""
    try:
        return await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
        finally:
            await admin.close()
        return await asyncpg.connect(dsn)


async def migrate(dsn: str) -> list[Migration]:
    """Brings the database up to date; returns the migrations applied by this call."""
    conn = await _connect_creating(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
        return applied
    finally:
        await conn.close()


class SchemaOutOfDate(Exception):
    """The database lacks migrations this worker needs."""


async def check_schema(dsn: str) -> None:
    """Refuses to run against a database older than this code (run `migrate` first).

    A newer database is fine: migrations only add, so old workers keep working during a rollout.
    """
    conn = await asyncpg.connect(dsn)
    try:
        applied = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        applied = None
    finally:
        await conn.close()
    needed = available_migrations()[-1]
    if applied is None or applied < needed.version:
        raise SchemaOutOfDate(
            f"database schema is at {applied or 'nothing'}, this worker needs "
            f"{needed.version:04d}_{needed.name}"
        )
