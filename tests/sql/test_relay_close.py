"""A clean close deletes the row of every message that ended before it, even one whose
outcome was still being made durable as the close began."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from surelay import Envelope, Runtime
from surelay.sql import SqlOutbox


def test_close_right_after_the_last_call_leaves_no_delivered_row(
    sqlite_url: str, tmp_path: Path
) -> None:
    outbox = SqlOutbox(sqlite_url, partitions=4)
    outbox.create_table()
    path = sqlite_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    with conn:
        outbox.send_batch(conn, [{"transport": "hooks", "payload": b"%d" % i} for i in range(200)])
    called = []
    last = threading.Event()

    def hook(envelope: Envelope) -> None:
        called.append(envelope.message_id)
        if len(called) == 200:
            last.set()

    rt = Runtime.open(tmp_path / "data", transports={"hooks": hook})
    rt.relay(outbox, poll_interval=0.05)
    assert last.wait(20)
    rt.close()  # at once: the last deliveries' records may still be on their way to disk
    assert conn.execute("SELECT count(*) FROM surelay_outbox").fetchone() == (0,)
    leases = conn.execute("SELECT count(*) FROM surelay_outbox_leases WHERE owner IS NOT NULL")
    assert leases.fetchone() == (0,)  # given back at close, not left to expire
