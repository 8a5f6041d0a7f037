"""The relay's own connection to the outbox's database: leases, taking rows, deleting
the rows whose messages have ended, and (PostgreSQL) waiting for NOTIFY.

Every statement runs in autocommit mode: each is a transaction of its own, so a relay
holds no transaction open while it works. Times in lease rows are the database's clock
on PostgreSQL (relays on several machines agree on it) and this machine's on SQLite
(one file: one machine).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from surelay.sql.dialect import Dialect, render

logger = logging.getLogger("surelay.relay")

__all__ = ["Database", "PostgresDatabase", "SqliteDatabase", "connect", "listen"]

ROW_COLUMNS = (
    "id, message_id, part, transport, payload, msg_key, idempotency_key, priority, headers, "
    "created_at, not_before, msg_type"
)
DELETE_CHUNK = 1000

CONNECT: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""libpq settings of the relay's connections (a URL's own settings are overridden)."""

SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
}
"""The server's keepalives on the relay's session: a dead relay's locks go in ~11 s."""


class Database(Protocol):
    """What a relay asks of its database (see the module docstring)."""

    def now(self) -> float: ...

    def heartbeat(self, me: str, lease: float, now: float, partitions: int) -> dict[str, int]:
        """Say `me` (relaying in `partitions` partitions) is alive until `now + lease`;
        the relays alive now, with their numbers of partitions."""
        ...

    def idle(self, me: str, waiting: bool) -> None:
        """Say whether `me` waits for senders to NOTIFY (PostgreSQL; see
        `Dialect.ddl`): senders notify while any relay waits."""
        ...

    def renew(self, me: str, parts: Iterable[int], lease: float, now: float) -> set[int]:
        """Extend `me`'s leases of `parts`; those still `me`'s."""
        ...

    def claim(self, me: str, parts: Iterable[int], lease: float, now: float) -> set[int]:
        """Take those of `parts` that are free, expired or `me`'s already."""
        ...

    def release(self, me: str, part: int) -> None: ...

    def leave(self, me: str, parts: Iterable[int]) -> None:
        """Give back `parts` and say `me` is gone (at close)."""
        ...

    def take(
        self, parts: Sequence[int], partitions: int, after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """Up to `limit` rows of partitions `parts` (of `partitions`) with ids above
        `after`, in id order."""
        ...

    def ids(
        self, parts: Sequence[int], partitions: int, after: int, upto: int, limit: int
    ) -> list[int]:
        """Up to `limit` ids of rows of `parts` in (`after`, `upto`], in order."""
        ...

    def rows(self, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """The rows of `ids` still there, in id order."""
        ...

    def delete(self, ids: Sequence[int]) -> None: ...

    def backlog(self) -> tuple[int, float | None]:
        """Rows in the table, and the oldest one's `created_at`."""
        ...

    def owners(self) -> dict[int, str]:
        """Each leased partition's holder (for `stats`)."""
        ...

    def close(self) -> None: ...


class _Common:
    """Statements alike in both databases (`{x}` placeholders rendered per driver)."""

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect

    def _run(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        raise NotImplementedError

    def _upsert_relay(self) -> str:
        return (
            f"INSERT INTO {self.d.relays} (relay, expires_at, partitions) "
            f"VALUES ({{me}}, {{until}}, {{partitions}}) "
            f"ON CONFLICT (relay) DO UPDATE SET expires_at = excluded.expires_at, "
            f"partitions = excluded.partitions"
        )

    def heartbeat(self, me: str, lease: float, now: float, partitions: int) -> dict[str, int]:
        run = self._run
        run(self._upsert_relay(), {"me": me, "until": now + lease, "partitions": partitions})
        run(f"DELETE FROM {self.d.relays} WHERE expires_at < {{old}}", {"old": now - lease})
        rows = run(
            f"SELECT relay, partitions FROM {self.d.relays} WHERE expires_at >= {{now}}",
            {"now": now},
        )
        return {r[0]: r[1] for r in rows}

    def _claim(self) -> str:
        return (
            f"INSERT INTO {self.d.leases} (part, owner, expires_at) "
            f"VALUES ({{part}}, {{me}}, {{until}}) "
            f"ON CONFLICT (part) DO UPDATE SET owner = excluded.owner, "
            f"expires_at = excluded.expires_at "
            f"WHERE {self.d.leases}.owner IS NULL OR {self.d.leases}.owner = excluded.owner "
            f"OR {self.d.leases}.expires_at < {{now}} RETURNING part"
        )

    def release(self, me: str, part: int) -> None:
        self._run(
            f"UPDATE {self.d.leases} SET owner = NULL, expires_at = 0 "
            f"WHERE part = {{part}} AND owner = {{me}}",
            {"part": part, "me": me},
        )

    def leave(self, me: str, parts: Iterable[int]) -> None:
        self._run(
            f"UPDATE {self.d.leases} SET owner = NULL, expires_at = 0 WHERE owner = {{me}}",
            {"me": me},
        )
        self._run(f"DELETE FROM {self.d.relays} WHERE relay = {{me}}", {"me": me})

    def backlog(self) -> tuple[int, float | None]:
        return _backlog(self._run, self.d.table)


BACKLOG_CAP = 100_000
"""Rows counted at most for `health()` (a count of millions would hold up the relay)."""


def _backlog(
    run: Callable[[str, dict[str, Any] | None], list[Any]], table: str
) -> tuple[int, float | None]:
    """Rows waiting (counted up to `BACKLOG_CAP`) and the oldest one's `created_at` (by
    the primary key: the first row is the oldest)."""
    count = run(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {BACKLOG_CAP}) AS w", None)
    oldest = run(f"SELECT created_at FROM {table} ORDER BY id LIMIT 1", None)
    created = oldest[0][0] if oldest else None
    return int(count[0][0]), float(created) if isinstance(created, int | float) else None


def _ints(values: Iterable[int]) -> str:
    """Integers for an IN list (ints only: nothing of a user's reaches SQL this way)."""
    return ", ".join(str(int(v)) for v in values)


class SqliteDatabase(_Common):
    """A relay's connection to a SQLite outbox."""

    def __init__(self, dialect: Dialect, path: str) -> None:
        super().__init__(dialect)
        self._conn = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )

    def _run(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:

        return self._conn.execute(render(sql, "named")[0], params or {}).fetchall()

    def now(self) -> float:
        return time.time()

    def idle(self, me: str, waiting: bool) -> None:
        """(SQLite has no NOTIFY: its relays poll.)"""

    def renew(self, me: str, parts: Iterable[int], lease: float, now: float) -> set[int]:
        listed = _ints(parts)
        if not listed:
            return set()
        rows = self._run(
            f"UPDATE {self.d.leases} SET expires_at = {{until}} "
            f"WHERE owner = {{me}} AND part IN ({listed}) RETURNING part",
            {"me": me, "until": now + lease},
        )
        return {r[0] for r in rows}

    def claim(self, me: str, parts: Iterable[int], lease: float, now: float) -> set[int]:
        got: set[int] = set()
        self._run("BEGIN IMMEDIATE")  # one commit for them all, not one each
        try:
            for part in parts:
                args = {"part": part, "me": me, "until": now + lease, "now": now}
                if self._run(self._claim(), args):
                    got.add(part)
        except BaseException:
            self._run("ROLLBACK")
            raise
        self._run("COMMIT")
        return got

    def take(
        self, parts: Sequence[int], partitions: int, after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        return self._run(
            f"SELECT {ROW_COLUMNS} FROM {self.d.table} "
            f"WHERE part % {int(partitions)} IN ({_ints(parts)}) "
            f"AND id > {{after}} ORDER BY id LIMIT {{limit}}",
            {"after": after, "limit": limit},
        )

    def ids(
        self, parts: Sequence[int], partitions: int, after: int, upto: int, limit: int
    ) -> list[int]:
        rows = self._run(
            f"SELECT id FROM {self.d.table} WHERE part % {int(partitions)} IN ({_ints(parts)}) "
            f"AND id > {{after}} AND id <= {{upto}} ORDER BY id LIMIT {{limit}}",
            {"after": after, "upto": upto, "limit": limit},
        )
        return [r[0] for r in rows]

    def rows(self, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        return self._run(
            f"SELECT {ROW_COLUMNS} FROM {self.d.table} WHERE id IN ({_ints(ids)}) ORDER BY id"
        )

    def delete(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start : start + DELETE_CHUNK]
            self._run(f"DELETE FROM {self.d.table} WHERE id IN ({_ints(chunk)})")

    def owners(self) -> dict[int, str]:
        rows = self._run(
            f"SELECT part, owner FROM {self.d.leases} WHERE owner IS NOT NULL "
            f"AND expires_at >= {{now}}",
            {"now": time.time()},
        )
        return {r[0]: r[1] for r in rows}

    def close(self) -> None:
        self._conn.close()


class PostgresDatabase(_Common):
    """A relay's connection to a PostgreSQL outbox. A partition is held by a lease row
    and by a session advisory lock on this connection: a relay whose connection is gone
    (its process killed, its machine cut off) holds no lock, and one that has lost its
    locks (a reconnect) takes them again before it relays that partition's rows."""

    def __init__(self, dialect: Dialect, url: str, lease: float) -> None:
        super().__init__(dialect)
        import psycopg  # noqa: PLC0415  # surelay[postgres]

        # keepalives: a server whose machine vanished is noticed in seconds, not hours
        self._conn = psycopg.connect(url, autocommit=True, **CONNECT)
        # and the server's side of it: a relay whose machine vanished holds advisory
        # locks until the server gives its session up (hours, with the OS defaults)
        for name, value in SERVER_KEEPALIVES.items():
            self._conn.execute(f"SET {name} = {int(value)}")
        if self._conn.info.server_version >= 140000:
            # the server ends the session of a relay silent for a lease (a stopped or
            # frozen process holds no lock past it); a live relay speaks once a beat
            self._conn.execute(f"SET idle_session_timeout = {int(lease * 1000)}")
        self._locks: set[int] = set()
        # the locks' first key: the table itself (its oid), so tables of one name in
        # several schemas (one per tenant) do not share locks
        found = self._run("SELECT to_regclass({table})::oid::text", {"table": dialect.table})
        if not found or found[0][0] is None:
            raise LookupError(f"no table {dialect.table!r}: run outbox.create_table() first")
        self._lock_key: str = found[0][0]
        waits = self._run("SELECT to_regclass({table})", {"table": dialect.idle})
        self._waits = bool(waits and waits[0][0] is not None)
        """Whether `<table>_idle` exists: a table made by an older surelay has none,
        and its trigger notifies at every commit (relays then need not say they wait)."""
        if not self._waits:
            logger.warning(
                "table %s has no %s (made by an older surelay): run outbox.create_table() "
                "or the migration again; until then every commit wakes the relays",
                dialect.table,
                dialect.idle,
            )

    def _run(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:

        cursor = self._conn.execute(render(sql, "pyformat")[0], params or {})
        return cursor.fetchall() if cursor.description is not None else []

    def now(self) -> float:
        return float(self._run("SELECT extract(epoch from clock_timestamp())")[0][0])

    def idle(self, me: str, waiting: bool) -> None:
        if not self._waits:
            return
        if waiting:
            self._run(
                f"INSERT INTO {self.d.idle} (relay) VALUES ({{me}}) ON CONFLICT DO NOTHING",
                {"me": me},
            )
        else:
            self._run(f"DELETE FROM {self.d.idle} WHERE relay = {{me}}", {"me": me})

    def heartbeat(self, me: str, lease: float, now: float, partitions: int) -> dict[str, int]:
        relays = super().heartbeat(me, lease, now, partitions)
        if not self._waits:
            return relays
        # a relay that died waiting would have senders notify for nothing, for ever
        self._run(
            f"DELETE FROM {self.d.idle} WHERE relay NOT IN (SELECT relay FROM {self.d.relays})"
        )
        return relays

    def renew(self, me: str, parts: Iterable[int], lease: float, now: float) -> set[int]:
        wanted = [p for p in parts if p in self._locks]
        if not wanted:
            return set()
        rows = self._run(
            f"UPDATE {self.d.leases} SET expires_at = {{until}} "
            f"WHERE owner = {{me}} AND part = ANY({{parts}}) RETURNING part",
            {"me": me, "until": now + lease, "parts": wanted},
        )
        return {r[0] for r in rows}

    def _lock(self, part: int) -> bool:
        if part in self._locks:
            return True
        rows = self._run(
            "SELECT pg_try_advisory_lock(hashtext({key}), {part})",
            {"key": self._lock_key, "part": part},
        )
        if rows[0][0]:
            self._locks.add(part)
            return True
        return False

    def _unlock(self, part: int) -> None:
        if part in self._locks:
            self._locks.discard(part)
            self._run(
                "SELECT pg_advisory_unlock(hashtext({key}), {part})",
                {"key": self._lock_key, "part": part},
            )

    def claim(self, me: str, parts: Iterable[int], lease: float, now: float) -> set[int]:
        got: set[int] = set()
        for part in parts:
            if not self._lock(part):
                continue
            args = {"part": part, "me": me, "until": now + lease, "now": now}
            if self._run(self._claim(), args):
                got.add(part)
            else:
                self._unlock(part)
        return got

    def release(self, me: str, part: int) -> None:
        super().release(me, part)
        self._unlock(part)

    def leave(self, me: str, parts: Iterable[int]) -> None:
        super().leave(me, parts)
        self.idle(me, False)
        for part in list(self._locks):
            self._unlock(part)

    def take(
        self, parts: Sequence[int], partitions: int, after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        return self._run(
            f"SELECT {ROW_COLUMNS} FROM {self.d.table} "
            f"WHERE mod(part, {int(partitions)}) = ANY({{parts}}) "
            f"AND id > {{after}} ORDER BY id LIMIT {{limit}}",
            {"parts": list(parts), "after": after, "limit": limit},
        )

    def ids(
        self, parts: Sequence[int], partitions: int, after: int, upto: int, limit: int
    ) -> list[int]:
        rows = self._run(
            f"SELECT id FROM {self.d.table} WHERE mod(part, {int(partitions)}) = ANY({{parts}}) "
            f"AND id > {{after}} AND id <= {{upto}} ORDER BY id LIMIT {{limit}}",
            {"parts": list(parts), "after": after, "upto": upto, "limit": limit},
        )
        return [r[0] for r in rows]

    def rows(self, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        return self._run(
            f"SELECT {ROW_COLUMNS} FROM {self.d.table} WHERE id = ANY({{ids}}) ORDER BY id",
            {"ids": list(ids)},
        )

    def delete(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), DELETE_CHUNK):
            self._run(
                f"DELETE FROM {self.d.table} WHERE id = ANY({{ids}})",
                {"ids": list(ids[start : start + DELETE_CHUNK])},
            )

    def owners(self) -> dict[int, str]:
        rows = self._run(
            f"SELECT part, owner FROM {self.d.leases} WHERE owner IS NOT NULL "
            f"AND expires_at >= extract(epoch from clock_timestamp())"
        )
        return {r[0]: r[1] for r in rows}

    def close(self) -> None:
        self._locks.clear()
        self._conn.close()


def connect(dialect: Dialect, target: str, lease: float) -> Database:
    """A relay's connection to the outbox's database."""
    if dialect.kind == "sqlite":
        return SqliteDatabase(dialect, target)
    return PostgresDatabase(dialect, target, lease)


def listen(dialect: Dialect, target: str, wake: Callable[[], None], stop: threading.Event) -> None:
    """Call `wake()` on each NOTIFY of the outbox's channel until `stop` (PostgreSQL;
    runs on a thread of its own; returns when the connection fails, for the caller to
    reconnect)."""
    import psycopg  # noqa: PLC0415  # surelay[postgres]

    with psycopg.connect(target, autocommit=True, **CONNECT) as conn:
        conn.execute(f'LISTEN "{dialect.channel}"')
        while not stop.is_set():
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                wake()
