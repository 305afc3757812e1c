"""The ordered migrations and the canonical schema.sql describe the same database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support import admin_sql, dsn_for
from worker.store.migrate import SchemaOutOfDate, available_migrations, check_schema, migrate
from worker.store.queries import SQL_DIR, queries

CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default,
               is_identity
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
        ORDER BY table_name, column_name""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
        ORDER BY tablename, indexname""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'schema_migrations'
        ORDER BY 1, 2""",
    "enums": """
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        GROUP BY t.typname ORDER BY t.typname""",
}


@pytest.fixture
async def empty_databases() -> AsyncIterator[tuple[str, str]]:
    names = [f"aw_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for name in names:
        await admin_sql(f'CREATE DATABASE "{name}"')
    yield dsn_for(names[0]), dsn_for(names[1])
    for name in names:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {key: [tuple(r) for r in await conn.fetch(sql)] for key, sql in CATALOG.items()}
    finally:
        await conn.close()


async def test_migrations_produce_the_canonical_schema(empty_databases: tuple[str, str]) -> None:
    migrated, canonical = empty_databases
    applied = await migrate(migrated)
    assert [m.version for m in applied] == [m.version for m in available_migrations()]
    conn = await asyncpg.connect(canonical)
    try:
        await conn.execute((SQL_DIR / "schema.sql").read_text())
    finally:
        await conn.close()

    from_migrations, from_schema = await _catalog(migrated), await _catalog(canonical)
    assert from_migrations["columns"], "the catalog query found no tables at all"
    assert from_migrations == from_schema


async def test_migrate_is_idempotent_and_creates_a_missing_database() -> None:
    name = f"aw_test_{uuid.uuid4().hex[:12]}"
    try:
        first = await migrate(dsn_for(name))
        second = await migrate(dsn_for(name))
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert len(first) == len(available_migrations())
    assert second == []


async def test_every_named_query_prepares_against_the_schema(db: asyncpg.Connection) -> None:
    for name, sql in queries().items():
        try:
            await db.prepare(sql)
        except asyncpg.PostgresError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"query {name!r} does not prepare: {exc}")


async def test_a_worker_refuses_a_database_behind_its_migrations(
    database_url: str, db: asyncpg.Connection
) -> None:
    await check_schema(database_url)  # up to date: fine
    latest = available_migrations()[-1].version
    await db.execute("DELETE FROM schema_migrations WHERE version = $1", latest)
    with pytest.raises(SchemaOutOfDate, match="this worker needs"):
        await check_schema(database_url)
