"""Replay requests always end: one for a transport no runtime offers is refused after
the grace (`surelay dlq replay --wait` exits 1 saying why), and `surelay dlq cancel`
cancels one no runtime has taken yet."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from surelay import Outcome, PermanentError, RetryPolicy
from surelay.actors.replay import OFFER_GRACE, POLL
from tests.cli.test_dlq import surelay, surelay_json
from tests.helpers import Clock, Recorder, open_runtime


def refuse(_envelope: object) -> None:
    raise PermanentError("HTTP 422")


def dead_letter(path: Path, transport: str) -> str:
    """One dead letter for `transport`, left by a runtime that had it."""
    with open_runtime(path, {transport: refuse}, retry=RetryPolicy(max_attempts=1)) as rt:
        assert rt.send(transport, b"x").wait(10) is Outcome.DEAD_LETTERED
        return rt.dead_letters.list()[0].id


def test_a_replay_for_a_transport_no_runtime_offers_ends_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    dead = dead_letter(path, "mail")
    clock = Clock()
    with open_runtime(path, {"sms": Recorder()}, clock=clock):
        command = [sys.executable, "-m", "surelay.cli", "dlq", "replay", "--path", str(path)]
        waiting = subprocess.Popen(
            [*command, dead, "--wait", "--timeout", "60s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # the runtime's clock runs fast: the grace passes in a second or two of ours
            while waiting.poll() is None:
                clock.advance(OFFER_GRACE / 10)
                threading.Event().wait(0.1)
            out, err = waiting.communicate(timeout=10)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    assert waiting.returncode == 1, err
    assert "refused" in out
    assert "0 failed and 1 refused" in err
    assert "'mail' refused: no runtime on the directory offered them" in err
    assert f"{dead}: refused, no runtime on {path} offers transport 'mail'" in err


def test_a_pending_request_is_cancelled_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "data"
    dead = dead_letter(path, "mail")
    recorded = surelay_json("dlq", "replay", "--path", str(path), dead)  # no runtime: pending
    request_id = recorded["request_id"]
    cancelled = surelay("dlq", "cancel", "--path", str(path), request_id, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout) == {"request_id": request_id, "status": "cancelled"}
    again = surelay("dlq", "cancel", "--path", str(path), request_id)
    assert again.returncode == 1
    assert "is cancelled, not pending" in again.stderr
    unknown = surelay("dlq", "cancel", "--path", str(path), "01NOSUCHREQUEST")
    assert unknown.returncode == 1 and "no replay request '01NOSUCHREQUEST'" in unknown.stderr
    # the next runtime leaves it alone
    mail = Recorder()
    with open_runtime(path, {"mail": mail}) as rt:
        threading.Event().wait(4 * POLL)  # a few polls of its coordinator
        assert rt.dead_letters.get(dead).status == "dead"  # type: ignore[union-attr]
    assert not mail.attempts
