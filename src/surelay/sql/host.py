"""Running one statement on the host's own connection, inside the host's transaction.

`SqlOutbox.send` never commits and never opens a connection: it runs its INSERT on the
connection it is given, so the message commits or rolls back with the host's data. This
module knows each accepted kind of connection: how to run a statement on it, which
database it talks to, and whether it is inside a transaction (a connection in autocommit
mode outside one would commit the message on its own, so that is refused).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from surelay.sql.dialect import Kind, render

__all__ = ["async_runner", "runner"]

Params = Mapping[str, Any]
Run = Callable[[str, Params], None]
ARun = Callable[[str, Params], Awaitable[None]]

SYNC_KINDS = (
    "a psycopg 3 Connection, a sqlite3.Connection, a SQLAlchemy Connection or Session, "
    "or Django's connection"
)
ASYNC_KINDS = (
    "a psycopg 3 AsyncConnection, an asyncpg connection, or a SQLAlchemy AsyncConnection "
    "or AsyncSession"
)


def _module(conn: object) -> str:
    return type(conn).__module__ or ""


def _same_database(kind: Kind, theirs: str, what: str) -> None:
    if theirs != kind:
        raise TypeError(f"this outbox's table is in {kind}, but {what} talks to {theirs}")


def _not_autocommit(outside: bool, what: str, hint: str) -> None:
    if outside:
        raise RuntimeError(
            f"{what} is in autocommit mode outside a transaction: the message would commit "
            f"on its own, not with your data; {hint}"
        )


def runner(conn: object, kind: Kind) -> Run:
    """How to run a statement on the host's synchronous connection `conn`."""
    module = _module(conn)
    if isinstance(conn, sqlite3.Connection):
        _same_database(kind, "sqlite", "a sqlite3.Connection")
        legacy = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", -1)  # (Python 3.12+)
        autocommit = getattr(conn, "autocommit", legacy)
        outside = not conn.in_transaction and (
            autocommit is True or (autocommit == legacy and conn.isolation_level is None)
        )
        _not_autocommit(outside, "the sqlite3 connection", "run BEGIN first")
        sql_conn = conn

        def run_sqlite(sql: str, params: Params) -> None:
            sql_conn.execute(render(sql, "named")[0], params)

        return run_sqlite
    if module.startswith("psycopg") and hasattr(conn, "execute"):
        _same_database(kind, "postgresql", "a psycopg connection")
        if "Async" in type(conn).__name__:
            raise TypeError("a psycopg AsyncConnection needs `await outbox.asend(...)`")
        _not_autocommit(
            bool(conn.autocommit) and conn.info.transaction_status == 0,  # type: ignore[attr-defined]
            "the psycopg connection",
            "use `with conn.transaction():`",
        )
        pg: Any = conn

        def run_psycopg(sql: str, params: Params) -> None:
            pg.execute(render(sql, "pyformat")[0], params)

        return run_psycopg
    if module.startswith("sqlalchemy"):
        return _sqlalchemy(conn, kind)
    if module.startswith("django"):
        return _django(conn, kind)
    raise TypeError(f"conn must be {SYNC_KINDS}; got {type(conn).__module__}.{type(conn).__name__}")


def _sqlalchemy(conn: Any, kind: Kind) -> Run:
    from sqlalchemy import text  # noqa: PLC0415  # only for hosts that use SQLAlchemy

    name = type(conn).__name__
    if name.startswith("Async"):
        raise TypeError(f"a SQLAlchemy {name} needs `await outbox.asend(...)`")
    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn
    _same_database(kind, bind.dialect.name, f"the SQLAlchemy {name}")

    def run(sql: str, params: Params) -> None:
        conn.execute(text(render(sql, "named")[0]), dict(params))

    return run


def _django(conn: Any, kind: Kind) -> Run:
    _same_database(kind, conn.vendor, "Django's connection")
    _not_autocommit(
        conn.get_autocommit() and not conn.in_atomic_block,
        "Django's connection",
        "wrap the block in `transaction.atomic()`",
    )

    def run(sql: str, params: Params) -> None:
        statement, names = render(sql, "format")
        with conn.cursor() as cursor:
            cursor.execute(statement, [params[n] for n in names])

    return run


def async_runner(conn: object, kind: Kind) -> ARun:
    """How to run a statement on the host's asyncio connection `conn`."""
    module = _module(conn)
    any_conn: Any = conn
    if module.startswith("psycopg") and "Async" in type(conn).__name__:
        _same_database(kind, "postgresql", "a psycopg connection")
        _not_autocommit(
            bool(any_conn.autocommit) and any_conn.info.transaction_status == 0,
            "the psycopg connection",
            "use `async with conn.transaction():`",
        )

        async def run_psycopg(sql: str, params: Params) -> None:
            await any_conn.execute(render(sql, "pyformat")[0], params)

        return run_psycopg
    if module.startswith("asyncpg"):
        _same_database(kind, "postgresql", "an asyncpg connection")
        if not any_conn.is_in_transaction():
            raise RuntimeError(
                "the asyncpg connection is outside a transaction: the message would commit "
                "on its own, not with your data; use `async with conn.transaction():`"
            )

        async def run_asyncpg(sql: str, params: Params) -> None:
            statement, names = render(sql, "numeric")
            await any_conn.execute(statement, *[params[n] for n in names])

        return run_asyncpg
    if module.startswith("sqlalchemy") and type(conn).__name__.startswith("Async"):
        from sqlalchemy import text  # noqa: PLC0415  # only for hosts that use SQLAlchemy

        bind = any_conn.get_bind() if hasattr(any_conn, "get_bind") else any_conn
        _same_database(kind, bind.dialect.name, f"the SQLAlchemy {type(conn).__name__}")

        async def run_sqlalchemy(sql: str, params: Params) -> None:
            await any_conn.execute(text(render(sql, "named")[0]), dict(params))

        return run_sqlalchemy
    raise TypeError(
        f"conn must be {ASYNC_KINDS}; got {type(conn).__module__}.{type(conn).__name__}"
    )
