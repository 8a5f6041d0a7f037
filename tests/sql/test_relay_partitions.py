"""Partitions are the relays' business: rows carry their key's bucket, so senders with
any `partitions` are relayed, and relays that disagree on the number hold off."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from surelay import Runtime
from surelay.sql import SqlOutbox
from tests.helpers import Recorder, wait_until


def test_rows_sent_with_another_number_of_partitions_are_relayed(
    sqlite_url: str, tmp_path: Path
) -> None:
    sender = SqlOutbox(sqlite_url, partitions=256)
    sender.create_table()
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    with conn:
        for i in range(200):
            sender.send(conn, "hooks", b"%d" % i, key=f"k{i % 37}")
    recorder = Recorder()
    with Runtime.open(tmp_path / "data", transports={"hooks": recorder}) as rt:
        rt.relay(SqlOutbox(sqlite_url, partitions=4), poll_interval=0.05)
        wait_until(lambda: len(recorder.delivered) == 200)
        for key in {f"k{i % 37}" for i in range(200)}:  # each key's rows in send order
            mine = [int(e.payload) for e in recorder.delivered if e.key == key]
            assert mine == sorted(mine)


def test_relays_that_disagree_on_partitions_hold_off_and_say_so(
    sqlite_url: str, tmp_path: Path
) -> None:
    outbox = SqlOutbox(sqlite_url, partitions=4)
    outbox.create_table()
    recorder = Recorder()
    with (
        Runtime.open(tmp_path / "a", transports={"hooks": recorder}) as a,
        Runtime.open(tmp_path / "b", transports={"hooks": recorder}) as b,
    ):
        a.relay(outbox, poll_interval=0.05, lease=1.0)
        b.relay(SqlOutbox(sqlite_url, partitions=8), poll_interval=0.05, lease=1.0)

        def both_hold_off() -> bool:
            relays = [*a.health()["relays"].values(), *b.health()["relays"].values()]
            return all(
                not r["ok"]
                and "disagree on partitions" in (r["last_error"] or "")
                and not r["partitions"]
                for r in relays
            )

        wait_until(both_hold_off)
        conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        with conn:
            outbox.send(conn, "hooks", b"held", key="k")
        assert not a.health()["ok"]
        b.close()  # the odd one leaves: the other relays again
        wait_until(lambda: [e.payload for e in recorder.delivered] == [b"held"])
        wait_until(
            lambda: a.health()["relays"] and all(r["ok"] for r in a.health()["relays"].values())
        )
