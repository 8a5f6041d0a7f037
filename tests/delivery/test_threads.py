"""The thread-pool engine on its own: runs in order, the pool's size, ack timeouts and
the bound on abandoned threads, stopping."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay import Envelope, Priority, TransientError
from surelay.config import BreakerPolicy
from surelay.delivery import threads
from surelay.delivery.attempt import FAILED, LOST, OK, SKIPPED, TIMEOUT, Attempt, ResultBox
from surelay.delivery.breakers import Breakers
from surelay.delivery.lanes import Lanes
from surelay.delivery.spec import TransportSpec
from surelay.delivery.threads import ThreadEngine
from surelay.policy.priority import PATTERN
from surelay.storage.records import OutboxEntry
from surelay.telemetry import Telemetry
from tests.helpers import wait_until


def entry(n: int, key: str | None = None, priority: Priority = Priority.NORMAL) -> OutboxEntry:
    envelope = Envelope(f"m{n}", "t", b"%d" % n, key=key, priority=priority)
    return OutboxEntry(n, envelope, 0.0, 0)


class Collect:
    """A sink that keeps attempts and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self._cond = threading.Condition()

    def __call__(self, attempt: Attempt) -> None:
        with self._cond:
            self.attempts.append(attempt)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[Attempt]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.attempts) >= count, timeout), (
                f"{len(self.attempts)} of {count} attempts"
            )
            return list(self.attempts)


def engine(
    transport: Callable[[Envelope], object], *, limit: int = 4, ack_timeout: float = 30.0
) -> ThreadEngine:
    return ThreadEngine(
        TransportSpec("t", transport, coroutine=False, concurrency=limit, ack_timeout=ack_timeout),
        breakers=Breakers(BreakerPolicy(), ["t"]),
        telemetry=Telemetry(),
        clock=time.time,
    )


def test_a_run_is_called_in_order_and_stops_at_its_first_failure() -> None:
    called: list[bytes] = []

    def transport(envelope: Envelope) -> None:
        called.append(envelope.payload)
        if envelope.payload == b"2":
            raise TransientError("no")

    sink = Collect()
    pool = engine(transport)
    pool.submit([((entry(1), entry(2), entry(3), entry(4)), sink)])
    attempts = sink.wait(4)
    pool.stop(1)
    assert called == [b"1", b"2"]
    assert [a.kind for a in attempts] == [OK, FAILED, SKIPPED, SKIPPED]
    assert attempts[1].failure == "transient"  # classified once, by the engine


def test_fast_calls_keep_one_thread_and_slow_ones_grow_the_pool_to_its_limit() -> None:
    sink = Collect()
    fast = engine(lambda _e: None, limit=8)
    fast.submit([((entry(i),), sink) for i in range(500)])
    sink.wait(500)
    assert fast.health()["threads"] == 1
    fast.stop(1)

    gate = threading.Event()
    peak = [0, 0]
    lock = threading.Lock()

    def slow(_envelope: Envelope) -> None:
        with lock:
            peak[0] += 1
            peak[1] = max(peak)
        gate.wait(10)
        with lock:
            peak[0] -= 1

    sink = Collect()
    pool = engine(slow, limit=8)
    pool.submit([((entry(i),), sink) for i in range(20)])
    deadline = time.monotonic() + 10
    while pool.in_flight < 8:
        assert time.monotonic() < deadline, f"only {pool.in_flight} calls started"
        threading.Event().wait(0.005)
    assert pool.health()["threads"] == 8 and pool.waiting == 12
    gate.set()
    sink.wait(20)
    assert peak[1] == 8
    pool.stop(1)


def test_a_quick_call_now_and_then_slow_does_not_grow_the_pool() -> None:
    """A no-op call that waited for the GIL looks slow once in a while; only calls that
    are all slow grow the pool (64 threads taking turns at the GIL would be far slower)."""

    def mostly_quick(envelope: Envelope) -> None:
        if envelope.payload.endswith(b"0"):
            time.sleep(0.02)  # one call in ten, as a busy interpreter would make it wait

    sink = Collect()
    pool = engine(mostly_quick, limit=8)
    pool.submit([((entry(i),), sink) for i in range(300)])
    sink.wait(300)
    assert pool.health()["threads"] == 1
    pool.stop(1)


def test_idle_threads_retire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "IDLE_RETIRE", 0.05)
    sink = Collect()
    pool = engine(lambda _e: time.sleep(0.002), limit=4)
    pool.submit([((entry(i),), sink) for i in range(40)])
    sink.wait(40)
    deadline = time.monotonic() + 10
    while pool.health()["threads"]:
        assert time.monotonic() < deadline, "idle threads never retired"
        threading.Event().wait(0.01)
    pool.submit([((entry(99),), sink)])  # a new thread is made on demand
    assert sink.wait(41)[-1].kind == OK
    pool.stop(1)


def test_a_call_past_its_ack_timeout_is_abandoned_and_its_slot_reused() -> None:
    release = threading.Event()
    late: list[bytes] = []

    def transport(envelope: Envelope) -> None:
        if envelope.payload == b"1":
            release.wait(10)
            late.append(envelope.payload)

    sink = Collect()
    pool = engine(transport, limit=1, ack_timeout=0.1)
    pool.submit([((entry(1), entry(2)), sink), ((entry(3),), sink)])
    # (the runs are separate: 3's result may come before the cut-off run's)
    attempts = sorted(sink.wait(3), key=lambda a: a.call.seq)
    assert [(a.call.seq, a.kind) for a in attempts] == [(1, TIMEOUT), (2, SKIPPED), (3, OK)]
    assert attempts[0].failure == "transient"
    assert pool.health()["abandoned"] == 1
    release.set()
    deadline = time.monotonic() + 10
    while pool.health()["abandoned"]:
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    assert late == [b"1"] and len(sink.attempts) == 3  # the late result was ignored
    pool.stop(1)


def test_abandoned_threads_are_bounded_by_the_limit() -> None:
    """A downstream that hangs every call: at most `limit` abandoned threads; past that
    a hung call keeps its slot, so at most 2 x limit threads exist."""
    release = threading.Event()
    sink = Collect()
    pool = engine(lambda _e: release.wait(10) and None, limit=2, ack_timeout=0.05)
    pool.submit([((entry(i),), sink) for i in range(10)])
    sink.wait(4)  # two abandoned, then two more time out but keep their slots
    health = pool.health()
    # four calls given up on, two of them holding both slots: wedged
    assert health["abandoned"] == 4 and health["threads"] == 2
    assert health["wedged"] and not health["ok"] and "all 2 call slots" in health["problem"]
    assert pool.in_flight == 2 and pool.waiting == 6
    release.set()
    attempts = sink.wait(10)
    assert sum(a.kind == TIMEOUT for a in attempts) >= 4
    pool.stop(1)


def test_a_thread_that_fails_around_a_call_reports_it_lost_and_goes_on() -> None:
    """A failure outside the transport (here: the sink, once) must not leave the run in
    flight for ever nor keep its slot."""
    sink = Collect()
    failed = []

    def flaky_sink(attempt: Attempt) -> None:
        if not failed:
            failed.append(attempt)
            raise RuntimeError("a bug in the sink")
        sink(attempt)

    pool = engine(lambda _e: None, limit=1)
    pool.submit([((entry(1), entry(2)), flaky_sink), ((entry(3),), flaky_sink)])
    attempts = sink.wait(3)
    assert [(a.call.seq, a.kind) for a in attempts] == [(1, LOST), (2, SKIPPED), (3, OK)]
    wait_until(lambda: pool.in_flight == 0)  # (the slot frees just after its last report)
    pool.stop(1)


def test_nothing_starts_after_stop() -> None:
    gate = threading.Event()
    calls: list[bytes] = []

    def transport(envelope: Envelope) -> None:
        calls.append(envelope.payload)
        gate.wait(10)

    sink = Collect()
    pool = engine(transport, limit=1)
    pool.submit([((entry(1),), sink), ((entry(2),), sink)])
    while not calls:
        threading.Event().wait(0.005)
    pool.stop(1)
    pool.submit([((entry(3),), sink)])
    gate.set()
    sink.wait(1)
    deadline = time.monotonic() + 10
    while pool.health()["threads"]:  # every thread has seen the stop and ended
        assert time.monotonic() < deadline, "pool threads did not end after stop"
        threading.Event().wait(0.01)
    assert calls == [b"1"] and pool.waiting == 1  # 2 never started, 3 was not taken


@given(st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=80))
def test_lanes_serve_by_weight_fifo_within_a_priority(priorities: list[Priority]) -> None:
    lanes = Lanes()
    noop = Collect()
    runs = [((entry(i, priority=p),), noop) for i, p in enumerate(priorities)]
    lanes.extend(runs)
    popped = [lanes.pop()[0][0] for _ in range(len(runs))]
    assert not lanes
    for priority in Priority:  # FIFO within a lane
        seqs = [e.seq for e in popped if e.envelope.priority is priority]
        assert seqs == sorted(seqs)
    # while every lane has work, picks follow the 6:3:1 pattern
    counts = {p: priorities.count(p) for p in Priority}
    for turn, got in enumerate(popped):
        rank = PATTERN[turn % len(PATTERN)]
        wanted = list(Priority)[rank]
        if counts[wanted]:
            assert got.envelope.priority is wanted
        counts[got.envelope.priority] -= 1


def test_a_result_box_tells_its_actor_once_per_burst() -> None:
    box = ResultBox()
    told: list[int] = []
    box.notify = lambda: told.append(len(box))
    for i in range(5):
        box.put(Attempt(entry(i), OK))
    assert told == [1]
    assert [a.call.seq for a in box.settle()] == [0, 1, 2, 3, 4]
    assert not box
    box.put(Attempt(entry(9), OK))
    assert told == [1, 1]


def test_a_result_box_keeps_what_a_crash_interrupted() -> None:
    """The attempt being settled when the actor crashed is `blamed`; the rest are settled
    by the next incarnation; an attempt settled before the crash is gone."""
    box = ResultBox()
    for i in range(4):
        box.put(Attempt(entry(i), OK))
    settled = []
    with pytest.raises(RuntimeError):
        for attempt in box.settle():
            if attempt.call.seq == 2:
                raise RuntimeError("the actor crashes")
            settled.append(attempt.call.seq)
    box.put(Attempt(entry(4), OK))
    blamed = box.blamed()
    assert settled == [0, 1] and blamed is not None and blamed.call.seq == 2
    assert box.blamed() is None
    assert [a.call.seq for a in box.settle()] == [3, 4]


class Exploding(Breakers):
    """Breakers whose `allow` raises while `boom`: a bug around the call."""

    boom = False

    def allow(self, transport: str, now: float) -> tuple[float, float | None]:
        if self.boom:
            raise RuntimeError("a bug around the call")
        return super().allow(transport, now)


def test_a_failure_before_a_runs_first_call_reports_that_message_lost() -> None:
    breakers = Exploding(BreakerPolicy(), ["t"])
    sink = Collect()
    pool = ThreadEngine(
        TransportSpec("t", lambda _e: None, coroutine=False, concurrency=1, ack_timeout=30.0),
        breakers=breakers,
        telemetry=Telemetry(),
        clock=time.time,
    )
    pool.submit([((entry(1, "x"), entry(2, "x"), entry(3, "x")), sink)])
    sink.wait(3)
    breakers.boom = True
    pool.submit([((entry(4, "y"), entry(5, "y")), sink)])
    attempts = sink.wait(5)
    assert [(a.call.seq, a.kind) for a in attempts[3:]] == [(4, LOST), (5, SKIPPED)]
    wait_until(lambda: pool.in_flight == 0, timeout=3)
    pool.stop(1)


def test_the_deadline_watcher_survives_a_failure_to_report() -> None:
    release = threading.Event()
    sink = Collect()
    failed: list[Attempt] = []

    def flaky_sink(attempt: Attempt) -> None:
        if attempt.kind == TIMEOUT and not failed:
            failed.append(attempt)
            raise RuntimeError("a bug in the sink")
        sink(attempt)

    pool = engine(lambda _e: release.wait(10) and None, limit=4, ack_timeout=0.1)
    pool.submit([((entry(1),), flaky_sink)])
    assert sink.wait(1)[0].kind == LOST  # its timeout could not be told: reported lost
    pool.submit([((entry(2),), flaky_sink)])
    assert [(a.call.seq, a.kind) for a in sink.wait(2)] == [(1, LOST), (2, TIMEOUT)]
    release.set()
    pool.stop(1)


def test_a_plain_callable_returning_an_awaitable_fails_permanently() -> None:
    async def forgot_async(_envelope: Envelope) -> None: ...

    sink = Collect()
    pool = engine(forgot_async)  # a coroutine function posing as a plain callable
    pool.submit([((entry(1),), sink)])
    (attempt,) = sink.wait(1)
    pool.stop(1)
    assert (attempt.kind, attempt.failure) == (FAILED, "permanent")
    assert "async def" in str(attempt.error)


def test_halt_lets_running_calls_end_and_starts_nothing_more() -> None:
    gate = threading.Event()
    started = threading.Event()
    calls: list[bytes] = []

    def transport(envelope: Envelope) -> None:
        calls.append(envelope.payload)
        started.set()
        gate.wait(10)

    sink = Collect()
    pool = engine(transport, limit=2)
    pool.submit([((entry(1, "k"), entry(2, "k"), entry(3, "k")), sink)])
    assert started.wait(5)
    pool.halt()
    pool.submit([((entry(4, "j"),), sink)])
    gate.set()
    attempts = sink.wait(3)
    assert [(a.call.seq, a.kind) for a in attempts] == [(1, OK), (2, SKIPPED), (3, SKIPPED)]
    # the slot is given back just after the run's last attempt is reported
    wait_until(lambda: pool.in_flight == 0, timeout=3)
    assert calls == [b"1"]
    pool.stop(1)


def test_a_call_is_anything_with_an_envelope_and_comes_back_as_given() -> None:
    """The engine's unit is a call: an actor submits its own record of a message (here
    not an outbox entry) and gets that very object back in the attempt."""

    @dataclasses.dataclass(frozen=True)
    class Ticket:
        envelope: Envelope
        mine: str

    got: list[Envelope] = []
    sink = Collect()
    pool = engine(got.append, limit=1)
    tickets = (Ticket(Envelope("a", "t", b"1"), "first"), Ticket(Envelope("b", "t", b"2"), "2nd"))
    pool.submit([(tickets, sink)])
    attempts = sink.wait(2)
    assert [a.call for a in attempts] == list(tickets)  # the same objects, in order
    assert all(a.call is t for a, t in zip(attempts, tickets, strict=True))
    assert [e.message_id for e in got] == ["a", "b"]
    pool.stop(1)
