"""The SQL outbox fixtures (a real PostgreSQL, a SQLite file) for `surelay relay`."""

from tests.sql.conftest import pg_url, postgres, sqlite_url

__all__ = ["pg_url", "postgres", "sqlite_url"]
