"""`SqlOutbox`'s sending side: a message sent in the host's transaction is relayed
exactly when, and exactly once after, that transaction commits, on every kind of
connection it accepts; bad messages and bad connections are refused as `rt.send`
refuses them."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from surelay import Runtime
from surelay.sql import SqlOutbox
from tests.helpers import Recorder, wait_until

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
"""Few partitions: a relay claims each with a statement of its own when it starts (on
SQLite, a commit each), and these tests are about sending, not sharing."""


class Rollback(Exception):
    """Raised inside a transaction block to roll it back."""


# -- the host's side: one transaction rolled back, one committed, per kind of connection --

ORDERS = "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, note TEXT)"
ORDER = "INSERT INTO orders VALUES ({id}, '{note}')"


def _psycopg(url: str, outbox: SqlOutbox) -> None:
    with psycopg.connect(url) as conn:
        with suppress(Rollback), conn.transaction():
            conn.execute(ORDER.format(id=1, note="rolled back"))
            outbox.send(conn, "hooks", b"rolled back", key="order-1")
            raise Rollback
        with conn.transaction():
            conn.execute(ORDER.format(id=2, note="committed"))
            outbox.send(conn, "hooks", b"committed", key="order-2")


def _psycopg_async(url: str, outbox: SqlOutbox) -> None:
    async def host() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            with suppress(Rollback):
                async with conn.transaction():
                    await conn.execute(ORDER.format(id=1, note="rolled back"))
                    await outbox.asend(conn, "hooks", b"rolled back", key="order-1")
                    raise Rollback
            async with conn.transaction():
                await conn.execute(ORDER.format(id=2, note="committed"))
                await outbox.asend(conn, "hooks", b"committed", key="order-2")

    asyncio.run(host())


def _asyncpg(url: str, outbox: SqlOutbox) -> None:
    import asyncpg  # noqa: PLC0415

    async def host() -> None:
        conn = await asyncpg.connect(url)
        try:
            with suppress(Rollback):
                async with conn.transaction():
                    await conn.execute(ORDER.format(id=1, note="rolled back"))
                    await outbox.asend(conn, "hooks", b"rolled back", key="order-1")
                    raise Rollback
            async with conn.transaction():
                await conn.execute(ORDER.format(id=2, note="committed"))
                await outbox.asend(conn, "hooks", b"committed", key="order-2")
        finally:
            await conn.close()

    asyncio.run(host())


def _sqlalchemy_url(url: str, driver: str) -> str:
    if url.startswith("sqlite"):
        return url
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


def _sqlalchemy_connection(url: str, outbox: SqlOutbox) -> None:
    from sqlalchemy import create_engine, text  # noqa: PLC0415

    engine = create_engine(_sqlalchemy_url(url, "psycopg"))
    try:
        with engine.connect() as conn:
            with suppress(Rollback), conn.begin():
                conn.execute(text(ORDER.format(id=1, note="rolled back")))
                outbox.send(conn, "hooks", b"rolled back", key="order-1")
                raise Rollback
            with conn.begin():
                conn.execute(text(ORDER.format(id=2, note="committed")))
                outbox.send(conn, "hooks", b"committed", key="order-2")
    finally:
        engine.dispose()


def _sqlalchemy_session(url: str, outbox: SqlOutbox) -> None:
    from sqlalchemy import create_engine, text  # noqa: PLC0415
    from sqlalchemy.orm import Session  # noqa: PLC0415

    engine = create_engine(_sqlalchemy_url(url, "psycopg"))
    try:
        with Session(engine) as session:
            session.execute(text(ORDER.format(id=1, note="rolled back")))
            outbox.send(session, "hooks", b"rolled back", key="order-1")
            session.rollback()
            session.execute(text(ORDER.format(id=2, note="committed")))
            outbox.send(session, "hooks", b"committed", key="order-2")
            session.commit()
    finally:
        engine.dispose()


def _sqlalchemy_async_connection(url: str, outbox: SqlOutbox) -> None:
    from sqlalchemy import text  # noqa: PLC0415
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415

    async def host() -> None:
        engine = create_async_engine(_sqlalchemy_url(url, "psycopg"))
        try:
            async with engine.connect() as conn:
                with suppress(Rollback):
                    async with conn.begin():
                        await conn.execute(text(ORDER.format(id=1, note="rolled back")))
                        await outbox.asend(conn, "hooks", b"rolled back", key="order-1")
                        raise Rollback
                async with conn.begin():
                    await conn.execute(text(ORDER.format(id=2, note="committed")))
                    await outbox.asend(conn, "hooks", b"committed", key="order-2")
        finally:
            await engine.dispose()

    asyncio.run(host())


def _sqlalchemy_async_session(url: str, outbox: SqlOutbox) -> None:
    from sqlalchemy import text  # noqa: PLC0415
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: PLC0415

    async def host() -> None:
        engine = create_async_engine(_sqlalchemy_url(url, "asyncpg"))
        try:
            async with AsyncSession(engine) as session:
                with suppress(Rollback):
                    async with session.begin():
                        await session.execute(text(ORDER.format(id=1, note="rolled back")))
                        await outbox.asend(session, "hooks", b"rolled back", key="order-1")
                        raise Rollback
                async with session.begin():
                    await session.execute(text(ORDER.format(id=2, note="committed")))
                    await outbox.asend(session, "hooks", b"committed", key="order-2")
        finally:
            await engine.dispose()

    asyncio.run(host())


def _sqlite3(url: str, outbox: SqlOutbox) -> None:
    conn = sqlite3.connect(outbox.target)
    try:
        conn.execute(ORDER.format(id=1, note="rolled back"))
        outbox.send(conn, "hooks", b"rolled back", key="order-1")
        conn.rollback()
        with conn:  # commits
            conn.execute(ORDER.format(id=2, note="committed"))
            outbox.send(conn, "hooks", b"committed", key="order-2")
    finally:
        conn.close()


def _sqlite3_explicit_begin(url: str, outbox: SqlOutbox) -> None:
    conn = sqlite3.connect(outbox.target, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(ORDER.format(id=1, note="rolled back"))
        outbox.send(conn, "hooks", b"rolled back", key="order-1")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(ORDER.format(id=2, note="committed"))
        outbox.send(conn, "hooks", b"committed", key="order-2")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _django(url: str, outbox: SqlOutbox) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.sql.django_host", outbox.target, str(outbox.partitions)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "autocommit mode outside a transaction" in done.stdout
    assert "transaction.atomic()" in done.stdout


Host = Callable[[str, SqlOutbox], None]

POSTGRES_HOSTS: dict[str, Host] = {
    "psycopg": _psycopg,
    "psycopg-async": _psycopg_async,
    "asyncpg": _asyncpg,
    "sqlalchemy-connection": _sqlalchemy_connection,
    "sqlalchemy-session": _sqlalchemy_session,
    "sqlalchemy-async-connection": _sqlalchemy_async_connection,
    "sqlalchemy-async-session": _sqlalchemy_async_session,
}
SQLITE_HOSTS: dict[str, Host] = {
    "sqlite3": _sqlite3,
    "sqlite3-explicit-begin": _sqlite3_explicit_begin,
    "sqlalchemy-connection": _sqlalchemy_connection,
    "sqlalchemy-session": _sqlalchemy_session,
    "django": _django,
}


# -- the checks ---------------------------------------------------------------------------


def _query(outbox: SqlOutbox, sql: str) -> list[tuple[Any, ...]]:
    if outbox.kind == "sqlite":
        with sqlite3.connect(outbox.target) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(outbox.target) as pg:
        cursor = pg.execute(sql.encode())
        return cursor.fetchall() if cursor.description is not None else []


def _setup(outbox: SqlOutbox) -> None:
    outbox.create_table()
    _query(outbox, ORDERS)  # the host's business table (committed by the `with`)


def _relayed(outbox: SqlOutbox, path: Path, count: int) -> Recorder:
    """Relay `outbox` until `count` messages were delivered and their rows deleted."""
    recorder = Recorder()
    rt = Runtime.open(path, transports={"hooks": recorder})
    try:
        rt.relay(outbox, poll_interval=0.1)
        wait_until(lambda: len(recorder.delivered) >= count)
        assert rt.flush(10)
        wait_until(lambda: _query(outbox, f"SELECT count(*) FROM {outbox.table}") == [(0,)])
    finally:
        rt.close()
    return recorder


def _check_one_commit_delivered(outbox: SqlOutbox, path: Path) -> None:
    recorder = _relayed(outbox, path, 1)
    assert recorder.payloads() == [b"committed"]
    assert len(recorder.attempts) == 1
    assert recorder.delivered[0].key == "order-2"
    assert _query(outbox, "SELECT id, note FROM orders") == [(2, "committed")]


@pytest.mark.parametrize("host", POSTGRES_HOSTS.values(), ids=POSTGRES_HOSTS.keys())
def test_postgres_delivers_the_committed_message_once_never_the_rolled_back(
    host: Host, pg_url: str, tmp_path: Path
) -> None:
    outbox = SqlOutbox(pg_url, partitions=PARTITIONS)
    _setup(outbox)
    host(pg_url, outbox)
    _check_one_commit_delivered(outbox, tmp_path / "rt")


@pytest.mark.parametrize("host", SQLITE_HOSTS.values(), ids=SQLITE_HOSTS.keys())
def test_sqlite_delivers_the_committed_message_once_never_the_rolled_back(
    host: Host, sqlite_url: str, tmp_path: Path
) -> None:
    outbox = SqlOutbox(sqlite_url, partitions=PARTITIONS)
    _setup(outbox)
    host(sqlite_url, outbox)
    _check_one_commit_delivered(outbox, tmp_path / "rt")
