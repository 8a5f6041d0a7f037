"""`surelay status` as an operator runs it: a subprocess on a directory a runtime wrote."""

from __future__ import annotations

import re
import time
from pathlib import Path

from surelay import Envelope, Outcome, PermanentError, Runtime
from tests.cli.test_dlq import surelay, surelay_json


def _refuse(envelope: Envelope) -> None:
    if envelope.payload.startswith(b"bad"):
        raise PermanentError("no such \x1b[31mroute")


def test_status_by_id_and_by_idempotency_key(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={"t": _refuse}) as rt:
        good = rt.send("t", b"ok", key="k1", idempotency_key="order-1")
        bad = rt.send("t", b"bad")
        later = rt.send("t", b"later", delay=3600)
        assert good.wait(10) is Outcome.DELIVERED and bad.wait(10) is Outcome.DEAD_LETTERED
    found = surelay_json("status", "--path", str(tmp_path), good.message_id)
    assert found["state"] == "delivered" and found["key"] == "k1" and found["attempts"] == 1
    by_key = surelay_json("status", "--path", str(tmp_path), "--idempotency-key", "order-1")
    assert by_key["message_id"] == good.message_id
    scheduled = surelay_json("status", "--path", str(tmp_path), later.message_id)
    assert scheduled["state"] == "scheduled"
    assert scheduled["next_attempt_at"] > time.time() + 3000
    shown = surelay("status", "--path", str(tmp_path), bad.message_id)
    assert shown.returncode == 0, shown.stderr
    assert "dead" in shown.stdout and "no such" in shown.stdout
    assert "\x1b" not in shown.stdout  # a downstream's error never reaches the terminal raw
    shown = surelay("status", "--path", str(tmp_path), later.message_id)
    assert "scheduled" in shown.stdout and re.search(r"in (59|60)m", shown.stdout)


def test_an_unknown_message_is_exit_1_saying_so(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={"t": _refuse}):
        pass
    done = surelay("status", "--path", str(tmp_path), "nope")
    assert done.returncode == 1
    assert "no message 'nope'" in done.stderr
    done = surelay("status", "--path", str(tmp_path / "missing"), "x")
    assert done.returncode == 2
