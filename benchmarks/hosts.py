"""Sending from a host's event loop, beside threads and the storage layer, in one run.

Run: .venv/bin/python benchmarks/hosts.py [--messages N]

`asend`s made in one turn of the event loop share one outbox write (coroutines woken by
one group commit send again in the same turn), so the coroutines can pass the storage
layer's one-write-per-message figure below. Threads' `send`s made while the writer is
busy join one write operation too (`surelay.storage.joining`), but each thread has one
message in flight at most, so 16 threads give groups of at most 16, and each delivery's
record is a second write to the same store.

- 200 coroutines on one event loop, each `await rt.asend(...)` in a loop (AT_LEAST_ONCE,
  a no-op transport): msg/s, and the event loop's lag meanwhile (a 1 ms ticker: how late
  each tick ran; p50/p99/max);
- 16 threads each calling `rt.send(...)` in a loop: msg/s;
- the storage layer's own group commit: 16 threads each calling `Store.enqueue(...)`
  and waiting for its future (no runtime): msg/s, the most any sender could get.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

from surelay import Envelope, PressurePolicy, Runtime, RuntimeConfig
from surelay.storage import Store

CONFIG = RuntimeConfig(pressure=PressurePolicy(capacity=1_000_000))


def noop(_envelope: Envelope) -> None:
    pass


def coroutines(messages: int, senders: int = 200) -> tuple[float, list[float]]:
    """msg/s from `senders` coroutines, and the ticker's lateness (seconds) meanwhile."""
    lags: list[float] = []

    async def main(rt: Runtime) -> float:
        done = asyncio.Event()
        each = messages // senders

        async def sender(n: int) -> None:
            for i in range(each):
                await rt.asend("t", b"x" * 100, key=f"k{n}-{i % 8}")

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                planned = loop.time() + 0.001
                await asyncio.sleep(0.001)
                lags.append(max(0.0, loop.time() - planned))

        tick = asyncio.create_task(ticker())
        start = time.perf_counter()
        await asyncio.gather(*(sender(n) for n in range(senders)))
        elapsed = time.perf_counter() - start
        done.set()
        await tick
        return each * senders / elapsed

    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": noop}, config=CONFIG) as rt,
    ):
        rate = asyncio.run(main(rt))
    return rate, lags


def in_threads(target: Callable[[int], None], count: int) -> float:
    """Seconds `count` threads take to run `target(n)` each, started together."""
    workers = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def threads_send(messages: int, count: int = 16) -> float:
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": noop}, config=CONFIG) as rt,
    ):
        each = messages // count

        def sender(n: int) -> None:
            for i in range(each):
                rt.send("t", b"x" * 100, key=f"k{n}-{i % 8}")

        return each * count / in_threads(sender, count)


def store_group_commit(messages: int, count: int = 16) -> float:
    with tempfile.TemporaryDirectory() as path, Store.open(path) as store:
        each = messages // count

        def writer(n: int) -> None:
            for i in range(each):
                envelope = Envelope(f"m{n}-{i}", "t", b"x" * 100, key=f"k{n}-{i % 8}")
                store.enqueue([(envelope, 0)]).result()

        return each * count / in_threads(writer, count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    n = parser.parse_args().messages
    floor = store_group_commit(n)
    threaded = threads_send(n)
    # five times as many: the coroutines are fast, and the lag needs ticks to measure
    rate, lags = coroutines(5 * n)
    lags_ms = sorted(lag * 1000 for lag in lags)
    p99 = statistics.quantiles(lags_ms, n=100)[98]
    print(
        f"{n} messages of 100 bytes ({5 * n} for the coroutines), AT_LEAST_ONCE, a no-op transport"
    )
    print(f"{'sender':60} {'msg/s':>8} {'share':>7}")
    print(f"{'storage group commit alone, 16 threads x Store.enqueue':60} {floor:>8,.0f}")
    print(f"{'surelay, 16 threads x send()':60} {threaded:>8,.0f} {threaded / floor:>7.0%}")
    print(
        f"{'surelay, 200 coroutines x await asend() on one loop':60} {rate:>8,.0f} "
        f"{rate / floor:>7.0%}"
    )
    print(f"  against 16 threads: {rate / threaded:.0%}")
    print(
        f"event-loop lag while the coroutines send (1 ms ticker, {len(lags_ms)} ticks): "
        f"p50 {statistics.median(lags_ms):.2f} ms, p99 {p99:.2f} ms, max {lags_ms[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
