"""A relay holds a bounded window of its table in memory: rows by count and by bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from surelay import Runtime
from surelay.sql import SqlOutbox
from surelay.sql.relay import WINDOW_BYTES
from tests.helpers import Gate, Recorder, wait_until


def test_a_relay_takes_rows_up_to_its_window_of_bytes_and_the_rest_as_it_drains(
    sqlite_url: str, tmp_path: Path
) -> None:
    outbox = SqlOutbox(sqlite_url, partitions=4)
    outbox.create_table()
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    size = 1 << 20
    rows = WINDOW_BYTES // size + 8
    with conn:
        for i in range(rows):
            outbox.send(conn, "hooks", bytes([i % 256]) * size, key=f"k{i}")
    gate = Gate()
    recorder = Recorder(gate)
    with Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt:
        rt.relay(outbox, poll_interval=0.05)

        def relay() -> dict[str, object]:
            return next(iter(rt.health()["relays"].values()))

        wait_until(lambda: relay()["in_flight"] == WINDOW_BYTES // size)

        def renewed() -> float:
            return float(
                conn.execute("SELECT max(expires_at) FROM surelay_outbox_leases").fetchone()[0]
            )

        for _ in range(2):  # two more beats, each followed by a turn: nothing more taken
            seen = renewed()
            wait_until(lambda seen=seen: renewed() > seen)
        assert relay()["in_flight"] == WINDOW_BYTES // size
        gate.open()
        wait_until(lambda: len(recorder.delivered) == rows, timeout=30)
        wait_until(lambda: conn.execute("SELECT count(*) FROM surelay_outbox").fetchone() == (0,))


def test_a_row_whose_message_the_runtime_dropped_is_relayed_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    """What the sender and the dead-letter sink do when an outcome cannot be recorded
    (they stop tracking a relayed message): the relay takes the row again, never holds
    it for ever."""
    outbox = SqlOutbox(sqlite_url, partitions=4)
    outbox.create_table()
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    with conn:
        message_id = outbox.send(conn, "hooks", b"once", key="k")
    gate = Gate()
    recorder = Recorder(gate)
    with Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt:
        rt.relay(outbox, poll_interval=0.05)
        assert gate.entered.wait(10)
        rt._parts.tracker.forget([message_id])  # as a failed record does
        gate.open()
        wait_until(lambda: conn.execute("SELECT count(*) FROM surelay_outbox").fetchone() == (0,))
        assert [e.message_id for e in recorder.attempts][:1] == [message_id]
        assert rt.flush(10)
