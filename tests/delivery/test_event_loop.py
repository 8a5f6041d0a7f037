"""The event-loop engine on its own: a dead loop replaced without losing a call or a
slot, and a failure around a call reported, not left in flight."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from surelay import Envelope, Outcome
from surelay.config import BreakerPolicy
from surelay.delivery.attempt import LOST, OK, SKIPPED, Attempt
from surelay.delivery.breakers import Breakers
from surelay.delivery.event_loop import EventLoop, LoopEngine
from surelay.delivery.spec import TransportSpec
from surelay.storage.records import OutboxEntry
from surelay.telemetry import Telemetry
from tests.helpers import Clock, open_runtime, wait_until

from .test_threads import Collect


def entry(n: int, key: str | None = None, payload: bytes = b"") -> OutboxEntry:
    return OutboxEntry(n, Envelope(f"m{n}", "a", payload, key=key), 0.0, 0)


def engine(
    transport: object,
    loop: EventLoop,
    breakers: Breakers | None = None,
    clock: Callable[[], float] = time.time,
) -> LoopEngine:
    return LoopEngine(
        TransportSpec("a", transport, coroutine=True, concurrency=4, ack_timeout=5.0),  # type: ignore[arg-type]
        loop=loop,
        breakers=breakers or Breakers(BreakerPolicy(), ["a"]),
        telemetry=Telemetry(),
        clock=clock,
    )


def _die() -> None:
    raise SystemExit("the event loop dies")


def test_a_submission_racing_the_loops_death_runs_on_the_next_loop() -> None:
    """A pump queued on the loop just before it dies runs while the dead loop is cleaned
    up: it must hand itself on to the new loop, not start calls on the dead one."""
    sink = Collect()
    loop = EventLoop()
    holder: list[LoopEngine] = []

    async def transport(envelope: Envelope) -> None:
        if envelope.payload == b"kill":
            asyncio.get_running_loop().call_soon(_die)
            holder[0].submit([((entry(2, "other"),), sink)])  # its pump lands after _die
            await asyncio.sleep(60)

    holder.append(engine(transport, loop))
    loop.start()
    holder[0].submit([((entry(1, "k", b"kill"),), sink)])
    attempts = sink.wait(2)
    assert sorted((a.call.seq, a.kind) for a in attempts) == [(1, LOST), (2, OK)]
    assert loop.restarts == 1
    wait_until(lambda: holder[0].in_flight == 0, timeout=3)  # freed just after its report
    loop.stop(2)


def test_a_failure_around_a_call_is_reported_lost_and_frees_the_slot() -> None:
    sink = Collect()
    failed: list[Attempt] = []

    def flaky_sink(attempt: Attempt) -> None:
        if not failed:
            failed.append(attempt)
            raise RuntimeError("a bug in the sink")
        sink(attempt)

    async def transport(_envelope: Envelope) -> None:
        await asyncio.sleep(0)

    loop = EventLoop()
    pool = engine(transport, loop)
    loop.start()
    pool.submit([((entry(1, "k"), entry(2, "k")), flaky_sink)])
    assert [(a.call.seq, a.kind) for a in sink.wait(2)] == [(1, LOST), (2, SKIPPED)]
    deadline = time.monotonic() + 5
    while pool.in_flight:
        assert time.monotonic() < deadline
        threading.Event().wait(0.005)
    loop.stop(2)


def test_a_probe_lost_with_the_loop_reports_back_to_the_breaker() -> None:
    """Half-open, the one probe dies with the loop: the breaker hears a failure and opens
    again instead of waiting for ever for that probe."""
    clock = Clock()
    policy = BreakerPolicy(window=2, min_calls=2, open_for=10, half_open_calls=1)
    breakers = Breakers(policy, ["a"])
    for _ in range(2):
        breakers.record("a", clock(), failed=True)
    clock.advance(10)  # open_for has passed: the next call is the probe
    sink = Collect()

    async def transport(_envelope: Envelope) -> None:
        asyncio.get_running_loop().call_soon(_die)
        await asyncio.sleep(60)

    loop = EventLoop()
    pool = engine(transport, loop, breakers, clock)
    loop.start()
    pool.submit([((entry(1),), sink)])
    assert sink.wait(1)[0].kind == LOST
    assert breakers.states(clock())["a"] == "open"
    loop.stop(2)


def test_a_coroutine_that_blocks_the_loop_past_its_ack_timeout_is_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It cannot be cut off (its deadline cannot fire while it holds the loop); its
    result counts, and a warning names it, once, not the transport it held up."""

    async def blocking(_envelope: Envelope) -> None:
        time.sleep(0.3)  # blocks the loop: the behaviour under test

    async def polite(_envelope: Envelope) -> None:
        await asyncio.sleep(0.01)

    with (
        caplog.at_level(logging.WARNING, "surelay.delivery"),
        open_runtime(tmp_path, {"blocking": blocking, "polite": polite}, ack_timeout=0.1) as rt,
    ):
        for _ in range(3):  # polite calls in flight while it blocks are not named
            rt.send("polite", b"p")
        assert rt.send("blocking", b"1").wait(10) is Outcome.DELIVERED
        assert rt.send("blocking", b"2").wait(10) is Outcome.DELIVERED
    named = [r.getMessage() for r in caplog.records if "blocks the event loop" in r.getMessage()]
    assert len(named) == 1 and "'blocking'" in named[0]
