"""Several runtimes on one data directory: a slot each; the dead ones' outboxes adopted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from surelay import Runtime
from surelay.actors.slot_keeper import Look
from surelay.errors import StorageError
from surelay.storage.slots import holders
from tests.helpers import Recorder

ROOT = Path(__file__).resolve().parent.parent


def lines(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line for line in path.read_text().split("\n")[:-1] if line}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.05)


def start_host(data: Path, work: Path, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.slot_host", str(data), str(work), name, str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_two_of_four_hosts_killed_for_good_their_outboxes_are_adopted(tmp_path: Path) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    names = ["a", "b", "c", "d"]
    hosts = {name: start_host(data, work, name, 150) for name in names}
    try:
        slots = {}
        for name, host in hosts.items():
            assert host.stdout is not None
            slots[name] = int(host.stdout.readline())
        assert sorted(slots.values()) == [0, 1, 2, 3]  # a slot each
        for host in hosts.values():
            assert host.stdout is not None and host.stdout.readline() == "sent\n"
        assert set(holders(data).values()) == {h.pid for h in hosts.values()}
        for name in ("a", "c"):  # killed, and never started again
            hosts[name].send_signal(signal.SIGKILL)
            assert hosts[name].wait(10) == -signal.SIGKILL
        # their messages were all accepted and none delivered (the downstream was away)
        assert not any(lines(work / f"delivered-{name}") for name in names)
        (work / "gate").touch()  # the downstream comes back
        accepted = set().union(*(lines(work / f"acked-{name}") for name in names))
        assert len(accepted) == 4 * 150

        def delivered() -> set[str]:
            return set().union(*(lines(work / f"delivered-{name}") for name in ("b", "d")))

        wait_until(lambda: accepted <= delivered(), 60, "the survivors to deliver everything")
        # and each once: no message was dispatched by two runtimes
        every = [
            line
            for name in ("b", "d")
            for line in (work / f"delivered-{name}").read_text().split("\n")
            if line
        ]
        assert len(every) == len(set(every)) == len(accepted)
        # nothing is left in the outbox of the directory, whatever slot it was in
        stats = surelay_json("stats", "--path", str(data))
        assert stats["outbox_pending"] == 0
        assert {r["slot"] for r in stats["runtimes"] if r["running"]} == {
            slots["b"],
            slots["d"],
        }
        # the CLI lists the dead letters of all four, the killed ones' included
        dead = surelay_json("dlq", "list", "--path", str(data), "--limit", "100")
        refused_by = sorted(r["key"].split("-")[0] for r in dead)
        assert refused_by == sorted(names * 3)
    finally:
        for host in hosts.values():
            host.kill()
            host.wait(10)


def surelay_json(*args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-m", "surelay.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_runtime_here_adopts_a_killed_hosts_outbox_and_keeps_its_keys_order(
    tmp_path: Path,
) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    host = start_host(data, work, "x", 200)
    try:
        assert host.stdout is not None
        assert int(host.stdout.readline()) == 0
        assert host.stdout.readline() == "sent\n"
        recorder = Recorder()
        with Runtime.open(data, transports={"t": recorder, "doomed": recorder}) as rt:
            assert rt.slot == 1  # slot 0 is the host's
            assert rt.health()["storage"]["slot"] == 1
            host.send_signal(signal.SIGKILL)
            host.wait(10)
            # at once rather than at the keeper's next look (which may come first)
            adopted = rt.supervisor.child("slots").ask(Look(), timeout=30)
            assert adopted in ({0: 200}, {})
            wait_until(lambda: len(recorder.delivered) >= 200, 30, "the adopted messages")
            assert rt.flush(30)
            assert rt.stats().outbox_pending == 0
        assert lines(work / "acked-x") == {e.message_id for e in recorder.delivered}
        for k in range(5):  # each key's messages in the order they were sent
            sent = [f"x-{i}".encode() for i in range(200) if i % 5 == k]
            assert recorder.payloads(f"x-k{k}") == sent
    finally:
        host.kill()
        host.wait(10)


def test_a_second_runtime_in_one_process_is_refused_clearly(tmp_path: Path) -> None:
    with (
        Runtime.open(tmp_path / "d", transports={"t": Recorder()}),
        pytest.raises(StorageError, match="already open in this process"),
    ):
        Runtime.open(tmp_path / "d", transports={"t": Recorder()})
