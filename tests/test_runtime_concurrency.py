"""Concurrent delivery through a real runtime: many calls in flight per transport, one per
key, strict FIFO per key; the sender's mailbox flows while calls hang; exactly
`half_open_calls` probes while the breaker is half-open."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surelay import (
    BreakerPolicy,
    Envelope,
    Outcome,
    PermanentError,
    Priority,
    RetryPolicy,
    TransientError,
)

from .helpers import Clock, Gate, Recorder, open_runtime

IMMEDIATE = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0, jitter="none")
NEVER_OPENS = BreakerPolicy(window=100, failure_ratio=1.0, min_calls=100, open_for=0.05)


class Instrumented:
    """A transport that follows a script per message (one outcome per attempt: `ok`,
    `transient`, `permanent`), sleeps a scripted latency, and counts calls in flight:
    overall and per key."""

    def __init__(self, scripts: dict[bytes, list[str]], latency: dict[bytes, float]) -> None:
        self._scripts = scripts
        self._latency = latency
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.per_key: dict[str, int] = defaultdict(int)
        self.overlaps: list[str] = []
        self.attempts: dict[str | None, list[tuple[bytes, int]]] = defaultdict(list)

    def __call__(self, envelope: Envelope) -> None:
        key = envelope.key
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if key is not None:
                self.per_key[key] += 1
                if self.per_key[key] > 1:
                    self.overlaps.append(key)
            self.attempts[key].append((envelope.payload, envelope.attempt))
        try:
            time.sleep(self._latency[envelope.payload])  # a downstream's latency, not a wait
            outcome = self._scripts[envelope.payload][envelope.attempt - 1]
            if outcome == "transient":
                raise TransientError("scripted")
            if outcome == "permanent":
                raise PermanentError("scripted")
        finally:
            with self._lock:
                self.in_flight -= 1
                if key is not None:
                    self.per_key[key] -= 1


def expected_attempts(script: list[str], max_attempts: int) -> list[int]:
    """The attempts the model makes of one message: until the first `ok` or
    `permanent`, at most `max_attempts`."""
    made = []
    for attempt, outcome in enumerate(script[:max_attempts], start=1):
        made.append(attempt)
        if outcome != "transient":
            break
    return made


def expected_outcome(script: list[str], max_attempts: int) -> Outcome:
    last = script[len(expected_attempts(script, max_attempts)) - 1]
    return Outcome.DELIVERED if last == "ok" else Outcome.DEAD_LETTERED


messages = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e", "f", None]),
        st.lists(
            st.sampled_from(["ok", "ok", "ok", "transient", "permanent"]), min_size=3, max_size=3
        ),
        st.floats(0.0, 0.003),
    ),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=messages, concurrency=st.sampled_from([2, 64]))
def test_per_key_fifo_and_the_concurrency_bound_hold_against_a_model(
    tmp_path_factory: object, batch: list[tuple[str | None, list[str], float]], concurrency: int
) -> None:
    path = tmp_path_factory.mktemp("order")  # type: ignore[attr-defined]
    scripts = {b"m%d" % i: script for i, (_, script, _) in enumerate(batch)}
    latency = {b"m%d" % i: seconds for i, (_, _, seconds) in enumerate(batch)}
    transport = Instrumented(scripts, latency)
    with open_runtime(
        path, {"t": transport}, retry=IMMEDIATE, breaker=NEVER_OPENS, concurrency=concurrency
    ) as rt:
        receipts = rt.send_batch(
            [
                {"transport": "t", "payload": b"m%d" % i, "key": key}
                for i, (key, _, _) in enumerate(batch)
            ]
        )
        outcomes = [r.wait(20) for r in receipts]
    assert transport.overlaps == []  # never two calls of one key at once
    assert transport.peak <= concurrency
    assert outcomes == [expected_outcome(script, 3) for _, script, _ in batch]
    by_key: dict[str | None, list[tuple[bytes, int]]] = defaultdict(list)
    for i, (key, script, _) in enumerate(batch):
        by_key[key] += [(b"m%d" % i, attempt) for attempt in expected_attempts(script, 3)]
    for key, attempts in by_key.items():
        if key is None:  # no order among messages without a key: only what each got
            assert sorted(transport.attempts[None]) == sorted(attempts)
        else:  # a key's attempts in acceptance order, each message to its end first
            assert transport.attempts[key] == attempts, key


def test_the_concurrency_bound_is_reached_and_never_passed(tmp_path: Path) -> None:
    scripts = {b"m%d" % i: ["ok"] for i in range(200)}
    transport = Instrumented(scripts, dict.fromkeys(scripts, 0.01))
    with open_runtime(tmp_path, {"t": transport}, concurrency=8) as rt:
        receipts = rt.send_batch(
            [{"transport": "t", "payload": p, "key": p.decode()} for p in scripts]
        )
        assert all(r.wait(20) is Outcome.DELIVERED for r in receipts)
    assert transport.peak == 8


def test_the_mailbox_flows_while_every_slot_of_a_transport_hangs(tmp_path: Path) -> None:
    gate = Gate()
    entered = threading.Semaphore(0)

    def hang(envelope: Envelope) -> None:
        entered.release()
        gate(envelope)

    slow = Recorder(hang)
    fast = Recorder()
    with open_runtime(tmp_path, {"slow": slow, "fast": fast}, partitions=1) as rt:
        held = [rt.send("slow", b"%d" % i, key=f"k{i}") for i in range(64)]
        for _ in range(64):
            assert entered.acquire(timeout=10)  # 64 calls hang, one sender
        urgent = rt.send("fast", b"now", key="other", priority=Priority.HIGH)
        assert urgent.wait(5) is Outcome.DELIVERED
        assert rt.stats().calls_in_flight == {"slow": 64, "fast": 0}
        assert all(r.outcome is None for r in held)
        gate.open()
        assert all(r.wait(10) is Outcome.DELIVERED for r in held)


def test_a_hung_call_holds_only_its_own_key(tmp_path: Path) -> None:
    gate = Gate()

    def hang_k1(envelope: Envelope) -> None:
        if envelope.key == "k1":
            gate(envelope)

    sink = Recorder(hang_k1)
    with open_runtime(tmp_path, {"t": sink}, partitions=1) as rt:
        stuck = rt.send("t", b"1", key="k1")
        behind = rt.send("t", b"2", key="k1")
        gate.entered.wait(5)
        others = [rt.send("t", b"x", key=f"k{i}") for i in range(2, 12)]
        assert all(r.wait(5) is Outcome.DELIVERED for r in others)
        assert stuck.outcome is None and behind.outcome is None
        gate.open()
        assert stuck.wait(5) is behind.wait(5) is Outcome.DELIVERED
    assert sink.payloads("k1") == [b"1", b"2"]


def test_half_open_lets_exactly_its_probes_through_under_concurrency(tmp_path: Path) -> None:
    clock = Clock()
    state = {"mode": "fail"}
    probes = Gate()
    lock = threading.Lock()
    in_flight = [0, 0]  # now, peak while probing

    def downstream(envelope: Envelope) -> None:
        if state["mode"] == "fail":
            raise ConnectionError("down")
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            probes(envelope)
        finally:
            with lock:
                in_flight[0] -= 1

    sink = Recorder(downstream)
    policy = BreakerPolicy(window=4, min_calls=4, failure_ratio=0.5, open_for=10, half_open_calls=3)
    with open_runtime(
        tmp_path,
        {"t": sink},
        clock=clock,
        concurrency=32,
        retry=RetryPolicy(max_attempts=5, base_delay=1, max_delay=1, jitter="none"),
        breaker=policy,
    ) as rt:
        receipts = [rt.send("t", b"%d" % i, key=f"k{i}") for i in range(20)]
        wait_until(lambda: rt.stats().breakers["t"] == "open")
        state["mode"] = "probe"
        wait_until(lambda: rt.stats().retry_pending == 20)  # nothing in flight any more
        clock.advance(10)  # half-open: 20 messages come due at once, only 3 may be called
        wait_until(lambda: in_flight[0] == 3 and rt.stats().retry_pending == 17)
        assert in_flight[1] == 3  # the other 17 were held again, without a call
        assert rt.stats().breakers["t"] == "half_open"
        probes.open()  # the probes succeed: closed; the held ones follow when due
        wait_until(lambda: rt.stats().breakers["t"] == "closed")
        clock.advance(1)
        assert all(r.wait(15) is Outcome.DELIVERED for r in receipts)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        threading.Event().wait(0.005)
