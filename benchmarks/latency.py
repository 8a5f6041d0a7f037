"""Delivery against a slow downstream: surelay beside bare concurrency, in one run.

Run: .venv/bin/python benchmarks/latency.py [--messages N] [--latency S] [--skip-http]

Every call takes `--latency` seconds (20 ms). For `--messages` messages (20,000) with
distinct keys, and again with 200 keys (100 messages per key, which surelay delivers in
order, one call of a key at a time):

- a plain callable (`time.sleep`) through surelay with the default config, beside a
  bare `ThreadPoolExecutor(64)` making the same calls (no outbox, no order);
- a coroutine transport (`asyncio.sleep`) through surelay with `concurrency=1000`,
  beside a bare asyncio loop making the same calls under a `Semaphore(1000)` (and, for
  200 keys, also beside the same loop calling each key's messages one after another:
  200 keys can have only 200 calls in flight, whatever the runtime);
- `HttpTransport` (default concurrency, 64 threads) and `AsyncHttpTransport`
  (`concurrency=1000`) POSTing to a real HTTP server in another process that answers
  each request after `--latency` seconds: msg/s and the p99 of send -> call returned.

Then a replay of `--replay` dead letters (10,000, 200 keys) against the same downstream.

surelay's figures are end to end: from the first `send_batch` to the last delivery
recorded (durable outbox write, the call, the durable settle), with a producer that
honours `Overloaded.retry_after` when the default `PressurePolicy(capacity=10_000)` is
reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from surelay import (
    Envelope,
    Overloaded,
    PermanentError,
    PressurePolicy,
    RetryPolicy,
    Runtime,
    RuntimeConfig,
)
from surelay.delivery import is_coroutine_transport
from surelay.transports import AsyncHttpTransport, HttpTransport

ROOT = Path(__file__).resolve().parent.parent
UNBOUNDED = PressurePolicy(capacity=1_000_000)


def keys_for(messages: int, keys: int | None) -> list[str]:
    return [f"k{i}" if keys is None else f"k{i % keys}" for i in range(messages)]


def through_surelay(
    transport: Callable[..., Any], keys: list[str], config: RuntimeConfig
) -> tuple[float, list[float], list[float]]:
    """msg/s end to end; each message's seconds from accepted to call returned; and
    from call returned to receipt resolved (the durable settle)."""
    accepted: dict[str, float] = {}
    returned: dict[str, float] = {}
    resolved: dict[str, float] = {}
    chosen: Any = (Timed if not is_coroutine_transport(transport) else TimedAsync)(
        transport, returned
    )
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": chosen}, config=config) as rt,
    ):
        tracker = rt._parts.tracker  # the receipts' resolution, timed from outside
        complete = tracker.complete

        def timed_complete(ids: Any, outcome: Any) -> int:
            ids = list(ids)
            now = time.perf_counter()
            resolved.update((m, now) for m in ids)
            return complete(ids, outcome)

        tracker.complete = timed_complete  # type: ignore[method-assign]
        start = time.perf_counter()
        for first in range(0, len(keys), 1000):
            batch = [
                {"transport": "t", "payload": b"x" * 100, "key": key}
                for key in keys[first : first + 1000]
            ]
            while True:
                try:
                    receipts = rt.send_batch(batch)
                    break
                except Overloaded as busy:
                    time.sleep(busy.retry_after)
            now = time.perf_counter()
            accepted.update((r.message_id, now) for r in receipts)
        assert rt.flush(600), "not everything was delivered"
        elapsed = time.perf_counter() - start
        assert rt.stats().delivered == len(keys)
    latencies = [returned[m] - accepted[m] for m in accepted]
    settles = [resolved[m] - returned[m] for m in accepted]
    return len(keys) / elapsed, latencies, settles


class Timed:
    """Notes when each call returned; passes the runtime's hooks (`prepare`, `aclose`)
    on to the transport it wraps, so that transport is set up as it would be alone."""

    def __init__(self, transport: Any, returned: dict[str, float]) -> None:
        self.transport = transport
        self.returned = returned
        for hook in ("prepare", "aclose"):
            if hasattr(transport, hook):
                setattr(self, hook, getattr(transport, hook))

    def __call__(self, envelope: Envelope) -> None:
        self.transport(envelope)
        self.returned[envelope.message_id] = time.perf_counter()


class TimedAsync(Timed):
    async def __call__(self, envelope: Envelope) -> None:  # type: ignore[override]
        await self.transport(envelope)
        self.returned[envelope.message_id] = time.perf_counter()


def bare_threads(call: Callable[[], None], messages: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        for future in [pool.submit(call) for _ in range(messages)]:
            future.result()
    return messages / (time.perf_counter() - start)


def bare_asyncio(latency: float, messages: int, keys: int | None = None) -> float:
    """Calls under a Semaphore(1000); with `keys`, each key's calls one after another
    (the most any runtime that keeps per-key order can do)."""

    async def main() -> None:
        limit = asyncio.Semaphore(1000)

        async def one() -> None:
            async with limit:
                await asyncio.sleep(latency)

        async def chain(count: int) -> None:
            for _ in range(count):
                await one()

        if keys is None:
            await asyncio.gather(*(one() for _ in range(messages)))
        else:
            await asyncio.gather(*(chain(messages // keys) for _ in range(keys)))

    start = time.perf_counter()
    asyncio.run(main())
    return messages / (time.perf_counter() - start)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000


def replay(records: int, latency: float) -> tuple[float, float]:
    """Dead-letter `records` messages (200 keys), then replay them all against the
    downstream at `latency` per call: records/s, and one worker calling one record at
    a time per replay partition for comparison (what replay did before the engine)."""
    healthy = threading.Event()

    def downstream(_envelope: Envelope) -> None:
        if not healthy.is_set():
            raise PermanentError("down")
        time.sleep(latency)

    config = RuntimeConfig(retry=RetryPolicy(max_attempts=1), pressure=UNBOUNDED)
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": downstream}, config=config) as rt,
    ):
        keys = keys_for(records, 200)
        for first in range(0, records, 1000):
            rt.send_batch(
                [{"transport": "t", "payload": b"x", "key": k} for k in keys[first : first + 1000]]
            )
        assert rt.flush(300)
        healthy.set()
        start = time.perf_counter()
        report = rt.dead_letters.replay(timeout=600)
        elapsed = time.perf_counter() - start
        assert report.replayed == records, report
    return records / elapsed, config.replay_partitions / latency


class Server:
    """tests/transports/http_server.py in a process of its own."""

    def __init__(self, latency: float) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "transports" / "http_server.py"),
                "--delay",
                str(latency),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self._process.stdout.readline())}/hook"

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--replay", type=int, default=10_000, help="dead letters to replay")
    parser.add_argument("--skip-http", action="store_true")
    arguments = parser.parse_args()
    n, latency = arguments.messages, arguments.latency

    def sleep_call(_envelope: Envelope | None = None) -> None:
        time.sleep(latency)

    async def async_sleep(_envelope: Envelope) -> None:
        await asyncio.sleep(latency)

    print(f"{n} messages, {latency * 1000:.0f} ms per call")
    print("p99: accepted -> call returned; settle: call returned -> receipt resolved")
    print(f"{'pipeline':66} {'msg/s':>8} {'share':>6} {'p99 ms':>7} {'settle p50/p99 ms':>18}")

    def row(
        name: str,
        rate: float,
        bare: float | None = None,
        lat: list[float] | None = None,
        settle: list[float] | None = None,
    ) -> None:
        share = f"{rate / bare:.0%}" if bare else ""
        tail = f"{p99(lat):.0f}" if lat else ""
        lag = f"{statistics.median(settle) * 1000:.1f} / {p99(settle):.1f}" if settle else ""
        print(f"{name:66} {rate:>8,.0f} {share:>6} {tail:>7} {lag:>18}", flush=True)

    bare_sync = bare_threads(sleep_call, n)
    row("bare ThreadPoolExecutor(64)", bare_sync)
    bare_async = bare_asyncio(latency, n)
    row("bare asyncio, Semaphore(1000)", bare_async)
    bare_chains = bare_asyncio(latency, n, keys=200)
    row("bare asyncio, Semaphore(1000), 200 keys one call each at a time", bare_chains)
    for keys, label in ((None, "distinct keys"), (200, "200 keys")):
        ordered = keys_for(n, keys)
        rate, lat, lag = through_surelay(sleep_call, ordered, RuntimeConfig())
        row(f"surelay, sync transport, default config, {label}", rate, bare_sync, lat, lag)
        rate, lat, lag = through_surelay(async_sleep, ordered, RuntimeConfig(concurrency=1000))
        row(f"surelay, async transport, concurrency=1000, {label}", rate, bare_async, lat, lag)
        if keys is not None:
            row("  the same, beside the bare loop keeping per-key order", rate, bare_chains)
    rate, one_at_a_time = replay(arguments.replay, latency)
    row(f"surelay replay of {arguments.replay} dead letters, 200 keys", rate, one_at_a_time)
    print(f"  (share: beside {one_at_a_time:.0f}/s, one call at a time per replay partition)")
    if arguments.skip_http:
        return
    server = Server(latency)
    try:
        ordered = keys_for(n, None)
        rate, lat, lag = through_surelay(HttpTransport(server.url), ordered, RuntimeConfig())
        row("surelay HttpTransport, default config (64 threads)", rate, None, lat, lag)
        rate, lat, lag = through_surelay(
            AsyncHttpTransport(server.url), ordered, RuntimeConfig(concurrency=1000)
        )
        row("surelay AsyncHttpTransport, concurrency=1000", rate, None, lat, lag)
    finally:
        server.stop()


if __name__ == "__main__":
    logging.getLogger("surelay").setLevel(logging.ERROR)  # pressure changes are expected
    main()
