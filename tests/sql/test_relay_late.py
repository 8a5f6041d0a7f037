"""A row committed after rows with greater ids is relayed at its own commit (its NOTIFY
wakes the relay, which looks back over the ids its cursor passed), not at the next
poll."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import surelay.sql.relay as relay_module
from surelay import Runtime
from surelay.sql import SqlOutbox
from tests.helpers import Recorder, wait_until


def test_a_row_committed_late_is_relayed_at_its_commit_not_at_the_poll(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "LOOK_BACK", 10.0)  # a slow machine is still quick
    outbox = SqlOutbox(pg_url, partitions=4)
    outbox.create_table()
    recorder = Recorder()
    with (
        Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt,
        psycopg.connect(pg_url) as early,
        psycopg.connect(pg_url) as later,
    ):
        rt.relay(outbox, poll_interval=60.0)  # no poll within the test: NOTIFY only
        wait_until(lambda: any(r["partitions"] for r in rt.health()["relays"].values()))
        outbox.send(early, "hooks", b"early", key="a")  # takes the smaller id, not committed
        with later.transaction():
            outbox.send(later, "hooks", b"later", key="b")
        wait_until(lambda: recorder.payloads() == [b"later"])
        early.commit()
        wait_until(lambda: recorder.payloads() == [b"later", b"early"], timeout=10)
        wait_until(lambda: early.execute("SELECT count(*) FROM surelay_outbox").fetchone() == (0,))
