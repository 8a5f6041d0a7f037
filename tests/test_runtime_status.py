"""Message status by id: every state, from this process, another one, and after a restart;
by idempotency key; kept for dedup_ttl and then swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from surelay import (
    Envelope,
    MessageStatus,
    Outcome,
    PermanentError,
    RetryPolicy,
    Runtime,
    RuntimeConfig,
    TransientError,
)
from surelay.actors.sweeper import Sweep
from tests.helpers import Clock, Recorder, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _from_another_process(data: Path, *ids: str) -> dict[str, dict[str, object] | None]:
    """`message_status` of each id, read by a separate process (as `surelay status` does)."""
    script = (
        "import dataclasses, json, sys, time\n"
        "from surelay.operations.message_status import message_status\n"
        "from surelay.storage import Store\n"
        "store = Store.open(sys.argv[1], create=False)\n"
        "out = {}\n"
        "for m in sys.argv[2:]:\n"
        "    s = message_status(store, m, None, now=time.time(), in_flight=lambda _: False)\n"
        "    out[m] = None if s is None else dataclasses.asdict(s)\n"
        "store.close()\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data), *ids],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=True,
    )
    found: dict[str, dict[str, object] | None] = json.loads(done.stdout)
    return found


def test_each_state_is_seen_here_from_another_process_and_after_a_restart(
    tmp_path: Path,
) -> None:
    clock = Clock(time.time())  # (another process reads ended records by its own clock)
    release = threading.Event()
    calling = threading.Event()

    def transport(envelope: Envelope) -> None:
        if envelope.payload == b"bad":
            raise PermanentError("refused for good")
        if envelope.payload == b"flaky":
            raise TransientError("downstream busy")
        if envelope.payload == b"slow":
            calling.set()
            assert release.wait(30)

    config = RuntimeConfig(
        clock=clock, retry=RetryPolicy(base_delay=100, jitter="none", max_attempts=3)
    )
    with Runtime.open(tmp_path, transports={"t": transport}, config=config) as rt:
        delivered = rt.send("t", b"ok", key="k", idempotency_key="order-7")
        dead = rt.send("t", b"bad")
        scheduled = rt.send("t", b"later", delay=60, type="reminder")
        flaky = rt.send("t", b"flaky")
        slow = rt.send("t", b"slow")
        assert delivered.wait(10) is Outcome.DELIVERED
        duplicate = rt.send("t", b"again", idempotency_key="order-7")
        assert duplicate.wait(10) is Outcome.DUPLICATE
        assert dead.wait(10) is Outcome.DEAD_LETTERED
        assert calling.wait(10)
        wait_until(lambda: rt.stats().retried == 1)
        ids = {
            "delivered": delivered.message_id,
            "duplicate": duplicate.message_id,
            "dead": dead.message_id,
            "scheduled": scheduled.message_id,
            "pending": flaky.message_id,
            "in_flight": slow.message_id,
        }
        here = {state: rt.status(m) for state, m in ids.items()}
        for state, found in here.items():
            assert found is not None and found.state == state, (state, found)
        now = clock()
        assert here["delivered"] == MessageStatus(
            ids["delivered"], "t", "k", "delivered", 1, None, None, now
        )
        assert here["duplicate"].attempts == 0  # type: ignore[union-attr]
        assert here["dead"].last_error == "PermanentError: refused for good"  # type: ignore[union-attr]
        assert here["scheduled"].next_attempt_at == pytest.approx(now + 60)  # type: ignore[union-attr]
        pending = here["pending"]
        assert pending is not None
        assert (pending.attempts, pending.last_error) == (1, "TransientError: downstream busy")
        assert pending.next_attempt_at == pytest.approx(now + 100)
        assert pending.updated_at == now
        assert rt.status(idempotency_key="order-7") == here["duplicate"]  # the latest one
        assert rt.status("never-sent") is None
        assert rt.status(idempotency_key="never-used") is None

        elsewhere = _from_another_process(tmp_path, *ids.values(), "never-sent")
        for state, message_id in ids.items():
            seen = elsewhere[message_id]
            assert seen is not None
            # only this process knows its calls in flight: to another one it is pending
            assert seen["state"] == ("pending" if state == "in_flight" else state)
        assert elsewhere["never-sent"] is None
        release.set()
        assert slow.wait(10) is Outcome.DELIVERED
    with Runtime.open(tmp_path, transports={"t": transport}, config=config) as rt:
        after = {state: rt.status(m) for state, m in ids.items()}
        assert {s: f.state for s, f in after.items() if f is not None} == {
            "delivered": "delivered",
            "duplicate": "duplicate",
            "dead": "dead",
            "scheduled": "scheduled",
            "pending": "pending",
            "in_flight": "delivered",
        }


def test_a_replayed_dead_letter_says_replayed(tmp_path: Path) -> None:
    failing = {"on": True}

    def transport(envelope: Envelope) -> None:
        if failing["on"]:
            raise PermanentError("down")

    with Runtime.open(tmp_path, transports={"t": transport}) as rt:
        receipt = rt.send("t", b"x")
        assert receipt.wait(10) is Outcome.DEAD_LETTERED
        failing["on"] = False
        report = rt.dead_letters.replay(timeout=30)
        assert report.replayed == 1
        found = rt.status(receipt.message_id)
        assert found is not None and found.state == "replayed"
        assert found.attempts == 2


def test_status_is_kept_for_dedup_ttl_then_swept(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder()
    config = RuntimeConfig(clock=clock, dedup_ttl=60)
    with Runtime.open(tmp_path, transports={"t": recorder}, config=config) as rt:
        receipt = rt.send("t", b"x", idempotency_key="mine")
        assert receipt.wait(10) is Outcome.DELIVERED
        clock.advance(59)
        assert rt.status(receipt.message_id) is not None
        clock.advance(2)
        assert rt.status(receipt.message_id) is None  # expired, even before the sweep
        removed = rt.supervisor.child("sweeper").ask(Sweep(), timeout=10)
        assert removed["status"] == 1
        store = rt._store
        with store.read() as txn:
            assert store.ended.count(txn) == 0
            assert store.ended.message_of(txn, "mine") is None  # its key's entry too


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "give a message_id or an idempotency_key"),
        ({"message_id": "a", "idempotency_key": "b"}, "give a message_id or an idempotency_key"),
        ({"message_id": ""}, "message_id must be a non-empty str"),
        ({"idempotency_key": 7}, "idempotency_key must be a non-empty str"),
    ],
)
def test_a_bad_question_is_refused_naming_it(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    with (
        Runtime.open(tmp_path, transports={"t": Recorder()}) as rt,
        pytest.raises(ValueError, match=message),
    ):
        rt.status(**arguments)  # type: ignore[arg-type]
