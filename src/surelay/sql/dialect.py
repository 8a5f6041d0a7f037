"""The SQL surelay speaks to a host's database: PostgreSQL or SQLite.

Everything here is text made from the table's name (checked to be a plain identifier,
so it is safe to put into statements) and the parameter style of the driver that runs
it. Statements are written once with named placeholders (`{name}`) and rendered per
driver: psycopg and Django take `%(name)s` / `%s`, sqlite3 and SQLAlchemy `:name`,
asyncpg `$n`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

__all__ = ["COLUMNS", "Dialect", "parse_url", "render"]

Kind = Literal["postgresql", "sqlite"]

COLUMNS = (
    "message_id",
    "part",
    "transport",
    "payload",
    "msg_key",
    "idempotency_key",
    "priority",
    "headers",
    "created_at",
    "not_before",
    "msg_type",
)
"""The columns a send fills, in order (`id` is the database's)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)\}")


def parse_url(url: object) -> tuple[Kind, str]:
    """The database kind and what its driver connects with: a libpq URL for PostgreSQL,
    a file path for SQLite (`sqlite:///relative.db`, `sqlite:////absolute.db`)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty str, got {url!r}")
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        parts = urlsplit(url)
        for name in ("ssl", "prepared_statement_cache_size", "statement_cache_size"):
            if any(q.split("=", 1)[0] == name for q in parts.query.split("&") if q):
                raise ValueError(
                    f"url parameter {name!r} is a driver's, not libpq's (the relay "
                    f"connects with libpq: use sslmode=... and libpq's parameters)"
                )
        return "postgresql", parts._replace(scheme="postgresql").geturl()
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        if not url.split(":", 1)[1].startswith("///"):
            raise ValueError(
                f"a SQLite url is sqlite:///relative/path.db or sqlite:////absolute/path.db, "
                f"got {url!r}"
            )
        if "?" in url:
            raise ValueError(
                f"a SQLite url takes no parameters (the relay opens the file), got {url!r}"
            )
        path = unquote(url.split(":", 1)[1][3:])
        if not path or path == ":memory:":
            raise ValueError(
                "a SQLite outbox needs a file that the relay can open too, not :memory:"
            )
        return "sqlite", path
    raise ValueError(f"url must start with postgresql:// or sqlite:///, got {url!r}")


@functools.lru_cache(maxsize=256)
def render(sql: str, style: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with its `{name}` placeholders in a driver's style: `named` (`:name`),
    `pyformat` (`%(name)s`), `format` (`%s`), `qmark` (`?`) or `numeric` (`$1`), and
    the placeholders' names in order (what positional values follow). Cached: the same
    few statements are rendered for every send."""
    if style not in ("named", "pyformat", "format", "numeric", "qmark"):
        raise ValueError(f"unknown parameter style {style!r}")
    names: list[str] = []

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        names.append(name)
        if style == "named":
            return f":{name}"
        if style == "pyformat":
            return f"%({name})s"
        if style == "qmark":
            return "?"
        return "%s" if style == "format" else f"${len(names)}"

    return _PLACEHOLDER.sub(one, sql), tuple(names)


@dataclass(frozen=True)
class Dialect:
    """The statements for one outbox table in one kind of database."""

    kind: Kind
    table: str

    def __post_init__(self) -> None:
        if not isinstance(self.table, str) or not _IDENTIFIER.fullmatch(self.table):
            raise ValueError(
                f"table must be a plain SQL identifier (letters, digits, _; at most 48), "
                f"got {self.table!r}"
            )

    @property
    def leases(self) -> str:
        return f"{self.table}_leases"

    @property
    def relays(self) -> str:
        return f"{self.table}_relays"

    @property
    def idle(self) -> str:
        return f"{self.table}_idle"

    @property
    def channel(self) -> str:
        """The NOTIFY channel (PostgreSQL)."""
        return self.table

    def ddl(self) -> str:
        """The table, the lease tables and (PostgreSQL) the trigger that wakes relays
        at commit; every statement idempotent, and none takes a lock on a table that
        exists already (so running it at every start does not stall the senders).

        The trigger notifies only while a relay waits for it (a row in `<table>_idle`):
        a NOTIFY makes its transaction's commit wait for every other notifying commit,
        so busy senders would queue behind each other; a busy relay reads without it.
        The trigger reads `<table>_idle` as senders find the table itself (by their
        search path), and anyone may read it (relay names only), so senders need no
        grant for it. (Not `SECURITY DEFINER ... SET search_path`: that makes every
        sending transaction 1.2 times as long.)

        No index besides the primary key: relays read in id order and delete by id,
        and each index would cost every sending transaction an update. A table made
        before `not_before` and `msg_type` existed gets them (PostgreSQL: here, only if
        missing; SQLite: `SqlOutbox.create_table`, or `ALTER TABLE ... ADD COLUMN
        not_before REAL` and `ADD COLUMN msg_type TEXT` in a migration)."""
        t = self.table
        if self.kind == "postgresql":
            return f"""\
CREATE TABLE IF NOT EXISTS {t} (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    transport TEXT NOT NULL,
    payload BYTEA NOT NULL,
    msg_key TEXT,
    idempotency_key TEXT,
    priority SMALLINT NOT NULL,
    headers TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    not_before DOUBLE PRECISION,
    msg_type TEXT
);
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = '{t}'::regclass AND attname = 'not_before' AND NOT attisdropped
    ) THEN
        ALTER TABLE {t} ADD COLUMN not_before DOUBLE PRECISION, ADD COLUMN msg_type TEXT;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {self.leases} (
    part INTEGER PRIMARY KEY,
    owner TEXT,
    expires_at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {self.relays} (
    relay TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {self.idle} (
    relay TEXT PRIMARY KEY
);
GRANT SELECT ON {self.idle} TO PUBLIC;
CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {self.idle}) THEN
        PERFORM pg_notify('{self.channel}', '');
    END IF;
    RETURN NULL;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = lower('{t}_notify') AND tgrelid = '{t}'::regclass
    ) THEN
        CREATE TRIGGER {t}_notify AFTER INSERT ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify();
    END IF;
END $$;
"""
        return f"""\
CREATE TABLE IF NOT EXISTS {t} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    transport TEXT NOT NULL,
    payload BLOB NOT NULL,
    msg_key TEXT,
    idempotency_key TEXT,
    priority INTEGER NOT NULL,
    headers TEXT,
    created_at REAL NOT NULL,
    not_before REAL,
    msg_type TEXT
);
CREATE TABLE IF NOT EXISTS {self.leases} (
    part INTEGER PRIMARY KEY,
    owner TEXT,
    expires_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {self.relays} (
    relay TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    partitions INTEGER NOT NULL
);
"""

    def insert(self, rows: int) -> str:
        """One INSERT of `rows` rows, placeholders `{column_i}`."""
        values = ", ".join(
            "(" + ", ".join(f"{{{c}_{i}}}" for c in COLUMNS) + ")" for i in range(rows)
        )
        return f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES {values}"
