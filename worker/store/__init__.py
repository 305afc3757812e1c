"""Postgres, the source of truth: records, the repository, its SQL and migrations."""
