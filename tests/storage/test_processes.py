"""Real processes: SIGKILL at random moments, and two processes on one directory."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from surelay.envelope import Envelope
from surelay.storage import Store

HERE = Path(__file__).parent


def test_every_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    where = tmp_path / "d"
    rng = random.Random(20261122)
    acknowledged: list[str] = []
    for round_no in range(12):
        child = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), str(where), f"r{round_no}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # it is writing
        time.sleep(rng.uniform(0.0, 0.4))  # only to pick a random moment for the kill
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait(30)
        assert child.returncode == -signal.SIGKILL
        lines = (first + rest).splitlines(keepends=True)
        acknowledged += [line.strip() for line in lines if line.endswith("\n")]
        store = Store.open(where, map_size=1 << 20, max_map_size=1 << 30)
        with store, store.read() as txn:
            missing = [i for i in acknowledged if store.outbox.get(txn, i) is None]
            assert missing == [], f"round {round_no}: {len(missing)} acknowledged writes lost"
            assert store.outbox.count(txn) >= len(acknowledged)
    assert len(acknowledged) > 12


def test_two_processes_read_and_write_one_directory(tmp_path: Path) -> None:
    where = tmp_path / "d"
    count = 300
    peer = subprocess.Popen(
        [sys.executable, str(HERE / "peer_process.py"), str(where), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert peer.stdin is not None and peer.stdout is not None
    try:
        assert peer.stdout.readline().strip() == "open"
        with Store.open(where, map_size=256 * 1024, max_map_size=1 << 28) as store:
            peer.stdin.write("go\n")
            peer.stdin.flush()
            for n in range(count):  # both grow the map while the other writes
                store.enqueue([(Envelope(f"parent-{n}", "t", b"p" * 1000), 0)]).result()
            assert peer.stdout.readline().strip() == "written"
            peer.stdin.write("check\n")
            peer.stdin.flush()
            assert int(peer.stdout.readline()) == count  # it sees all of ours
            with store.read() as txn:
                theirs = [store.outbox.get(txn, f"child-{n}") for n in range(count)]
                assert all(e is not None for e in theirs)
                assert store.outbox.count(txn) == 2 * count
        assert peer.wait(30) == 0
    finally:
        if peer.poll() is None:
            peer.kill()


HOLD_THE_WRITE_LOCK = """
import sys, time
from surelay.envelope import Envelope
from surelay.storage import Store

store = Store.open(sys.argv[1], map_size=1 << 20)
with store.transaction() as txn:
    store.outbox.enqueue(txn, Envelope("never", "t", b"x"), partition=0, due_at=0.0)
    print("holding", flush=True)
    time.sleep(60)  # killed here, inside its write transaction
"""


def test_a_process_killed_inside_its_write_transaction_does_not_wedge_the_others(
    tmp_path: Path,
) -> None:
    """Worker processes share the directory's write lock (a robust mutex in LMDB's lock
    file): one killed while it holds it must not block the others for ever."""
    where = tmp_path / "d"
    Store.open(where, map_size=1 << 20).close()
    with Store.open(where, map_size=1 << 20) as store:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_WRITE_LOCK, str(where)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline() == "holding\n"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        (entry,) = store.enqueue([(Envelope("after", "t", b"y"), 0)]).result(timeout=30)
        with store.read() as txn:
            assert store.outbox.get(txn, "after") == entry
            assert store.outbox.get(txn, "never") is None  # its transaction never was
