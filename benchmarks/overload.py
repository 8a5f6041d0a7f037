"""Sustained overload: offered load 10x what the transport drains, for 60 s.

Prints the drain rate measured first, then, over the overload: peak RSS growth, sends
accepted and refused per priority, p50/p99 `send` latency for HIGH, the most messages in
flight, and how long the backlog takes to drain afterwards.

    .venv/bin/python benchmarks/overload.py [--seconds 60] [--capacity 10000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from surelay import (
    Envelope,
    Overloaded,
    PressurePolicy,
    Priority,
    Runtime,
    RuntimeConfig,
)

BULK_MIX = (Priority.NORMAL,) * 5 + (Priority.LOW,) * 3
BULK_PRODUCERS = 4
BATCH = 100
HIGH_PRODUCERS = 2


def slow(_envelope: Envelope) -> None:
    time.sleep(0.001)  # a downstream that takes 1 ms per call, per sender


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def calibrate(path: Path) -> float:
    """Messages per second the runtime drains through `slow` with no pressure."""
    config = RuntimeConfig(pressure=PressurePolicy(capacity=1_000_000))
    with Runtime.open(path, transports={"t": slow}, config=config) as rt:
        count = 4000
        started = time.perf_counter()
        for chunk in range(0, count, 500):
            rt.send_batch(
                [
                    {"transport": "t", "payload": b"x", "key": f"k{i}"}
                    for i in range(chunk, chunk + 500)
                ]
            )
        assert rt.flush(timeout=120)
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--capacity", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        drain = calibrate(Path(tmp) / "calibrate")
        offered = 10 * drain
        print(f"drain without pressure: {drain:,.0f} msg/s; offering {offered:,.0f} msg/s")
        config = RuntimeConfig(pressure=PressurePolicy(capacity=args.capacity))
        accepted: Counter[Priority] = Counter()
        refused: Counter[Priority] = Counter()
        high_latency: list[float] = []
        lock = threading.Lock()
        stop = threading.Event()
        peak_in_flight = 0
        peak_rss = 0
        with Runtime.open(Path(tmp) / "overload", transports={"t": slow}, config=config) as rt:
            base_rss = rss_bytes()

            def count(priority: Priority, n: int, ok: bool, took: float | None) -> None:
                with lock:
                    (accepted if ok else refused)[priority] += n
                    if took is not None:
                        high_latency.append(took)

            def bulk(worker: int) -> None:
                """NORMAL and LOW in batches, paced to this thread's share of `offered`."""
                interval = BULK_PRODUCERS * BATCH / offered
                next_at = time.perf_counter()
                i = 0
                while not stop.is_set():
                    priority = BULK_MIX[i % len(BULK_MIX)]
                    i += 1
                    batch = [
                        {
                            "transport": "t",
                            "payload": b"x" * 100,
                            "key": f"w{worker}-{(i * BATCH + j) % 1000}",
                            "priority": priority,
                        }
                        for j in range(BATCH)
                    ]
                    try:
                        rt.send_batch(batch)
                        count(priority, BATCH, True, None)
                    except Overloaded:
                        count(priority, BATCH, False, None)
                    next_at += interval
                    pause = next_at - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)

            def high(worker: int) -> None:
                """HIGH one `send` at a time, as fast as it is answered."""
                i = 0
                while not stop.is_set():
                    i += 1
                    started = time.perf_counter()
                    try:
                        rt.send("t", b"x" * 100, key=f"h{worker}-{i % 100}", priority=Priority.HIGH)
                        ok = True
                    except Overloaded:
                        ok = False
                    count(Priority.HIGH, 1, ok, time.perf_counter() - started)

            def watch() -> None:
                nonlocal peak_in_flight, peak_rss
                while not stop.is_set():
                    peak_in_flight = max(peak_in_flight, rt.stats().in_flight)
                    peak_rss = max(peak_rss, rss_bytes())
                    stop.wait(0.05)

            threads = [threading.Thread(target=bulk, args=(w,)) for w in range(BULK_PRODUCERS)]
            threads += [threading.Thread(target=high, args=(w,)) for w in range(HIGH_PRODUCERS)]
            threads.append(threading.Thread(target=watch))
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            stop.wait(args.seconds)
            stop.set()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            drain_started = time.perf_counter()
            drained = rt.flush(timeout=600)
            drain_took = time.perf_counter() - drain_started
            stats = rt.stats()
        high_latency.sort()
        total = sum(accepted.values()) + sum(refused.values())
        print(f"overload: {elapsed:.0f} s, {total / elapsed:,.0f} sends/s offered and answered")
        print(f"peak RSS growth: {(peak_rss - base_rss) / 2**20:.1f} MiB (goal <= 64 MiB)")
        print(
            f"peak in flight: {peak_in_flight:,} (capacity {args.capacity:,}, HIGH bound "
            f"{args.capacity + args.capacity // 4:,})"
        )
        print(f"{'priority':<8} {'accepted':>10} {'refused':>10} {'refused %':>10}")
        for priority in Priority:
            a, r = accepted[priority], refused[priority]
            print(f"{priority.name:<8} {a:>10,} {r:>10,} {100 * r / max(1, a + r):>9.1f}%")
        if high_latency:
            p50 = high_latency[len(high_latency) // 2]
            p99 = high_latency[int(len(high_latency) * 0.99)]
            print(f"HIGH send latency: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
        print(
            f"after the load: drained={drained} in {drain_took:.1f} s; delivered "
            f"{stats.delivered:,} of {stats.accepted:,} accepted; refused {stats.refused:,}"
        )


if __name__ == "__main__":
    main()
