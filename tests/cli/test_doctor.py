"""`surelay doctor` on healthy and damaged stores (truncated to half, to nothing, pages
zeroed), and `--salvage` into a directory a runtime then delivers from. The command
runs in a subprocess, as an operator runs it."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from surelay import Envelope, Runtime
from tests.storage.damage import (
    DEAD,
    OUTBOX,
    copy_store,
    damage_outbox,
    healthy_store,
    truncate,
)

from .test_dlq import surelay


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return healthy_store(tmp_path_factory.mktemp("doctor"))


def test_a_healthy_store_passes(healthy: Path) -> None:
    done = surelay("doctor", "--path", str(healthy))
    assert done.returncode == 0, done.stderr
    assert "healthy" in done.stdout
    report = json.loads(surelay("doctor", "--path", str(healthy), "--json").stdout)
    assert report["healthy"] is True
    assert report["read_with"] == "lmdb"
    assert report["tables"]["outbox"]["readable"] == OUTBOX
    assert report["tables"]["dead"]["readable"] == DEAD


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("half", "is truncated"),
        ("zero", "is empty (0 bytes)"),
        ("pages", "is damaged"),
    ],
)
def test_a_damaged_store_is_a_problem_naming_the_file(
    healthy: Path, tmp_path: Path, damage: str, says: str
) -> None:
    path = copy_store(healthy, tmp_path)
    if damage == "pages":
        damage_outbox(path)
    else:
        truncate(path, 0.5 if damage == "half" else 0)
    done = surelay("doctor", "--path", str(path), "--json")
    assert done.returncode == 1, (done.returncode, done.stderr)
    report = json.loads(done.stdout)
    assert report["healthy"] is False
    assert any(says in p and str(path / "data.mdb") in p for p in report["problems"])
    human = surelay("doctor", "--path", str(path))
    assert human.returncode == 1
    assert "problem:" in human.stdout
    stats = surelay("stats", "--path", str(path))
    assert stats.returncode == 1, (stats.returncode, stats.stdout)
    assert stats.returncode != 128 + signal.SIGBUS
    assert str(path / "data.mdb") in stats.stderr


def test_salvage_copies_what_is_readable_and_a_runtime_delivers_it(
    healthy: Path, tmp_path: Path
) -> None:
    path = copy_store(healthy, tmp_path)
    lost = damage_outbox(path)
    out = tmp_path / "salvaged"
    done = surelay("doctor", "--path", str(path), "--salvage", str(out), "--json")
    assert done.returncode == 1  # the store itself is still damaged
    report = json.loads(done.stdout)
    assert report["salvaged"]["outbox"] == OUTBOX - lost
    assert report["salvaged"]["dead_letters"] == DEAD
    assert surelay("doctor", "--path", str(out)).returncode == 0

    received: list[Envelope] = []
    lock = threading.Lock()

    def transport(envelope: Envelope) -> None:
        with lock:
            received.append(envelope)

    rt = Runtime.open(out, transports={"t": transport})
    try:
        assert rt.flush(30)
        dead = rt.dead_letters.list(limit=1000)
    finally:
        rt.close()
    assert len(received) == OUTBOX - lost
    assert len({e.message_id for e in received}) == len(received)
    by_key: dict[str | None, list[str]] = {}
    for envelope in received:
        by_key.setdefault(envelope.key, []).append(envelope.message_id)
    for ids in by_key.values():  # each key's messages still in acceptance order
        assert ids == sorted(ids)
    assert len(dead) == DEAD


def test_salvage_refuses_a_directory_that_is_not_empty(healthy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    done = surelay("doctor", "--path", str(healthy), "--salvage", str(out))
    assert done.returncode == 1
    assert "is not empty" in done.stderr


def test_salvage_reads_what_a_truncated_file_still_holds(healthy: Path, tmp_path: Path) -> None:
    path = copy_store(healthy, tmp_path)
    truncate(path, 0.5)
    out = tmp_path / "salvaged"
    done = surelay("doctor", "--path", str(path), "--salvage", str(out), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["read_with"] == "pages"
    assert 0 < report["salvaged"]["outbox"] < OUTBOX
    assert report["salvaged"]["outbox"] == report["tables"]["outbox"]["readable"]
    checked = json.loads(surelay("doctor", "--path", str(out), "--json").stdout)
    assert checked["healthy"] is True
    assert checked["tables"]["outbox"]["readable"] == report["salvaged"]["outbox"]


def test_doctor_checks_a_store_a_runtime_is_writing(tmp_path: Path) -> None:
    gate = threading.Event()
    rt = Runtime.open(tmp_path / "data", transports={"t": lambda e: gate.wait(30)})
    try:
        for n in range(200):
            rt.send("t", b"x" * 500, key=f"k{n % 5}")
        done = surelay("doctor", "--path", str(tmp_path / "data"), "--json")
        assert done.returncode == 0, done.stdout
        assert json.loads(done.stdout)["read_with"] == "lmdb"
        refused = surelay(
            "doctor", "--path", str(tmp_path / "data"), "--salvage", str(tmp_path / "out")
        )
        assert refused.returncode == 1
        assert "stop them before salvaging" in refused.stderr
    finally:
        gate.set()
        rt.close()
