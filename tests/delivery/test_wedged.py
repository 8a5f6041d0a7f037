"""A wedged transport (every slot held by a call past its ack timeout that never returns)
is visible and bounded: `health()` names it, a warning is logged once per episode,
`stats().abandoned` counts the calls given up on, and messages past `message_ttl` are
dead-lettered `expired` while it stays wedged."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from surelay import Envelope, Outcome, RetryPolicy
from surelay.config import BreakerPolicy
from surelay.delivery.attempt import SKIPPED, TIMEOUT
from surelay.delivery.breakers import Breakers
from surelay.delivery.event_loop import EventLoop, LoopEngine
from surelay.delivery.spec import TransportSpec
from surelay.delivery.threads import ThreadEngine
from surelay.storage.records import OutboxEntry
from surelay.telemetry import Telemetry
from tests.delivery.test_threads import Collect
from tests.helpers import Clock, open_runtime, wait_until


def entry(n: int, created_at: float) -> OutboxEntry:
    envelope = Envelope(f"m{n}", "t", b"%d" % n, created_at=created_at)
    return OutboxEntry(n, envelope, 0.0, 0)


def wedge_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is wedged" in r.getMessage()]


def test_a_wedged_pool_says_so_once_and_hands_back_expired_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    release = threading.Event()
    sink = Collect()
    pool = ThreadEngine(
        TransportSpec(
            "t",
            lambda _e: release.wait(30) and None,
            coroutine=False,
            concurrency=1,
            ack_timeout=0.05,
        ),
        breakers=Breakers(BreakerPolicy(), ["t"]),
        telemetry=Telemetry(),
        clock=clock,
        message_ttl=60.0,
    )
    now = clock()
    try:
        with caplog.at_level(logging.INFO, "surelay.delivery"):
            pool.submit([((entry(1, now),), sink), ((entry(2, now),), sink)])
            pool.submit([((entry(3, now),), sink)])
            pool.submit([((entry(4, now),), sink)], expiring=False)  # a replay's
            sink.wait(2)  # 1 abandoned, then 2 keeps the only slot: wedged
            assert pool.wedged and pool.abandoned == 2
            assert not pool.health()["ok"]
            assert sink.attempts[0].kind == TIMEOUT
            clock.advance(61)  # 3 and 4 wait past the ttl
            sink.wait(3)
            assert (sink.attempts[2].call.seq, sink.attempts[2].kind) == (3, SKIPPED)
            assert pool.waiting == 1  # the replay's run stays
            assert len(wedge_warnings(caplog)) == 1  # once, however long it lasts
            release.set()
            wait_until(lambda: not pool.wedged)
            sink.wait(4)
        assert pool.health()["ok"]
        assert any("no longer wedged" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        pool.stop(1)


def test_a_coroutine_that_ignores_its_cancel_wedges_its_transport() -> None:
    release = threading.Event()

    async def stubborn(_envelope: Envelope) -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # ignores every cancel

    loop = EventLoop()
    sink = Collect()
    engine = LoopEngine(
        TransportSpec("t", stubborn, coroutine=True, concurrency=1, ack_timeout=0.05),
        loop=loop,
        breakers=Breakers(BreakerPolicy(), ["t"]),
        telemetry=Telemetry(),
        clock=time.time,
    )
    loop.start()
    try:
        engine.submit([((entry(1, time.time()),), sink), ((entry(2, time.time()),), sink)])
        wait_until(lambda: engine.wedged)
        health = engine.health()
        assert not health["ok"] and health["abandoned"] == 1 and health["wedged"]
        release.set()
        sink.wait(2)
        wait_until(lambda: not engine.wedged)
        assert engine.health()["ok"]
    finally:
        release.set()
        engine.stop(1)
        loop.stop(2)


def test_a_hung_plain_callable_is_visible_and_expired_messages_still_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hangs(_envelope: Envelope) -> None:
        entered.release()
        release.wait(60)

    try:
        with (
            caplog.at_level(logging.WARNING, "surelay.delivery"),
            open_runtime(
                tmp_path,
                {"hung": hangs},
                clock=clock,
                concurrency=2,
                ack_timeout=0.1,
                message_ttl=300.0,
                retry=RetryPolicy(base_delay=100.0, max_delay=100.0, jitter="none"),
            ) as rt,
        ):
            receipts = [rt.send("hung", b"%d" % i) for i in range(6)]
            for _ in range(4):  # two abandoned, two more holding both slots
                assert entered.acquire(timeout=10)
            wait_until(lambda: not rt.health()["ok"])
            health = rt.health()
            assert health["engines"]["hung"]["wedged"]
            assert "'hung'" in health["engines"]["hung"]["problem"]
            assert health["breakers"]["hung"]["state"] == "closed"  # it is not the breaker
            assert rt.stats().abandoned == 4
            assert rt._parts.vitals.status()["wedged"] == ["hung"]  # what `surelay stats` shows
            assert len(wedge_warnings(caplog)) == 1

            clock.advance(301)  # every message is now past its ttl
            outcomes = [r.wait(10) for r in receipts]
            assert outcomes == [Outcome.DEAD_LETTERED] * 6
            dead = rt.dead_letters.list()
            assert {d.reason_class for d in dead} == {"expired"}
            assert rt.health()["engines"]["hung"]["wedged"]  # still: the calls never returned
            release.set()
            wait_until(lambda: rt.health()["ok"])
            assert len(wedge_warnings(caplog)) == 1
    finally:
        release.set()
