"""close() with a transport that hangs: it returns within its timeout plus CLOSE_GRACE,
raises nothing, starts no call afterwards, and leaves what it did not deliver in the
outbox for the next open."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from surelay import Envelope
from surelay.runtime import CLOSE_GRACE, HEALTH_TIMEOUT
from surelay.supervision import Actor, ChildSpec

from .helpers import Recorder, open_runtime


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_close_is_bounded_starts_nothing_after_and_keeps_the_rest(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    calls: list[bytes] = []

    def hang(envelope: Envelope) -> None:
        calls.append(envelope.payload)
        release.wait(30)

    async def ahang(envelope: Envelope) -> None:
        calls.append(envelope.payload)
        await asyncio.sleep(30)

    transport = ahang if kind == "async" else hang
    rt = open_runtime(tmp_path, {"t": transport}, concurrency=4)  # type: ignore[dict-item]
    for i in range(20):
        rt.send("t", b"%d" % i, key=f"k{i % 10}")
    while len(calls) < 4:
        threading.Event().wait(0.005)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="surelay"):
        rt.close(timeout=1.0)
    took = time.monotonic() - started
    assert took < 1.0 + CLOSE_GRACE, f"close took {took:.1f}s"
    assert "still running: abandoned" in caplog.text
    made = len(calls)
    release.set()  # the hung calls end now: a slot is free, yet nothing may start
    threading.Event().wait(0.3)  # a call started after close would show by now
    assert len(calls) == made == 4
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as again:
        assert again.flush(10)
    assert sorted(sink.payloads()) == sorted(b"%d" % i for i in range(20))


def test_health_is_bounded_when_the_tree_does_not_answer(tmp_path: Path) -> None:
    """A supervisor busy starting a child that hangs in on_start cannot answer: health()
    says so within HEALTH_TIMEOUT instead of waiting for it."""
    entered = threading.Event()
    release = threading.Event()

    class SlowStart(Actor):
        def on_start(self) -> None:
            entered.set()
            release.wait(30)

    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        starter = threading.Thread(
            target=lambda: rt.supervisor.start_child(ChildSpec("slow", SlowStart)), daemon=True
        )
        starter.start()
        assert entered.wait(10)  # the root supervisor waits for that on_start now
        started = time.monotonic()
        health = rt.health()
        assert time.monotonic() - started < HEALTH_TIMEOUT + 1.0
        assert health["ok"] is False
        assert health["actors"] == {
            "surelay": {"ok": False, "status": "unresponsive", "restarts": 0}
        }
        release.set()
        starter.join(10)
