"""`SqlOutbox`'s sending side: a message sent in the host's transaction is relayed
exactly when, and exactly once after, that transaction commits, on every kind of
connection it accepts; bad messages and bad connections are refused as `rt.send`
refuses them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from surelay import InvalidMessage, Priority, Runtime
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


# -- what send refuses ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A runtime to compare refusals with (nothing is sent through it)."""
    runtime = Runtime.open(tmp_path_factory.mktemp("rt"), transports={"hooks": Recorder()})
    yield runtime
    runtime.close()


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[tuple[SqlOutbox, sqlite3.Connection]]:
    """An SQLite outbox with its table, and a host connection to it."""
    outbox = SqlOutbox(sqlite_url, partitions=PARTITIONS)
    outbox.create_table()
    conn = sqlite3.connect(outbox.target)
    yield outbox, conn
    conn.close()


def _rows(outbox: SqlOutbox) -> int:
    count: int = _query(outbox, f"SELECT count(*) FROM {outbox.table}")[0][0]
    return count


BAD_SENDS: dict[str, dict[str, Any]] = {
    "payload-str": {"payload": "text"},
    "payload-none": {"payload": None},
    "payload-oversize": {"payload": b"x" * (1_048_576 + 1)},
    "header-transfer-encoding": {"headers": {"Transfer-Encoding": "chunked"}},
    "header-content-length": {"headers": {"Content-Length": "3"}},
    "header-bad-name": {"headers": {"bad name": "x"}},
    "header-newline": {"headers": {"X-Note": "one\r\ntwo"}},
    "header-not-str": {"headers": {"X-Count": 3}},
    "headers-not-mapping": {"headers": [("X-A", "b")]},
    "key-empty": {"key": ""},
    "key-not-str": {"key": 7},
    "idempotency-key-empty": {"idempotency_key": ""},
    "priority-str": {"priority": "high"},
}


@pytest.mark.parametrize("bad", BAD_SENDS.values(), ids=BAD_SENDS.keys())
def test_send_refuses_what_rt_send_refuses_with_the_same_error(
    bad: dict[str, Any], rt: Runtime, lite: tuple[SqlOutbox, sqlite3.Connection]
) -> None:
    outbox, conn = lite
    arguments: dict[str, Any] = {"transport": "hooks", "payload": b"ok", **bad}
    with pytest.raises(InvalidMessage) as expected:
        rt.send(**arguments)
    with conn, pytest.raises(InvalidMessage) as refused:
        outbox.send(conn, **arguments)
    assert str(refused.value) == str(expected.value)
    assert _rows(outbox) == 0


def test_send_refuses_an_empty_transport_name_but_leaves_unknown_names_to_the_relay(
    lite: tuple[SqlOutbox, sqlite3.Connection],
) -> None:
    outbox, conn = lite
    with conn, pytest.raises(InvalidMessage, match="transport must be a non-empty str"):
        outbox.send(conn, "", b"x")
    with conn:
        outbox.send(conn, "not-a-transport-here", b"x")  # the relaying runtime decides
    assert _rows(outbox) == 1


def test_send_honours_its_own_max_payload_bytes(sqlite_url: str) -> None:
    outbox = SqlOutbox(sqlite_url, partitions=PARTITIONS, max_payload_bytes=10)
    outbox.create_table()
    with sqlite3.connect(outbox.target) as conn:
        outbox.send(conn, "hooks", b"x" * 10)
        with pytest.raises(InvalidMessage, match="payload is 11 bytes, over max_payload_bytes=10"):
            outbox.send(conn, "hooks", b"x" * 11)


BAD_BATCHES: dict[str, tuple[object, str]] = {
    "bad-payload-names-index": (
        [{"transport": "hooks", "payload": b"ok"}, {"transport": "hooks", "payload": "no"}],
        r"^messages\[1\]: payload must be bytes",
    ),
    "bad-header-names-index": (
        [
            {"transport": "hooks", "payload": b"ok"},
            {"transport": "hooks", "payload": b"ok"},
            {"transport": "hooks", "payload": b"ok", "headers": {"Transfer-Encoding": "x"}},
        ],
        r"^messages\[2\]: header 'Transfer-Encoding' is refused",
    ),
    "unknown-argument": (
        [{"transport": "hooks", "payload": b"ok", "txn": None}],
        r"messages\[0\]: unknown send\(\) argument\(s\) \['txn'\]",
    ),
    "missing-payload": ([{"transport": "hooks"}], r"messages\[0\]: missing 'payload'"),
    "not-a-mapping": ([("hooks", b"ok")], r"messages\[0\]: expected a mapping"),
    "not-a-sequence": ({"transport": "hooks", "payload": b"ok"}, "must be a sequence"),
    "a-str": ("hooks", "must be a sequence"),
    "over-1000": (
        [{"transport": "hooks", "payload": b"ok"}] * 1001,
        "batch of 1001 messages is over 1000",
    ),
}


@pytest.mark.parametrize(("batch", "error"), BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_send_batch_refuses_a_bad_batch_whole(
    batch: object, error: str, lite: tuple[SqlOutbox, sqlite3.Connection]
) -> None:
    outbox, conn = lite
    with conn, pytest.raises(InvalidMessage, match=error):
        outbox.send_batch(conn, batch)  # type: ignore[arg-type]
    assert _rows(outbox) == 0


def test_send_batch_of_1000_and_of_none(lite: tuple[SqlOutbox, sqlite3.Connection]) -> None:
    outbox, conn = lite
    with conn:
        assert outbox.send_batch(conn, []) == []
        ids = outbox.send_batch(conn, [{"transport": "hooks", "payload": b"x"}] * 1000)
    assert len(set(ids)) == 1000
    assert _rows(outbox) == 1000


# -- which connections send accepts ------------------------------------------------------


def test_send_refuses_what_is_not_a_connection_it_knows(
    lite: tuple[SqlOutbox, sqlite3.Connection],
) -> None:
    outbox, conn = lite
    for stranger in (object(), conn.cursor(), "sqlite:///app.db", None):
        with pytest.raises(TypeError, match="conn must be a psycopg 3 Connection, a sqlite3"):
            outbox.send(stranger, "hooks", b"x")
        with pytest.raises(TypeError, match="conn must be a psycopg 3 AsyncConnection"):
            asyncio.run(outbox.asend(stranger, "hooks", b"x"))
    with pytest.raises(TypeError, match="conn must be a psycopg 3 AsyncConnection"):
        asyncio.run(outbox.asend(conn, "hooks", b"x"))  # sync connection: send()
    assert _rows(outbox) == 0


def test_send_refuses_a_connection_to_the_other_kind_of_database(
    pg_url: str, sqlite_url: str
) -> None:
    from sqlalchemy import create_engine  # noqa: PLC0415

    postgres = SqlOutbox(pg_url, partitions=PARTITIONS)
    lite = SqlOutbox(sqlite_url, partitions=PARTITIONS)
    with (
        sqlite3.connect(lite.target) as conn,
        pytest.raises(TypeError, match="table is in postgresql, but a sqlite3"),
    ):
        postgres.send(conn, "hooks", b"x")
    with (
        psycopg.connect(pg_url) as pg,
        pytest.raises(TypeError, match="table is in sqlite, but a psycopg connection"),
    ):
        lite.send(pg, "hooks", b"x")
    engine = create_engine(sqlite_url)
    try:
        with (
            engine.connect() as connection,
            pytest.raises(TypeError, match="postgresql, but the SQLAlchemy Connection"),
        ):
            postgres.send(connection, "hooks", b"x")
    finally:
        engine.dispose()


def test_a_sync_connection_to_asend_and_an_async_one_to_send_are_refused(pg_url: str) -> None:
    outbox = SqlOutbox(pg_url, partitions=PARTITIONS)

    async def host() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            with pytest.raises(TypeError, match=r"needs `await outbox\.asend"):
                outbox.send(conn, "hooks", b"x")

    asyncio.run(host())


def test_send_refuses_a_connection_that_would_commit_the_message_on_its_own(
    pg_url: str, lite: tuple[SqlOutbox, sqlite3.Connection]
) -> None:
    import asyncpg  # noqa: PLC0415

    outbox = SqlOutbox(pg_url, partitions=PARTITIONS)
    outbox.create_table()
    with psycopg.connect(pg_url, autocommit=True) as pg:
        with pytest.raises(RuntimeError, match="autocommit mode outside a transaction"):
            outbox.send(pg, "hooks", b"x")
        with pg.transaction():  # inside a block, an autocommit connection is fine
            outbox.send(pg, "hooks", b"in a block")

    async def host() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            with pytest.raises(RuntimeError, match="autocommit mode outside a transaction"):
                await outbox.asend(conn, "hooks", b"x")
        apg = await asyncpg.connect(pg_url)
        try:
            with pytest.raises(RuntimeError, match="asyncpg connection is outside a transaction"):
                await outbox.asend(apg, "hooks", b"x")
        finally:
            await apg.close()

    asyncio.run(host())
    assert _query(outbox, f"SELECT payload FROM {outbox.table}") == [(b"in a block",)]

    lite_outbox, _ = lite
    manual = sqlite3.connect(lite_outbox.target, isolation_level=None)
    try:
        with pytest.raises(RuntimeError, match="run BEGIN first"):
            lite_outbox.send(manual, "hooks", b"x")
        assert _rows(lite_outbox) == 0
    finally:
        manual.close()


# -- the schema ---------------------------------------------------------------------------


def _tables(outbox: SqlOutbox) -> set[str]:
    if outbox.kind == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')"
    else:
        sql = (
            "SELECT relname FROM pg_class WHERE relname LIKE 'jobs%' "
            "UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'jobs%'"
        )
    names = [r[0] for r in _query(outbox, sql)]
    assert len(names) == len(set(names))
    return set(names)


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_ddl_and_create_table_are_idempotent_and_safe_to_race(
    database: str, pg_url: str, sqlite_url: str
) -> None:
    outbox = SqlOutbox(pg_url if database == "postgresql" else sqlite_url, table="jobs")
    if database == "sqlite":
        with sqlite3.connect(outbox.target) as conn:
            conn.executescript(outbox.ddl())
            conn.executescript(outbox.ddl())
    else:
        _query(outbox, outbox.ddl())
        _query(outbox, outbox.ddl())
    outbox.create_table()
    outbox.create_table()
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def create() -> None:
        start.wait()
        try:
            outbox.create_table()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    made = {"jobs", "jobs_leases", "jobs_relays"}
    if database == "postgresql":
        made.add("trigger jobs_notify")  # once, however often the DDL ran
    assert made <= _tables(outbox)


@pytest.mark.parametrize(
    "table", ["", "1st", "a-b", "jobs; DROP TABLE orders", 'a"b', "a b", "é", "a" * 49, 7, None]
)
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(table: object) -> None:
    with pytest.raises(ValueError, match="table must be a plain SQL identifier"):
        SqlOutbox("sqlite:///app.db", table=table)  # type: ignore[arg-type]


def test_the_longest_table_name_is_accepted() -> None:
    assert SqlOutbox("sqlite:///app.db", table="a" * 48).table == "a" * 48


@pytest.mark.parametrize(
    "url",
    [
        "",
        None,
        b"sqlite:///app.db",
        "mysql://localhost/app",
        "app.db",
        "sqlite://app.db",
        "sqlite:///",
        "sqlite:///:memory:",
    ],
)
def test_a_url_it_cannot_use_is_refused(url: object) -> None:
    with pytest.raises(ValueError, match=r"url|SQLite outbox needs a file"):
        SqlOutbox(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("partitions", "error"),
    [(0, ValueError), (4097, ValueError), ("4", TypeError), (True, TypeError)],
)
def test_a_bad_partition_count_is_refused(partitions: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="partitions"):
        SqlOutbox("sqlite:///app.db", partitions=partitions)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("sqlite:///app.db", "sqlite", "app.db"),
        ("sqlite:////var/lib/app.db", "sqlite", "/var/lib/app.db"),
        ("sqlite+pysqlite:///my%20app.db", "sqlite", "my app.db"),
        ("postgresql://u@h:5/db", "postgresql", "postgresql://u@h:5/db"),
        ("postgres://u@h/db", "postgresql", "postgresql://u@h/db"),
        (
            "postgresql+asyncpg://u:p@h/db?sslmode=require",
            "postgresql",
            "postgresql://u:p@h/db?sslmode=require",
        ),
    ],
)
def test_urls_as_sqlalchemy_writes_them_are_accepted(url: str, kind: str, target: str) -> None:
    outbox = SqlOutbox(url)
    assert (outbox.kind, outbox.target) == (kind, target)


# -- what the relay receives ----------------------------------------------------------------


def test_send_batch_inserts_in_one_statement_and_is_relayed_in_id_order(
    lite: tuple[SqlOutbox, sqlite3.Connection], tmp_path: Path
) -> None:
    outbox, conn = lite
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    with conn:
        ids = outbox.send_batch(
            conn,
            [{"transport": "hooks", "payload": b"%d" % i, "key": "one-key"} for i in range(300)],
        )
    conn.set_trace_callback(None)
    assert [s for s in statements if s.startswith("INSERT")] == [statements[1]]
    assert len(statements) == 3  # BEGIN, the INSERT, COMMIT
    in_table = _query(outbox, f"SELECT message_id FROM {outbox.table} ORDER BY id")
    assert [r[0] for r in in_table] == ids

    recorder = _relayed(outbox, tmp_path / "rt", 300)
    assert recorder.payloads() == [b"%d" % i for i in range(300)]
    assert [e.message_id for e in recorder.delivered] == ids


def test_a_sent_message_arrives_as_sent(pg_url: str, tmp_path: Path) -> None:
    outbox = SqlOutbox(pg_url, partitions=PARTITIONS)
    outbox.create_table()
    with psycopg.connect(pg_url) as conn, conn.transaction():
        full = outbox.send(
            conn,
            "hooks",
            bytearray(b"\x00binary\xff"),
            key="order-7",
            idempotency_key="charge-7",
            priority=Priority.HIGH,
            headers={"X-Tenant": "acme", "Content-Type": "application/json"},
        )
        bare = outbox.send(conn, "hooks", b"")
    recorder = _relayed(outbox, tmp_path / "rt", 2)
    got = {e.message_id: e for e in recorder.delivered}
    assert set(got) == {full, bare}
    sent = got[full]
    assert sent.payload == b"\x00binary\xff"
    assert sent.key == "order-7"
    assert sent.idempotency_key == "charge-7"
    assert sent.priority is Priority.HIGH
    assert sent.attempt == 1
    assert {"X-Tenant": "acme", "Content-Type": "application/json"}.items() <= sent.headers.items()
    plain = got[bare]
    assert (plain.payload, plain.key, plain.priority) == (b"", None, Priority.NORMAL)
    assert plain.idempotency_key == bare  # as with rt.send: the message id by default


# -- telemetry ------------------------------------------------------------------------------


def test_the_send_span_is_the_callers_child_and_delivery_continues_its_trace(
    pg_url: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.sql.telemetry_host", pg_url, str(tmp_path / "rt")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    spans: list[dict[str, Any]] = seen["spans"]
    (request,) = [s for s in spans if s["name"] == "request"]
    sends = [s for s in spans if s["name"] == "surelay.send"]
    delivers = [s for s in spans if s["name"] == "surelay.deliver"]
    assert len(sends) == 3  # the rolled-back send's span too: it ended when its row was inserted
    assert {s["parent"] for s in sends} == {request["span"]}
    assert {s["trace"] for s in spans} == {request["trace"]}
    assert [s["attributes"]["db.system"] for s in sends] == ["postgresql"] * 3
    committed = {s["attributes"]["surelay.message_id"]: s["span"] for s in sends[1:]}
    assert len(delivers) == 2
    for deliver in delivers:
        assert deliver["parent"] == committed[deliver["attributes"]["surelay.message_id"]]
    for envelope in seen["delivered"]:
        assert envelope["traceparent"].split("-")[1] == request["trace"]
    assert seen["relayed"] == [{"value": 2, "attributes": {"surelay.transport": "hooks"}}]
