"""A runtime whose store filled up during an outage drains once the downstream is back,
without a restart, and sends nothing twice: a full map, and a full disk (a small tmpfs,
where the test may mount one)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import surelay
from surelay import (
    BreakerPolicy,
    Envelope,
    RetryPolicy,
    Runtime,
    RuntimeConfig,
    StorageFull,
    TransientError,
)
from surelay.sources.inbound import Inbound

PAYLOAD = b"x" * 10_000


class Downstream:
    """Fails every call until `open()`; then counts each message it receives."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.received: collections.Counter[str] = collections.Counter()
        self._lock = threading.Condition()

    def __call__(self, envelope: Envelope) -> None:
        if not self.up.is_set():
            raise TransientError("downstream is down")
        with self._lock:
            self.received[envelope.message_id] += 1
            self._lock.notify_all()

    def wait_for(self, ids: list[str]) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: set(ids) <= set(self.received), 60)


def _config() -> RuntimeConfig:
    return RuntimeConfig(
        map_size=1 << 20,
        retry=RetryPolicy(base_delay=0.05, max_delay=0.2, max_attempts=10_000),
        breaker=BreakerPolicy(open_for=0.2),
    )


def _send_until_full(rt: Runtime) -> list[str]:
    sent: list[str] = []
    with pytest.raises(StorageFull) as refused:
        for n in range(100_000):
            sent.append(rt.send("down", PAYLOAD, key=f"k{n % 32}").message_id)
    return sent if "full" in str(refused.value) else []


def test_storage_full_is_public() -> None:
    assert surelay.StorageFull is StorageFull
    assert "StorageFull" in surelay.__all__
    assert issubclass(StorageFull, surelay.SurelayError)


def test_a_full_map_drains_without_a_restart_and_sends_nothing_twice(tmp_path: Path) -> None:
    downstream = Downstream()
    path = tmp_path / "data"
    rt = Runtime.open(path, transports={"down": downstream}, config=_config())
    try:
        sent = _send_until_full(rt)
        assert len(sent) > 100
        storage = rt.health()["storage"]
        assert storage["full"]
        assert not storage["ok"]
        downstream.up.set()
        assert rt.flush(60)
        assert rt.stats().outbox_pending == 0
        rt.send("down", PAYLOAD)  # room again
        assert rt.flush(60)
        assert rt.health()["storage"]["ok"]
    finally:
        rt.close()
    assert set(sent) <= set(downstream.received)
    assert max(downstream.received.values()) == 1
    before = sum(downstream.received.values())
    rt = Runtime.open(path, transports={"down": downstream}, config=_config())
    try:
        assert rt.flush(60)
        assert rt.stats().outbox_pending == 0
    finally:
        rt.close()
    assert sum(downstream.received.values()) == before  # the reopen sent nothing


@contextlib.contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill_disk(filler: Path) -> None:
    """Write `filler` until the filesystem has no room left."""
    with open(filler, "wb") as file:
        chunk = b"\0" * (64 << 10)
        with contextlib.suppress(OSError):
            while True:
                file.write(chunk)
                file.flush()


def test_a_full_disk_is_reported_as_such_and_drains_once_freed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "surelay")
    with _small_disk(tmp_path / "disk", "8m") as disk:
        downstream = Downstream()
        rt = Runtime.open(disk / "data", transports={"down": downstream}, config=_config())
        try:
            sent = [rt.send("down", PAYLOAD, key=f"k{n % 8}").message_id for n in range(100)]
            filler = disk / "filler"
            _fill_disk(filler)
            with pytest.raises(StorageFull, match=f"the disk at {disk / 'data'} is full"):
                for _ in range(100):
                    rt.send("down", PAYLOAD)
            downstream.up.set()  # deliveries now need the disk to be recorded
            downstream.wait_for(sent)
            filler.unlink()
            assert rt.flush(60)
            assert rt.stats().outbox_pending == 0
            rt.send("down", PAYLOAD)
            assert rt.flush(60)
        finally:
            rt.close()
        assert set(sent) <= set(downstream.received)
        assert max(downstream.received.values()) == 1
        before = sum(downstream.received.values())
        rt = Runtime.open(disk / "data", transports={"down": downstream}, config=_config())
        try:
            assert rt.flush(60)
        finally:
            rt.close()
        assert sum(downstream.received.values()) == before
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert 1 <= len(full) <= 2  # a state change (sends refused, writes waiting), not a flood
    assert all("Input/output error" not in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records if r.name == "surelay.storage")


class _Invalid:
    """A source of messages whose headers `send` would refuse (dead-lettered `invalid`
    on intake): it records which it was asked to ack and which to deliver again."""

    description = "invalid messages"

    def __init__(self, count: int) -> None:
        self.acked: list[str] = []
        self.naked: list[str] = []
        self._left = [f"bad-{i}" for i in range(count)]

    async def open(self) -> None:
        pass

    async def fetch(self, count: int, timeout: float) -> list[Inbound]:
        if not self._left:
            await asyncio.sleep(min(timeout, 0.05))
            return []
        batch, self._left = self._left[:count], self._left[count:]
        return [self._inbound(message_id) for message_id in batch]

    def _inbound(self, message_id: str) -> Inbound:
        async def ack() -> None:
            self.acked.append(message_id)

        async def nak() -> None:
            self.naked.append(message_id)
            self._left.append(message_id)

        return Inbound(message_id, PAYLOAD, {"Host": "internal"}, {}, ack, nak)

    async def close(self) -> None:
        pass


def test_consumed_invalid_messages_are_not_written_into_the_reserve(tmp_path: Path) -> None:
    """Dead letters of consumed invalid messages are new data: a full store refuses
    them (the source keeps them) instead of writing them into the reserve."""
    downstream = Downstream()
    with Runtime.open(tmp_path / "d", transports={"down": downstream}, config=_config()) as rt:
        assert _send_until_full(rt)
        source = _Invalid(20)
        rt.consume(source, lambda envelope: None, name="in")
        deadline = time.monotonic() + 10
        while not source.naked:
            assert time.monotonic() < deadline, "the batch was never refused"
            threading.Event().wait(0.02)
        assert source.acked == []
        assert rt.dead_letters.list(transport="in") == []
        rt.close(timeout=1.0)
