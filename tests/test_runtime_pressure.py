"""Admission under load with a real runtime: bounds, shedding order, honest retry_after."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from surelay import Envelope, Outcome, Overloaded, PressurePolicy, Priority, Receipt

from .helpers import Clock, Gate, Recorder, open_runtime


def test_sustained_overload_sheds_low_first_and_loses_nothing(tmp_path: Path) -> None:
    stop = threading.Event()

    def slow(_envelope: Envelope) -> None:
        if not stop.is_set():  # a downstream far slower than the producers below,
            time.sleep(0.005)  # until the load stops (the backlog on disk then drains)

    sink = Recorder(slow)
    policy = PressurePolicy(capacity=300)
    bound = 300 + 300 // 4
    accepted: list[Receipt] = []
    refused: Counter[Priority] = Counter()
    admitted_high_while_refusing = threading.Event()
    peak = 0
    lock = threading.Lock()

    # one call at a time: the downstream drains ~200/s, far below what 6 producers offer
    with open_runtime(tmp_path, {"t": sink}, pressure=policy, concurrency=1) as rt:

        def produce(priority: Priority) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    receipt = rt.send("t", b"x", key=f"{priority.name}{i % 50}", priority=priority)
                except Overloaded as error:
                    assert error.retry_after > 0
                    with lock:
                        refused[priority] += 1
                    threading.Event().wait(0.001)
                    continue
                with lock:
                    accepted.append(receipt)
                    if priority is Priority.HIGH and refused[Priority.LOW]:
                        admitted_high_while_refusing.set()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rt.stats().in_flight)
                threading.Event().wait(0.001)

        threads = [threading.Thread(target=produce, args=(p,)) for p in Priority for _ in (0, 1)]
        threads.append(threading.Thread(target=watch))
        for thread in threads:
            thread.start()
        # overload until shedding is seen (however slow the machine), then a second more
        admitted_high_while_refusing.wait(60)
        threading.Event().wait(1.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert rt.flush(timeout=60)
        deadline = time.monotonic() + 5  # the governor's next samples see it drained
        while rt.stats().pressure != "normal":
            assert time.monotonic() < deadline, "pressure never back to normal"
            threading.Event().wait(0.02)
        stats = rt.stats()
    assert peak <= bound
    assert refused[Priority.LOW] > 0
    assert refused[Priority.LOW] >= refused[Priority.NORMAL] >= refused[Priority.HIGH]
    assert admitted_high_while_refusing.is_set()
    assert all(r.wait(0) is Outcome.DELIVERED for r in accepted)
    assert stats.delivered == len(accepted) and stats.refused == sum(refused.values())
    assert stats.pressure == "normal"  # back once the load stopped and the backlog drained


def test_critical_refuses_shed_priorities_and_batches_whole(tmp_path: Path) -> None:
    gate = Gate()
    policy = PressurePolicy(capacity=10, elevated_at=0.5, critical_at=0.8, recover_at=0.3)
    with open_runtime(tmp_path, {"t": Recorder(gate)}, pressure=policy) as rt:
        held = [rt.send("t", b"x", key="k") for _ in range(9)]  # one key: nothing drains
        deadline = time.monotonic() + 5
        while rt.stats().pressure != "critical":
            assert time.monotonic() < deadline, "never critical"
            threading.Event().wait(0.01)
        with pytest.raises(Overloaded, match="LOW sends are shed"):
            rt.send("t", b"low", priority=Priority.LOW)
        with pytest.raises(Overloaded):
            rt.send_batch(
                [
                    {"transport": "t", "payload": b"n"},
                    {"transport": "t", "payload": b"l", "priority": Priority.LOW},
                ]
            )
        assert rt.stats().in_flight == 9  # nothing of the batch was accepted
        held.append(rt.send("t", b"normal"))  # 10: at capacity
        with pytest.raises(Overloaded, match="bound of 10"):
            rt.send("t", b"one too many")
        high = [rt.send("t", b"h", priority=Priority.HIGH) for _ in range(2)]  # the allowance
        with pytest.raises(Overloaded, match="bound of 12"):
            rt.send("t", b"h", priority=Priority.HIGH)
        assert rt.stats().refused == 5  # counted per message: the batch was 2
        gate.open()
        assert all(r.wait(10) is Outcome.DELIVERED for r in held + high)
        deadline = time.monotonic() + 5
        while rt.stats().pressure != "normal":
            assert time.monotonic() < deadline, "never back to normal"
            threading.Event().wait(0.01)
        assert rt.send("t", b"low again", priority=Priority.LOW).wait(10) is Outcome.DELIVERED


def test_rate_per_key_retry_after_is_the_real_wait(tmp_path: Path) -> None:
    clock = Clock()
    policy = PressurePolicy(rate_per_key=(2, 10.0))
    with open_runtime(tmp_path, {"t": Recorder()}, pressure=policy, clock=clock) as rt:
        rt.send("t", b"1", key="acct")
        rt.send("t", b"2", key="acct")
        rt.send("t", b"other key", key="other")
        with pytest.raises(Overloaded) as refused:
            rt.send("t", b"3", key="acct")
        assert refused.value.retry_after == pytest.approx(5.0)
        clock.advance(refused.value.retry_after)
        assert rt.send("t", b"3", key="acct").wait(10) is Outcome.DELIVERED
        with pytest.raises(Overloaded):
            rt.send_batch([{"transport": "t", "payload": b"4", "key": "acct"}])
        assert rt.stats().refused == 2
