"""The store: what the core needs of it (ports), its values (records), the Postgres store with
its SQL and migrations, and an in-memory twin with the same semantics for fast tests."""
