"""Delayed and scheduled delivery: durable due times that fire once, never early, and keep
each key's order; scheduled messages live on disk, not in memory."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surelay import Guarantee, InvalidMessage, Outcome, Runtime, RuntimeConfig
from surelay.actors.slot_keeper import Look
from surelay.actors.timer import Check
from tests.helpers import Clock, Recorder, wait_until

ROOT = Path(__file__).resolve().parent.parent


def fire_due(rt: Runtime) -> None:
    """Have the timer move what is due now (at once, not at its alarm's next poll)."""
    rt.supervisor.child("timer").ask(Check(), timeout=10)


def test_a_delayed_message_waits_for_its_time_and_holds_back_only_its_keys_later_ones(
    tmp_path: Path,
) -> None:
    clock = Clock()
    recorder = Recorder()
    config = RuntimeConfig(clock=clock)
    with Runtime.open(tmp_path, transports={"t": recorder}, config=config) as rt:
        first = rt.send("t", b"k-1", key="k")  # before the delayed one: not held back
        late = rt.send("t", b"k-2 late", key="k", delay=60)
        behind = rt.send("t", b"k-3", key="k")  # after it: waits for it
        other = rt.send("t", b"j-1", key="j")  # another key: not held back
        assert first.wait(10) is Outcome.DELIVERED and other.wait(10) is Outcome.DELIVERED
        assert rt.stats().scheduled == 2
        clock.advance(59.7)
        fire_due(rt)
        assert rt.stats().scheduled == 2  # not yet moved
        clock.advance(0.25)
        fire_due(rt)
        assert rt.stats().scheduled == 0  # moved a little ahead of time, held until it
        assert recorder.payloads("k") == [b"k-1"]  # none early: the clock is not there yet
        clock.advance(0.1)
        assert late.wait(10) is Outcome.DELIVERED and behind.wait(10) is Outcome.DELIVERED
        assert recorder.payloads("k") == [b"k-1", b"k-2 late", b"k-3"]
        assert rt.stats().scheduled == 0
        assert rt.flush(10)


def test_a_key_waits_for_the_latest_of_its_scheduled_messages(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder()
    config = RuntimeConfig(clock=clock)
    with Runtime.open(tmp_path, transports={"t": recorder}, config=config) as rt:
        rt.send("t", b"1", key="k", delay=100)
        rt.send("t", b"2", key="k", delay=10)  # due earlier, but accepted later
        rt.send("t", b"3", key="k")
        clock.advance(50)
        fire_due(rt)
        assert rt.stats().scheduled == 3
        clock.advance(51)
        wait_until(lambda: len(recorder.delivered) == 3)
        assert recorder.payloads("k") == [b"1", b"2", b"3"]


def test_not_before_takes_epoch_seconds_or_an_aware_datetime(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder()
    with Runtime.open(
        tmp_path, transports={"t": recorder}, config=RuntimeConfig(clock=clock)
    ) as rt:
        at = dt.datetime.fromtimestamp(clock() + 30, tz=dt.timezone(dt.timedelta(hours=5)))
        rt.send("t", b"datetime", not_before=at)
        rt.send("t", b"epoch", not_before=clock() + 20)
        past = rt.send("t", b"past", not_before=clock() - 5)  # due already: sent at once
        assert past.wait(10) is Outcome.DELIVERED
        assert rt.stats().scheduled == 2
        clock.advance(25)
        wait_until(lambda: len(recorder.delivered) == 2)
        clock.advance(10)
        wait_until(lambda: len(recorder.delivered) == 3)
        assert recorder.payloads() == [b"past", b"epoch", b"datetime"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"delay": -1}, "delay must be seconds >= 0"),
        ({"delay": float("nan")}, "delay must be a finite number"),
        ({"delay": "5"}, "delay must be a finite number"),
        ({"delay": True}, "delay must be a finite number"),
        ({"delay": 1e12}, "seconds, not milliseconds"),
        ({"delay": 1, "not_before": 5.0}, "delay or not_before, not both"),
        ({"not_before": dt.datetime(2030, 1, 1)}, "aware datetime"),
        ({"not_before": "tomorrow"}, "not_before must be a finite number"),
        ({"type": ""}, "type must be a non-empty str"),
        ({"type": "x" * 300}, "over 256"),
        ({"type": 7}, "type must be a non-empty str"),
    ],
)
def test_bad_timing_or_type_is_refused_naming_it(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    with Runtime.open(tmp_path, transports={"t": Recorder()}) as rt:
        with pytest.raises(InvalidMessage, match=message):
            rt.send("t", b"x", **arguments)  # type: ignore[arg-type]
        with pytest.raises(InvalidMessage, match=r"messages\[1\]: .*" + message):
            rt.send_batch(
                [
                    {"transport": "t", "payload": b"ok"},
                    {"transport": "t", "payload": b"x", **arguments},
                ]
            )
        assert rt.stats().accepted == 0


def test_a_due_time_past_the_message_ttl_is_refused(tmp_path: Path) -> None:
    config = RuntimeConfig(message_ttl=60)
    with Runtime.open(tmp_path, transports={"t": Recorder()}, config=config) as rt:
        with pytest.raises(InvalidMessage, match="past message_ttl=60"):
            rt.send("t", b"x", delay=60)
        rt.send("t", b"x", delay=30)
        assert rt.stats().scheduled == 1


def test_batches_asends_and_transactions_schedule_too(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder()
    with Runtime.open(
        tmp_path, transports={"t": recorder}, config=RuntimeConfig(clock=clock)
    ) as rt:
        rt.send_batch(
            [
                {"transport": "t", "payload": b"b-late", "key": "b", "delay": 10},
                {"transport": "t", "payload": b"b-next", "key": "b"},
                {"transport": "t", "payload": b"now"},
            ]
        )

        async def sends() -> None:
            await rt.asend("t", b"a-late", key="a", delay=10)
            await rt.asend_batch([{"transport": "t", "payload": b"a-next", "key": "a"}])

        asyncio.run(sends())
        with rt.transaction() as txn:
            rt.send("t", b"x-late", key="x", delay=10, txn=txn)
            rt.send("t", b"x-next", key="x", txn=txn)
        wait_until(lambda: recorder.payloads() == [b"now"])
        assert rt.stats().scheduled == 6
        clock.advance(11)
        wait_until(lambda: len(recorder.delivered) == 7)
        for key in "abx":
            assert recorder.payloads(key) == [f"{key}-late".encode(), f"{key}-next".encode()]


def test_an_aborted_transaction_schedules_nothing(tmp_path: Path) -> None:
    with Runtime.open(tmp_path, transports={"t": Recorder()}) as rt:
        with pytest.raises(RuntimeError, match="abort"), rt.transaction() as txn:
            rt.send("t", b"x", key="k", delay=10, txn=txn)
            raise RuntimeError("abort")
        assert rt.stats().scheduled == 0
        rt.send("t", b"y", key="k").wait(10)  # no hold left behind on its key
        assert rt.stats().scheduled == 0


def test_scheduled_messages_outlive_close_and_fire_after_the_next_open(tmp_path: Path) -> None:
    clock = Clock()
    config = RuntimeConfig(clock=clock)
    with Runtime.open(tmp_path, transports={"t": Recorder()}, config=config) as rt:
        for i in range(50):
            rt.send("t", str(i).encode(), key=f"k{i % 3}", delay=100 + i)
        assert rt.stats().scheduled == 50
    recorder = Recorder()
    with Runtime.open(tmp_path, transports={"t": recorder}, config=config) as rt:
        assert rt.stats().scheduled == 50
        clock.advance(124.5)  # the first 25 are due
        wait_until(lambda: len(recorder.delivered) == 25)
        fire_due(rt)
        assert rt.stats().scheduled == 25
        clock.advance(100)
        wait_until(lambda: len(recorder.delivered) == 50)
        assert rt.flush(10)
    assert sorted(int(p) for p in recorder.payloads()) == list(range(50))


def test_best_effort_holds_a_delayed_message_in_memory_until_due(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder()
    config = RuntimeConfig(clock=clock, guarantee=Guarantee.BEST_EFFORT)
    with Runtime.open(tmp_path, transports={"t": recorder}, config=config) as rt:
        late = rt.send("t", b"late", key="k", delay=5)
        rt.send("t", b"next", key="k")
        assert late.wait(0.2) is None
        clock.advance(6)
        wait_until(lambda: len(recorder.delivered) == 2)
        assert recorder.payloads("k") == [b"late", b"next"]


def _acked(path: Path) -> dict[str, tuple[float, str]]:
    out = {}
    for line in path.read_text().splitlines():
        message_id, earliest, key = line.split()
        out[message_id] = (float(earliest), key)
    return out


def _schedule_in_host(
    data: Path, acked: Path, count: int, low: float, high: float
) -> subprocess.Popen[str]:
    host = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.schedule_host",
            str(data),
            str(acked),
            str(count),
            str(low),
            str(high),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert host.stdout is not None
    assert host.stdout.readline() == "scheduled\n"
    return host


def _check_fired(
    recorder: Recorder, acked: dict[str, tuple[float, str]], times: dict[str, float]
) -> None:
    calls = [e.message_id for e in recorder.attempts]
    assert len(calls) == len(set(calls)), "a scheduled message fired twice"
    assert set(calls) == set(acked), "a scheduled message was lost"
    for message_id, (earliest, _) in acked.items():
        assert times[message_id] >= earliest, f"{message_id} was sent early"
    for key in ("k0", "k1"):  # each key's messages in acceptance order
        sent = [m for m, (_, k) in acked.items() if k == key]
        assert [m for m in calls if acked[m][1] == key] == sent


def _timed_recorder() -> tuple[Recorder, dict[str, float]]:
    times: dict[str, float] = {}

    def stamp(envelope: object) -> None:
        times[envelope.message_id] = time.time()  # type: ignore[attr-defined]

    return Recorder(stamp), times


def test_timers_of_a_killed_host_fire_once_none_early_none_lost(tmp_path: Path) -> None:
    data, acked_file = tmp_path / "data", tmp_path / "acked"
    host = _schedule_in_host(data, acked_file, 200, 2.0, 4.0)
    try:
        host.send_signal(signal.SIGKILL)
        host.wait(10)
    finally:
        host.kill()
    acked = _acked(acked_file)
    assert len(acked) == 200
    recorder, times = _timed_recorder()
    with Runtime.open(data, transports={"t": recorder}) as rt:
        assert rt.stats().scheduled > 0  # (the last are due 4 s after they were sent)
        wait_until(lambda: len(recorder.delivered) == 200, 30)
        assert rt.flush(10)
        assert rt.stats().scheduled == 0
    _check_fired(recorder, acked, times)


def test_timers_of_a_killed_host_are_adopted_by_a_live_runtime(tmp_path: Path) -> None:
    data, acked_file = tmp_path / "data", tmp_path / "acked"
    recorder, times = _timed_recorder()
    with Runtime.open(data, transports={"t": recorder}) as rt:
        host = _schedule_in_host(data, acked_file, 150, 2.0, 3.0)  # slot 1: 0 is ours
        try:
            host.send_signal(signal.SIGKILL)
            host.wait(10)
        finally:
            host.kill()
        rt.supervisor.child("slots").ask(Look(), timeout=30)
        wait_until(lambda: len(recorder.delivered) == 150, 30)
        assert rt.flush(10)
        assert rt.stats().scheduled == 0
    _check_fired(recorder, _acked(acked_file), times)


def _rss() -> int:
    """Anonymous resident memory (bytes): what the process holds, not LMDB's mapped pages."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_a_hundred_thousand_scheduled_messages_cost_disk_not_memory(tmp_path: Path) -> None:
    config = RuntimeConfig(map_size=1 << 30)
    with Runtime.open(tmp_path, transports={"t": Recorder()}, config=config) as rt:
        payload = b"x" * 200
        batch = [{"transport": "t", "payload": payload, "delay": 3600.0} for _ in range(1000)]
        rt.send_batch(batch)
        before = _rss()
        for _ in range(99):
            rt.send_batch(batch)
        grown = _rss() - before
        assert rt.stats().scheduled == 100_000
        assert rt.stats().in_flight == 0  # nothing of them held as work in hand
        # held in memory, 99,000 envelopes with their payloads would take well over this
        assert grown < 24 << 20, f"RSS grew {grown / (1 << 20):.1f} MiB"


def test_flush_waits_for_scheduled_messages(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder()
    with Runtime.open(
        tmp_path, transports={"t": recorder}, config=RuntimeConfig(clock=clock)
    ) as rt:
        rt.send("t", b"later", delay=30)
        assert not rt.flush(0.2)  # accepted, not yet delivered
        clock.advance(31)
        assert rt.flush(10)
        assert recorder.payloads() == [b"later"]
