"""Supervision figures: Ref.tell throughput beside bare pykka, and restart latency.

Run: .venv/bin/python benchmarks/supervision.py [--messages N] [--crashes N]

Throughput is end to end: N tells, then one ask that returns once all N were handled.
Restart latency is from the moment the crashing handler raises to the moment the new
incarnation starts handling the next message (p50 / p99 over --crashes crashes).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import pykka

from surelay.supervision import Actor, ChildSpec, Ref, Supervisor


class _Counting:
    """The same handler for both actor kinds, so only the plumbing differs."""

    count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "count":
            return self.count
        self.count += 1
        return None


class PykkaCounter(_Counting, pykka.ThreadingActor):
    pass


class Counter(_Counting, Actor):
    pass


class Crasher(Actor):
    crashed_at = 0.0

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            Crasher.crashed_at = time.perf_counter()
            raise RuntimeError("on purpose")
        return time.perf_counter() - Crasher.crashed_at


def tell_rate(ref: Any, n: int) -> float:
    before = ref.ask("count")
    start = time.perf_counter()
    for _ in range(n):
        ref.tell("inc")
    handled = ref.ask("count") - before  # FIFO: every tell was handled by now
    elapsed = time.perf_counter() - start
    assert handled == n, f"only {handled} of {n} tells were handled"
    return n / elapsed


def throughput(n: int, rounds: int) -> tuple[float, float]:
    bare = PykkaCounter.start()
    sup = Supervisor.start([ChildSpec("counter", Counter)])
    ref: Ref = sup.child("counter")
    tell_rate(bare, n // 10)  # warm up both
    tell_rate(ref, n // 10)
    bare_rates, ref_rates = [], []
    for _ in range(rounds):  # interleaved, so machine noise hits both alike
        bare_rates.append(tell_rate(bare, n))
        ref_rates.append(tell_rate(ref, n))
    bare.stop()
    sup.stop()
    return statistics.median(bare_rates), statistics.median(ref_rates)


def restart_latency(crashes: int) -> list[float]:
    sup = Supervisor.start([ChildSpec("crasher", Crasher)], intensity=10 * crashes, period=1.0)
    ref = sup.child("crasher")
    ref.ask("warm up")
    latencies = []
    for _ in range(crashes):
        ref.tell("crash")
        latencies.append(ref.ask("ping"))
    sup.stop()
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--crashes", type=int, default=1000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # 1000 crash tracebacks would measure the logger

    bare, ours = throughput(args.messages, args.rounds)
    print(f"tell throughput, {args.messages} msgs, median of {args.rounds} rounds")
    print(f"  pykka ActorRef.tell     {bare:>12,.0f} msg/s")
    print(f"  surelay Ref.tell        {ours:>12,.0f} msg/s   ({ours / bare:.0%} of pykka)")

    lat = restart_latency(args.crashes)
    p50 = lat[len(lat) // 2] * 1e3
    p99 = lat[int(len(lat) * 0.99) - 1] * 1e3
    print(f"restart latency, crash -> next message handled, {args.crashes} crashes")
    print(f"  p50 {p50:.3f} ms   p99 {p99:.3f} ms   max {lat[-1] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
