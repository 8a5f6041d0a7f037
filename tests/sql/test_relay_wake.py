"""How a relay wakes on PostgreSQL: senders NOTIFY only while a relay waits for it (a
NOTIFY makes commits queue behind each other), a waiting relay is woken by the NOTIFY,
a busy one reads without it, and a relay that died waiting does not keep senders
notifying."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import surelay.sql.relay as relay_module
from surelay import Runtime
from surelay.sql import SqlOutbox
from surelay.sql.database import PostgresDatabase
from tests.helpers import Recorder, wait_until


def notified(outbox: SqlOutbox, listener: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Commit one row, and whether the listener heard a NOTIFY of the outbox's channel."""
    with psycopg.connect(outbox.target) as conn, conn.transaction():
        outbox.send(conn, "hooks", b"x")
    return any(True for _ in listener.notifies(timeout=0.5, stop_after=1))


def test_senders_notify_only_while_a_relay_waits(pg_url: str) -> None:
    outbox = SqlOutbox(pg_url, partitions=4)
    outbox.create_table()
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{outbox.dialect.channel}"')
        assert not notified(outbox, listener)  # no relay waits: no NOTIFY
        db = PostgresDatabase(outbox.dialect, outbox.target, lease=10.0)
        try:
            db.idle("r1", True)
            db.idle("r1", True)  # (said twice: still one row)
            assert notified(outbox, listener)
            db.idle("r1", False)
            assert not notified(outbox, listener)
        finally:
            db.close()


def test_a_relay_that_died_waiting_stops_senders_notifying(pg_url: str) -> None:
    outbox = SqlOutbox(pg_url, partitions=4)
    outbox.create_table()
    db = PostgresDatabase(outbox.dialect, outbox.target, lease=10.0)
    try:
        db.idle("dead", True)  # never said alive, or its lease ran out
        db.heartbeat("alive", 10.0, db.now(), 4)
        rows = db._run(f"SELECT relay FROM {outbox.dialect.idle}")
        assert rows == []
    finally:
        db.close()


def test_a_waiting_relay_is_woken_by_the_notify_of_a_commit(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "IDLE_GRACE", 60.0)  # no read but at a NOTIFY
    outbox = SqlOutbox(pg_url, partitions=4)
    outbox.create_table()
    recorder = Recorder()
    with (
        Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt,
        psycopg.connect(pg_url, autocommit=True) as conn,
    ):
        rt.relay(outbox, poll_interval=60.0)
        (name,) = rt.health()["relays"]
        waiting = f"SELECT relay FROM {outbox.dialect.idle}"
        wait_until(lambda: conn.execute(waiting).fetchall() == [(name,)])
        with conn.transaction():
            outbox.send(conn, "hooks", b"woken")
        wait_until(lambda: recorder.payloads() == [b"woken"], timeout=10)
        # busy now: it said so (senders stop notifying), then waits again
        wait_until(lambda: conn.execute(waiting).fetchall() == [(name,)], timeout=10)


def test_a_busy_relay_reads_rows_that_sent_no_notify(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "IDLE_AFTER", 60.0)  # busy for the whole test
    monkeypatch.setattr(relay_module, "LOOK_BACK", 10.0)  # a slow machine is still quick
    outbox = SqlOutbox(pg_url, partitions=4)
    outbox.create_table()
    recorder = Recorder()
    with (
        Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt,
        psycopg.connect(pg_url, autocommit=True) as conn,
        psycopg.connect(pg_url) as early,
    ):
        rt.relay(outbox, poll_interval=60.0)
        with conn.transaction():
            outbox.send(conn, "hooks", b"first")  # (a NOTIFY: it waits, the table empty)
        wait_until(lambda: recorder.payloads() == [b"first"], timeout=10)
        waiting = f"SELECT count(*) FROM {outbox.dialect.idle}"
        wait_until(lambda: conn.execute(waiting).fetchone() == (0,))  # busy: no NOTIFY
        outbox.send(early, "hooks", b"early", key="a")  # the smaller id, committed last
        with conn.transaction():
            outbox.send(conn, "hooks", b"later", key="b")
        wait_until(lambda: recorder.payloads() == [b"first", b"later"], timeout=10)
        early.commit()
        wait_until(lambda: recorder.payloads() == [b"first", b"later", b"early"], timeout=10)


def test_a_table_made_by_an_older_surelay_is_relayed_and_told_to_migrate(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its trigger notifies at every commit and it has no idle table: the relay works
    as before (never saying it waits), and says to run the migration again."""
    outbox = SqlOutbox(pg_url, partitions=4)
    outbox.create_table()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {outbox.dialect.idle}")
        conn.execute(
            f"CREATE OR REPLACE FUNCTION {outbox.table}_notify() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('{outbox.dialect.channel}', ''); "
            f"RETURN NULL; END $$"
        )
    recorder = Recorder()
    with (
        Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt,
        psycopg.connect(pg_url, autocommit=True) as conn,
    ):
        rt.relay(outbox, poll_interval=60.0)
        wait_until(lambda: any(r["partitions"] for r in rt.health()["relays"].values()))
        with conn.transaction():
            outbox.send(conn, "hooks", b"old table")
        wait_until(lambda: recorder.payloads() == [b"old table"], timeout=10)
        (health,) = rt.health()["relays"].values()
        assert health["last_error"] is None
    assert "run outbox.create_table() or the migration again" in caplog.text
