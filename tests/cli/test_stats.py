"""`surelay stats` shows each SQL outbox relay a runtime published, escaped."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from surelay.sql import SqlOutbox
from surelay.storage.store import Store
from tests.cli.test_dlq import HOSTILE, raw_control, surelay, surelay_json
from tests.helpers import Recorder, open_runtime, wait_until


def relayed_directory(tmp_path: Path) -> Path:
    """A data directory whose runtime relayed three rows of a SQLite outbox, deleted
    them, and closed (publishing its last status)."""
    outbox = SqlOutbox(f"sqlite:///{tmp_path / 'app.db'}", partitions=4)
    outbox.create_table()
    with sqlite3.connect(outbox.target) as conn:
        for i in range(3):
            outbox.send(conn, "hooks", b"m%d" % i, key="k")
    path = tmp_path / "data"
    sink = Recorder()
    with open_runtime(path, {"hooks": sink}) as rt:
        rt.relay(outbox, poll_interval=0.05)
        sink.wait_attempts(3)
        wait_until(lambda: rt.health()["relays"] and _deleted(rt) == 3)
    return path


def _deleted(rt: Any) -> int:
    return sum(r["deleted"] for r in rt.health()["relays"].values())


@pytest.fixture
def relayed(tmp_path: Path) -> Path:
    return relayed_directory(tmp_path)


def test_stats_shows_each_relay(relayed: Path) -> None:
    shown = surelay("stats", "--path", str(relayed))
    assert shown.returncode == 0, shown.stderr
    assert "relay " in shown.stdout
    assert ": sqlite table surelay_outbox: partitions 0, in flight 0" in shown.stdout
    assert "relayed 3, deleted 3" in shown.stdout
    assert "relay error" not in shown.stdout
    status = surelay_json("stats", "--path", str(relayed))["last_status"]
    (relay,) = status["relays"].values()
    assert relay["relayed"] == relay["deleted"] == 3
    assert relay["last_error"] is None


MARKUP = "<script>alert(1)</script>"
"""For the console: HTML in a database's error text."""


def hostile_relay(path: Path) -> None:
    """The published status with a relay whose name and database error carry terminal
    escapes (a database's error text holds what the database was given)."""
    with Store.open(path, create=False) as store:
        with store.read() as txn:
            status = store.status.get(txn, 0)
        assert status is not None
        (relay,) = status["relays"].values()
        error = f"OperationalError: {HOSTILE} {MARKUP}"
        relay = {**relay, "last_error": error, "waiting": 7}
        relay["table"] = f"t{HOSTILE}"
        relay["last_error_at"] = status["at"]
        status["relays"] = {f"host{HOSTILE}:1:ab": relay}
        status["ok"] = False
        store.write(lambda txn: store.status.put(txn, status)).result()


def test_stats_escapes_what_the_relay_reported(relayed: Path) -> None:
    hostile_relay(relayed)
    shown = surelay("stats", "--path", str(relayed))
    assert shown.returncode == 0, shown.stderr
    assert raw_control(shown.stdout + shown.stderr) == []
    flat = " ".join(re.sub("[│┃]", " ", shown.stdout).split())  # cells read whole
    escaped = "\\x1b]0;pwned\\x07\\x1b[2J[bold red]boom[/]\\u202eevil\\x9b31m"
    assert f"OperationalError: {escaped}" in flat
    assert f"host{escaped}:1:ab: sqlite table t{escaped}: partitions 0" in flat
    assert "NOT ok ['a relay failing']" in flat
    assert "waiting 7" in flat
