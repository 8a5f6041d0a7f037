"""`surelay push status` as an operator runs it: a subprocess on a directory a runtime
with push wrote."""

from __future__ import annotations

from pathlib import Path

from surelay import Runtime
from surelay.push import PushConfig
from tests.cli.test_dlq import surelay, surelay_json

SECRET = "push-test-secret-0123456789"


def test_push_status_as_json_and_as_a_table(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={}, push=PushConfig(SECRET)) as rt:
        queued = rt.push.send("user-42", b"hi")
        acked = rt.push.send("ann", b"yo")
        with rt._store.env.write() as txn:
            rt.push.mailboxes.ack(txn, "ann", "phone\x1b[2J", 1, rt.push.now())
    found = surelay_json("push", "status", "--path", str(tmp_path), queued.msg_id)
    assert (found["state"], found["recipient"], found["seq"]) == ("queued", "user-42", 1)
    shown = surelay("push", "status", "--path", str(tmp_path), acked.msg_id)
    assert shown.returncode == 0, shown.stderr
    assert "delivered" in shown.stdout and "phone" in shown.stdout
    assert "\x1b" not in shown.stdout  # names never reach the terminal raw


def test_an_unknown_pushed_message_is_exit_1(tmp_path: Path) -> None:
    Runtime.open(tmp_path, transports={}).close()
    done = surelay("push", "status", "--path", str(tmp_path), "nope")
    assert done.returncode == 1
    assert "no pushed message 'nope'" in done.stderr
    assert surelay("push", "status", "--path", str(tmp_path), "").returncode == 2
