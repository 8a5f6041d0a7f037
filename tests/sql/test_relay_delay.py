"""Rows sent with a delay: relayed in order per key, called no earlier than their time;
their type travels with them; a table made before these columns existed is upgraded."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from surelay import Envelope, InvalidMessage, Runtime
from surelay.sql import SqlOutbox
from tests.helpers import Recorder, wait_until

OLD_SQLITE_TABLE = """
CREATE TABLE surelay_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, part INTEGER NOT NULL,
    transport TEXT NOT NULL, payload BLOB NOT NULL, msg_key TEXT, idempotency_key TEXT,
    priority INTEGER NOT NULL, headers TEXT, created_at REAL NOT NULL
);
"""


def _relay_and_record(path: Path, outbox: SqlOutbox, count: int) -> list[tuple[float, Envelope]]:
    calls: list[tuple[float, Envelope]] = []
    recorder = Recorder(lambda envelope: calls.append((time.time(), envelope)))
    with Runtime.open(path, transports={"t": recorder}) as rt:
        rt.relay(outbox, poll_interval=0.05)
        wait_until(lambda: len(calls) >= count, 30)
    return calls


def test_a_delayed_row_waits_for_its_time_and_holds_back_its_keys_later_rows(
    tmp_path: Path, sqlite_url: str
) -> None:
    outbox = SqlOutbox(sqlite_url)
    outbox.create_table()
    with sqlite3.connect(outbox.target) as conn:
        sent = time.time()
        outbox.send(conn, "t", b"k-1", key="k")
        outbox.send(conn, "t", b"k-2 late", key="k", delay=1.5, type="reminder")
        outbox.send_batch(
            conn,
            [
                {"transport": "t", "payload": b"k-3", "key": "k"},
                {"transport": "t", "payload": b"j-1", "key": "j", "not_before": sent + 0.5},
            ],
        )
    calls = _relay_and_record(tmp_path / "rt", outbox, 4)
    at = {c.payload: (t, c) for t, c in calls}
    assert [c.payload for _, c in calls if c.key == "k"] == [b"k-1", b"k-2 late", b"k-3"]
    assert at[b"k-2 late"][0] >= sent + 1.5 and at[b"j-1"][0] >= sent + 0.5
    assert at[b"k-2 late"][1].type == "reminder"
    assert at[b"k-1"][0] < sent + 1.0  # the key's earlier row is not held back


def test_an_older_table_gets_the_new_columns(tmp_path: Path, sqlite_url: str) -> None:
    outbox = SqlOutbox(sqlite_url)
    with sqlite3.connect(outbox.target) as conn:
        conn.executescript(OLD_SQLITE_TABLE)
        conn.execute(
            "INSERT INTO surelay_outbox (message_id, part, transport, payload, priority, "
            "created_at) VALUES ('old-1', 0, 't', x'6f6c64', 1, 0)"
        )
    outbox.create_table()
    outbox.create_table()  # (again: idempotent)
    with sqlite3.connect(outbox.target) as conn:
        outbox.send(conn, "t", b"new", delay=0.1, type="x")
    calls = _relay_and_record(tmp_path / "rt", outbox, 2)
    assert sorted(c.payload for _, c in calls) == [b"new", b"old"]


def test_postgresql_rows_carry_their_time_and_type(tmp_path: Path, pg_url: str) -> None:
    outbox = SqlOutbox(pg_url)
    with psycopg.connect(outbox.target) as conn:  # a table of an older surelay first
        conn.execute(
            OLD_SQLITE_TABLE.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            .replace("BLOB", "BYTEA")
            .replace("REAL", "DOUBLE PRECISION")
        )
    outbox.create_table()
    outbox.create_table()
    with psycopg.connect(outbox.target) as conn, conn.transaction():
        sent = time.time()
        outbox.send(conn, "t", b"late", key="k", delay=1.0, type="otp")
        outbox.send(conn, "t", b"after", key="k")
    calls = _relay_and_record(tmp_path / "rt", outbox, 2)
    assert [c.payload for _, c in calls] == [b"late", b"after"]
    assert calls[0][0] >= sent + 1.0 and calls[0][1].type == "otp"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"delay": -1}, "delay must be seconds >= 0"),
        ({"delay": 1, "not_before": 2.0}, "delay or not_before, not both"),
        ({"type": ""}, "type must be a non-empty str"),
    ],
)
def test_bad_timing_is_refused_by_the_sql_outbox_too(
    sqlite_url: str, arguments: dict[str, object], message: str
) -> None:
    outbox = SqlOutbox(sqlite_url)
    outbox.create_table()
    with sqlite3.connect(outbox.target) as conn:
        with pytest.raises(InvalidMessage, match=message):
            outbox.send(conn, "t", b"x", **arguments)  # type: ignore[arg-type]
        with pytest.raises(InvalidMessage, match=r"messages\[0\]: .*" + message):
            outbox.send_batch(
                conn,
                [
                    {"transport": "t", "payload": b"x", **arguments},
                    {"transport": "t", "payload": b"y"},
                ],
            )
