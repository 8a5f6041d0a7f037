"""Running one statement on the host's own connection, inside the host's transaction.

`SqlOutbox.send` never commits and never opens a connection: it runs its INSERT on the
connection it is given, so the message commits or rolls back with the host's data. This
module knows each accepted kind of connection: how to run a statement on it, which
database it talks to, and whether it is inside a transaction (a connection in autocommit
mode outside one would commit the message on its own, so that is refused).

A statement is a template with `{name}` placeholders (`surelay.sql.dialect.render`) and
its values in placeholder order; each driver gets its own positional style where it has
one (the cheapest for it), SQLAlchemy named binds. What to do for a kind of connection
is worked out once per connection class.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from surelay.sql.dialect import Kind, render

__all__ = ["async_runner", "runner"]

Values = Sequence[Any]
Run = Callable[[str, Values], None]
ARun = Callable[[str, Values], Awaitable[None]]

SYNC_KINDS = (
    "a psycopg 3 Connection, a sqlite3.Connection, a SQLAlchemy Connection or Session, "
    "or Django's connection"
)
ASYNC_KINDS = (
    "a psycopg 3 AsyncConnection, an asyncpg connection, or a SQLAlchemy AsyncConnection "
    "or AsyncSession"
)

_LEGACY = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", -1)  # (Python 3.12+)


def _same_database(kind: Kind, theirs: str, what: str) -> None:
    if theirs != kind:
        raise TypeError(f"this outbox's table is in {kind}, but {what} talks to {theirs}")


def _not_autocommit(outside: bool, what: str, hint: str) -> None:
    if outside:
        raise RuntimeError(
            f"{what} is in autocommit mode outside a transaction: the message would commit "
            f"on its own, not with your data; {hint}"
        )


# -- synchronous connections -------------------------------------------------------------


def _sqlite(conn: Any, kind: Kind) -> Run:
    _same_database(kind, "sqlite", "a sqlite3.Connection")
    autocommit = getattr(conn, "autocommit", _LEGACY)
    outside = not conn.in_transaction and (
        autocommit is True or (autocommit == _LEGACY and conn.isolation_level is None)
    )
    _not_autocommit(outside, "the sqlite3 connection", "run BEGIN first")

    def run(sql: str, values: Values) -> None:
        conn.execute(render(sql, "qmark")[0], values)

    return run


def _psycopg(conn: Any, kind: Kind) -> Run:
    _same_database(kind, "postgresql", "a psycopg connection")
    _not_autocommit(
        conn.autocommit and conn.info.transaction_status == 0,
        "the psycopg connection",
        "use `with conn.transaction():`",
    )

    def run(sql: str, values: Values) -> None:
        conn.execute(render(sql, "format")[0], values)

    return run


def _sqlalchemy(conn: Any, kind: Kind) -> Run:
    from sqlalchemy import text  # noqa: PLC0415  # only for hosts that use SQLAlchemy

    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn
    _same_database(kind, bind.dialect.name, f"the SQLAlchemy {type(conn).__name__}")

    def run(sql: str, values: Values) -> None:
        statement, names = render(sql, "named")
        conn.execute(text(statement), dict(zip(names, values, strict=True)))

    return run


def _django(conn: Any, kind: Kind) -> Run:
    _same_database(kind, conn.vendor, "Django's connection")
    _not_autocommit(
        conn.get_autocommit() and not conn.in_atomic_block,
        "Django's connection",
        "wrap the block in `transaction.atomic()`",
    )

    def run(sql: str, values: Values) -> None:
        with conn.cursor() as cursor:
            cursor.execute(render(sql, "format")[0], values)

    return run


def _async_only(name: str) -> Callable[[Any, Kind], Run]:
    def refuse(_conn: Any, _kind: Kind) -> Run:
        raise TypeError(f"a {name} needs `await outbox.asend(...)`")

    return refuse


def _sync_maker(cls: type) -> Callable[[Any, Kind], Run] | None:
    module = cls.__module__ or ""
    name = cls.__name__
    if issubclass(cls, sqlite3.Connection):
        return _sqlite
    if module.startswith("psycopg") and hasattr(cls, "execute"):
        return _async_only(f"psycopg {name}") if "Async" in name else _psycopg
    if module.startswith("sqlalchemy"):
        return _async_only(f"SQLAlchemy {name}") if name.startswith("Async") else _sqlalchemy
    if module.startswith("django"):
        return _django
    return None


_SYNC: dict[type, Callable[[Any, Kind], Run] | None] = {}


def runner(conn: object, kind: Kind) -> Run:
    """How to run a statement on the host's synchronous connection `conn`."""
    cls = type(conn)
    if cls in _SYNC:
        maker = _SYNC[cls]
    else:
        maker = _SYNC[cls] = _sync_maker(cls)
    if maker is None:
        raise TypeError(f"conn must be {SYNC_KINDS}; got {cls.__module__}.{cls.__name__}")
    return maker(conn, kind)


# -- asyncio connections -------------------------------------------------------------------


def _apsycopg(conn: Any, kind: Kind) -> ARun:
    _same_database(kind, "postgresql", "a psycopg connection")
    _not_autocommit(
        conn.autocommit and conn.info.transaction_status == 0,
        "the psycopg connection",
        "use `async with conn.transaction():`",
    )

    async def run(sql: str, values: Values) -> None:
        await conn.execute(render(sql, "format")[0], values)

    return run


def _asyncpg(conn: Any, kind: Kind) -> ARun:
    _same_database(kind, "postgresql", "an asyncpg connection")
    if not conn.is_in_transaction():
        raise RuntimeError(
            "the asyncpg connection is outside a transaction: the message would commit "
            "on its own, not with your data; use `async with conn.transaction():`"
        )

    async def run(sql: str, values: Values) -> None:
        await conn.execute(render(sql, "numeric")[0], *values)

    return run


def _asqlalchemy(conn: Any, kind: Kind) -> ARun:
    from sqlalchemy import text  # noqa: PLC0415  # only for hosts that use SQLAlchemy

    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn
    _same_database(kind, bind.dialect.name, f"the SQLAlchemy {type(conn).__name__}")

    async def run(sql: str, values: Values) -> None:
        statement, names = render(sql, "named")
        await conn.execute(text(statement), dict(zip(names, values, strict=True)))

    return run


def _async_maker(cls: type) -> Callable[[Any, Kind], ARun] | None:
    module = cls.__module__ or ""
    name = cls.__name__
    if module.startswith("psycopg") and "Async" in name:
        return _apsycopg
    if module.startswith("asyncpg"):
        return _asyncpg
    if module.startswith("sqlalchemy") and name.startswith("Async"):
        return _asqlalchemy
    return None


_ASYNC: dict[type, Callable[[Any, Kind], ARun] | None] = {}


def async_runner(conn: object, kind: Kind) -> ARun:
    """How to run a statement on the host's asyncio connection `conn`."""
    cls = type(conn)
    if cls in _ASYNC:
        maker = _ASYNC[cls]
    else:
        maker = _ASYNC[cls] = _async_maker(cls)
    if maker is None:
        raise TypeError(f"conn must be {ASYNC_KINDS}; got {cls.__module__}.{cls.__name__}")
    return maker(conn, kind)
