"""Time and flow control: timer accuracy, rate-limit accuracy and overhead, memory.

Run: .venv/bin/python benchmarks/flow.py [--quick]

- Timers: `--scheduled` messages (100,000) scheduled 1 to 60 s ahead (evenly spread);
  how late each fires (its call's start minus its due time): p50, p99, max; none early.
  Beside it, the bare baseline: `threading.Timer`-free sleeping to the same due times in
  one thread (how late a plain `time.sleep` wakes on this machine).
- Rates: a `Rate(100, 1.0)` transport measured over 10 s, with one process and with three
  processes on one directory (calls per 10 s, beside the limit).
- Overhead: `benchmarks/latency.py`'s sync row (20,000 messages, 20 ms calls, default
  config) with and without a rate limit that never makes a call wait.
- Memory: RSS of a runtime holding one million messages scheduled an hour ahead, and of
  `Rate(..., by=...)` over 100,000 tenants, each beside the same runtime without them.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import keys_for, through_surelay  # (a script beside this one)
from surelay import Envelope, Rate, Runtime, RuntimeConfig

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(kind: str = "RssAnon") -> float:
    """Resident memory (MiB): `RssAnon`, what the process holds itself, or `RssFile`,
    pages of mapped files (LMDB's data.mdb: page cache, given back under pressure)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {kind} in /proc/self/status")


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def timers(count: int, spread: float) -> None:
    fired: dict[str, float] = {}
    due: dict[str, float] = {}

    def record(envelope: Envelope) -> None:
        fired[envelope.message_id] = time.time()

    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": record}, config=RuntimeConfig()) as rt,
    ):
        start = time.time() + 1.0
        for first in range(0, count, 1000):
            batch = []
            for i in range(first, min(count, first + 1000)):
                batch.append(
                    {"transport": "t", "payload": b"x", "not_before": start + spread * i / count}
                )
            for receipt, message in zip(rt.send_batch(batch), batch, strict=True):
                due[receipt.message_id] = float(message["not_before"])  # type: ignore[arg-type]
        scheduled_by = time.time() - start + 1.0
        deadline = time.time() + spread + 60
        while len(fired) < count and time.time() < deadline:
            time.sleep(0.5)
    late = [(fired[m] - due[m]) * 1000 for m in due if m in fired]
    early = sum(1 for v in late if v < 0)
    print(
        f"timers: {count:,} scheduled over {spread:.0f}s (sent in {scheduled_by:.1f}s), "
        f"{len(late):,} fired, {early} early: late p50 {quantile(late, 50):.1f} ms, "
        f"p99 {quantile(late, 99):.1f} ms, max {max(late):.1f} ms"
    )
    bare = []
    for i in range(200):
        target = time.time() + 0.005 + (i % 7) * 0.001
        time.sleep(max(0.0, target - time.time()))
        bare.append((time.time() - target) * 1000)
    print(
        f"  bare: time.sleep to a due time wakes late p50 {quantile(bare, 50):.2f} ms, "
        f"p99 {quantile(bare, 99):.2f} ms"
    )


def rate_one_process(per_second: int, seconds: float) -> None:
    calls: list[float] = []
    lock = threading.Lock()

    def record(_envelope: Envelope) -> None:
        with lock:
            calls.append(time.time())

    config = RuntimeConfig(rate_limits={"t": Rate(per_second, 1.0)})
    total = int(per_second * (seconds + 2))
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": record}, config=config) as rt,
    ):
        for first in range(0, total, 1000):
            rt.send_batch([{"transport": "t", "payload": b"x"}] * min(1000, total - first))
        deadline = time.time() + seconds + 30
        while len(calls) < per_second * seconds + 1 and time.time() < deadline:
            time.sleep(0.2)
    times = sorted(calls)
    within = sum(1 for t in times if times[0] <= t < times[0] + seconds)
    limit = per_second * seconds
    print(
        f"rate, one process: Rate({per_second}, 1.0): {within} calls in {seconds:.0f}s "
        f"(limit {limit:.0f}, {within / limit - 1:+.1%})"
    )


def rate_three_processes(per_second: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as work:
        data, calls = Path(work) / "data", Path(work) / "calls"
        Runtime.open(data, transports={}).close()
        start_at = time.time() + 3.0
        each = int(per_second * (seconds + 2) / 3)
        hosts = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.rate_host",
                    str(data),
                    str(calls),
                    str(each),
                    str(per_second),
                    repr(start_at),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
            )
            for _ in range(3)
        ]
        for host in hosts:
            host.wait(seconds * 10 + 120)
        times = sorted(float(line) for line in calls.read_text().split())
    within = sum(1 for t in times if times[0] <= t < times[0] + seconds)
    limit = per_second * seconds
    print(
        f"rate, three processes on one directory: Rate({per_second}, 1.0): {within} calls "
        f"in {seconds:.0f}s (limit {limit:.0f}, {within / limit - 1:+.1%})"
    )


def overhead(messages: int, latency: float) -> None:
    def sleep_call(_envelope: Envelope) -> None:
        time.sleep(latency)

    keys = keys_for(messages, None)
    bare, _, _ = through_surelay(sleep_call, keys, RuntimeConfig())
    limited, _, _ = through_surelay(
        sleep_call, keys, RuntimeConfig(rate_limits={"t": Rate(1_000_000, 1.0)})
    )
    print(
        f"overhead: latency.py's sync row ({messages:,} messages, {latency * 1000:.0f} ms "
        f"calls): {bare:,.0f} msg/s without rate_limits, {limited:,.0f} msg/s with a "
        f"rate that never waits ({limited / bare - 1:+.1%})"
    )


def scheduled_memory(count: int) -> None:
    def nothing(_envelope: Envelope) -> None:
        return None

    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": nothing}, config=RuntimeConfig(map_size=4 << 30)) as rt,
    ):
        batch = [{"transport": "t", "payload": b"x" * 100, "delay": 3600.0}] * 1000
        rt.send_batch(batch)
        before, file_before = rss_mib(), rss_mib("RssFile")
        for _ in range(count // 1000 - 1):
            rt.send_batch(batch)
        after, file_after = rss_mib(), rss_mib("RssFile")
        scheduled = rt.stats().scheduled
    print(
        f"memory: {scheduled:,} messages scheduled an hour ahead: anonymous RSS {after:.0f} "
        f"MiB, {after - before:+.1f} MiB beside the runtime holding 1,000 of them (mapped "
        f"data.mdb pages resident: {file_after - file_before:+.0f} MiB, page cache)"
    )


def tenants_memory(tenants: int) -> None:
    def nothing(_envelope: Envelope) -> None:
        return None

    def run(limits: dict[str, Rate]) -> float:
        with (
            tempfile.TemporaryDirectory() as path,
            Runtime.open(
                path, transports={"t": nothing}, config=RuntimeConfig(rate_limits=limits)
            ) as rt,
        ):
            before = rss_mib()  # (anonymous: LMDB's mapped pages are page cache)
            for first in range(0, tenants, 1000):
                receipts = rt.send_batch(
                    [
                        {"transport": "t", "payload": b"x", "headers": {"tenant": f"t{i}"}}
                        for i in range(first, first + 1000)
                    ]
                )
                for receipt in receipts:
                    receipt.wait(30)
            assert rt.flush(60)
            return rss_mib() - before

    without = run({})
    with_rates = run({"t": Rate(10, 1.0, by="tenant")})
    print(
        f"memory: {tenants:,} tenants with Rate(10, 1.0, by='tenant'): RSS grew "
        f"{with_rates:+.1f} MiB, beside {without:+.1f} MiB without rate limits "
        f"({with_rates - without:+.1f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller figures, a minute or so")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    quick = args.quick
    timers(10_000 if quick else 100_000, 10.0 if quick else 60.0)
    rate_one_process(100, 3.0 if quick else 10.0)
    rate_three_processes(100, 3.0 if quick else 10.0)
    overhead(5_000 if quick else 20_000, 0.02)
    scheduled_memory(100_000 if quick else 1_000_000)
    tenants_memory(10_000 if quick else 100_000)


if __name__ == "__main__":
    main()
