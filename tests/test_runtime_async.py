"""Coroutine transports on the runtime's event loop: delivered, retried, dead-lettered,
cancelled at the ack timeout, and a dead event loop replaced with nothing lost."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from surelay import (
    BreakerPolicy,
    Envelope,
    Outcome,
    PermanentError,
    RetryPolicy,
    TransientError,
)
from surelay.delivery import is_coroutine_transport

from .helpers import open_runtime

FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0, jitter="none")


class AsyncRecorder:
    """A coroutine transport (its `__call__` is `async def`) following a script per
    payload: `ok`, `transient`, `permanent`, `hang`, `kill-loop`."""

    def __init__(self, script: dict[bytes, list[str]] | None = None) -> None:
        self.script = script or {}
        self.attempts: list[tuple[bytes, int]] = []
        self.delivered: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.loops: set[int] = set()
        self.closed = threading.Event()

    async def __call__(self, envelope: Envelope) -> None:
        self.loops.add(id(asyncio.get_running_loop()))
        self.attempts.append((envelope.payload, envelope.attempt))
        steps = self.script.get(envelope.payload, ["ok"])
        step = steps[min(envelope.attempt, len(steps)) - 1]
        await asyncio.sleep(0)  # a real await: the loop runs other calls meanwhile
        if step == "transient":
            raise TransientError("scripted")
        if step == "permanent":
            raise PermanentError("scripted")
        if step == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.append(envelope.payload)
                raise
        if step == "kill-loop":
            asyncio.get_running_loop().call_soon(_die)
            await asyncio.sleep(60)  # the loop dies before this ends
        self.delivered.append(envelope.payload)

    async def aclose(self) -> None:
        self.closed.set()


def _die() -> None:
    raise SystemExit("the event loop dies")  # escapes run_forever, as a real crash would


def test_a_coroutine_transport_is_recognised() -> None:
    async def function(_envelope: Envelope) -> None: ...

    def plain(_envelope: Envelope) -> None: ...

    assert is_coroutine_transport(function)
    assert is_coroutine_transport(AsyncRecorder())
    assert not is_coroutine_transport(plain)


def test_async_transport_delivers_retries_and_dead_letters(tmp_path: Path) -> None:
    transport = AsyncRecorder(
        {b"flaky": ["transient", "ok"], b"bad": ["permanent"], b"down": ["transient"] * 3}
    )
    with open_runtime(tmp_path, {"a": transport}, retry=FAST) as rt:
        receipts = {p: rt.send("a", p, key=p.decode()) for p in (b"ok", b"flaky", b"bad", b"down")}
        outcomes = {p: r.wait(10) for p, r in receipts.items()}
        letters = {d.payload: d.reason_class for d in rt.dead_letters.list()}
        assert rt.stats().calls_in_flight == {"a": 0}
    assert outcomes == {
        b"ok": Outcome.DELIVERED,
        b"flaky": Outcome.DELIVERED,
        b"bad": Outcome.DEAD_LETTERED,
        b"down": Outcome.DEAD_LETTERED,
    }
    assert letters == {b"bad": "permanent", b"down": "exhausted"}
    assert [a for p, a in transport.attempts if p == b"flaky"] == [1, 2]
    assert transport.closed.is_set()  # aclose() was awaited at close


def test_the_ack_timeout_cancels_the_coroutine_and_retries(tmp_path: Path) -> None:
    transport = AsyncRecorder({b"slow": ["hang", "ok"]})
    with open_runtime(
        tmp_path, {"a": transport}, retry=FAST, ack_timeout_per_transport={"a": 0.1}
    ) as rt:
        assert rt.send("a", b"slow").wait(10) is Outcome.DELIVERED
    assert transport.cancelled == [b"slow"]  # the coroutine saw CancelledError
    assert [a for p, a in transport.attempts if p == b"slow"] == [1, 2]


def test_every_call_past_its_deadline_is_cancelled(tmp_path: Path) -> None:
    """One timer per engine watches all calls: twenty hanging at once all time out."""
    payloads = [b"%d" % i for i in range(20)]
    transport = AsyncRecorder({p: ["hang", "ok"] for p in payloads})
    with open_runtime(
        tmp_path,
        {"a": transport},
        retry=FAST,
        breaker=BreakerPolicy(failure_ratio=1.0, min_calls=100),  # timeouts: no tripping
        ack_timeout_per_transport={"a": 0.1},
    ) as rt:
        receipts = [rt.send("a", p, key=p.decode()) for p in payloads]
        assert all(r.wait(10) is Outcome.DELIVERED for r in receipts)
    assert sorted(transport.cancelled) == sorted(payloads)


def test_a_coroutine_that_swallows_its_cancel_and_returns_has_delivered(tmp_path: Path) -> None:
    calls: list[int] = []

    async def stubborn(envelope: Envelope) -> None:
        calls.append(envelope.attempt)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return  # it says it delivered after all, as asyncio.timeout would accept

    with open_runtime(
        tmp_path, {"a": stubborn}, retry=FAST, ack_timeout_per_transport={"a": 0.1}
    ) as rt:
        assert rt.send("a", b"x").wait(10) is Outcome.DELIVERED
        assert rt.send("a", b"y").wait(10) is Outcome.DELIVERED  # the task runs on cleanly
    assert calls == [1, 1]


def test_a_dead_event_loop_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    transport = AsyncRecorder({b"killer": ["kill-loop", "ok"], b"bystander": ["hang", "ok"]})
    with open_runtime(tmp_path, {"a": transport}, retry=FAST) as rt:
        bystander = rt.send("a", b"bystander", key="b")  # in flight when the loop dies
        while (b"bystander", 1) not in transport.attempts:
            threading.Event().wait(0.005)
        killer = rt.send("a", b"killer", key="k")
        assert killer.wait(10) is Outcome.DELIVERED
        assert bystander.wait(10) is Outcome.DELIVERED
        after = [rt.send("a", b"%d" % i, key=f"n{i}") for i in range(20)]
        assert all(r.wait(10) is Outcome.DELIVERED for r in after)
        health = rt.health()["engines"]["a"]
        assert health["restarts"] == 1 and "SystemExit" in health["last_crash"]
        assert health["ok"]
    # both were retried with their attempt counted (a crash of the loop under them)
    assert (b"killer", 2) in transport.attempts and (b"bystander", 2) in transport.attempts
    assert len(transport.loops) == 2


def test_a_loop_that_dies_twice_under_a_message_dead_letters_it_as_crash(tmp_path: Path) -> None:
    transport = AsyncRecorder({b"killer": ["kill-loop", "kill-loop"]})
    with open_runtime(tmp_path, {"a": transport}, retry=FAST) as rt:
        assert rt.send("a", b"killer").wait(10) is Outcome.DEAD_LETTERED
        (letter,) = rt.dead_letters.list()
        assert rt.send("a", b"fine").wait(10) is Outcome.DELIVERED
    assert letter.reason_class == "crash" and letter.attempts == 2


def test_a_transport_refusing_its_concurrency_fails_open_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    class Picky(AsyncRecorder):
        def prepare(self, concurrency: int) -> None:
            if concurrency > 10:
                raise ValueError(f"at most 10 connections, asked for {concurrency}")

    good = AsyncRecorder()
    with pytest.raises(ValueError, match="at most 10 connections, asked for 64"):
        open_runtime(tmp_path, {"good": good, "picky": Picky()})
    assert not [t for t in threading.enumerate() if t.name == "surelay-event-loop"]
    with open_runtime(tmp_path, {"picky": Picky()}, concurrency_per_transport={"picky": 10}) as rt:
        assert rt.send("picky", b"x").wait(10) is Outcome.DELIVERED
