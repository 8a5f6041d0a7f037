"""`surelay demo`: a host sending to a flaky downstream, shown live.

A few thousand messages with keys and priorities go to a simulated downstream with a
real service's latency (20 ms and up, spikes of 300 ms) that fails transiently and
rejects some messages for good; midway one Sender is crashed on purpose. The runtime
keeps up to 64 calls in flight (one per key), so it still ends in seconds. A live
progress bar with the calls in flight, then a summary table; every span goes to
`traces.jsonl` in the data directory. Re-runnable: each run uses fresh message ids and
idempotency keys, and finishes what an interrupted earlier run left in the outbox.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from surelay.config import BreakerPolicy, RetryPolicy, RuntimeConfig
from surelay.envelope import Envelope, Priority
from surelay.errors import PermanentError, TransientError
from surelay.runtime import Runtime

__all__ = ["DemoCrash", "DemoResult", "FlakyDownstream", "run_demo"]


class DemoCrash(BaseException):
    """Raised once by the downstream to crash a Sender (not an Exception, so it is not
    a delivery failure: it escapes into the sender, as a bug would)."""


@dataclass
class FlakyDownstream:
    """The simulated receiver: 20 ms plus an exponential tail (mean 20 ms) per call, 2%
    spikes of 300 ms, 10% transient failures, every 97th message rejected for good, and
    one crash at `crash_at` deliveries."""

    seed: int = 7
    crash_at: int = 1500
    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _crashed: bool = False

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, envelope: Envelope) -> None:
        with self._lock:
            self.calls += 1
            roll = self._rng.random()
            latency = 0.3 if roll < 0.02 else min(0.3, 0.02 + self._rng.expovariate(50.0))
            crash = not self._crashed and self.calls >= self.crash_at
            self._crashed = self._crashed or crash
        if crash:
            raise DemoCrash("the demo crashes this sender on purpose")
        time.sleep(latency)  # the downstream at work
        if envelope.payload.endswith(b"#reject"):
            raise PermanentError("422: the downstream rejects this message")
        if 0.02 <= roll < 0.12:
            raise TransientError("503: downstream busy")
        with self._lock:
            self.latencies.append(time.time() - envelope.created_at)


@dataclass(frozen=True)
class DemoResult:
    accepted: int
    delivered: int
    retried: int
    dead_lettered: dict[str, int]
    duplicates: int
    restarts: int
    p50_ms: float
    p99_ms: float
    seconds: float
    traces: Path
    flushed: bool
    peak_calls: int


def _messages(count: int, run: str) -> list[dict[str, Any]]:
    rng = random.Random(11)
    out: list[dict[str, Any]] = []
    for i in range(count):
        roll = rng.random()
        priority = Priority.HIGH if roll < 0.1 else Priority.LOW if roll < 0.3 else Priority.NORMAL
        payload = f"order {i}".encode() + (b"#reject" if i % 97 == 96 else b"")
        # Every 50th message is a retransmission of the previous one (same key, same
        # idempotency key): the runtime suppresses it as a duplicate.
        original = i - 1 if i % 50 == 49 else i
        idem = f"{run}-{original}"
        out.append(
            {
                "transport": "orders",
                "payload": payload,
                "key": f"customer-{original % 200}",
                "priority": priority,
                "idempotency_key": idem,
            }
        )
    return out


def _install_tracing(traces: Path) -> TracerProvider:
    """The OpenTelemetry SDK, exporting every span as one JSON line to `traces`."""

    class JsonLines(SpanExporter):
        """Opens its file at the first span, so the data directory is still empty when
        the runtime first opens it (surelay refuses a directory holding other files)."""

        def __init__(self, path: Path) -> None:
            self._path = path
            self._file: TextIO | None = None

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self._file is None:
                self._file = self._path.open("a", encoding="utf-8")
            for span in spans:
                self._file.write(span.to_json(indent=None) + "\n")
            self._file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            if self._file is not None:
                self._file.close()

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(JsonLines(traces), max_queue_size=65536))
    trace.set_tracer_provider(provider)
    return provider


def run_demo(
    path: str | Path = "surelay-data", messages: int = 3000, *, show: bool = True
) -> DemoResult:
    """Run the demo on `path`; returns its figures (and prints them if `show`)."""
    if messages < 2:
        raise ValueError(f"messages must be >= 2, got {messages}")
    data = Path(path)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    traces = data / "traces.jsonl"
    provider = _install_tracing(traces)
    # The crash is on purpose: its traceback goes to a log file, not over the display.
    log = logging.getLogger("surelay")
    handler = logging.FileHandler(data / "demo.log", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    console = Console(quiet=not show)
    downstream = FlakyDownstream(crash_at=max(1, messages // 2))
    config = RuntimeConfig(
        retry=RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.4, jitter="full"),
        # The default window rides out the downstream's 10% failures; were it to open,
        # it would probe again after a second.
        breaker=BreakerPolicy(open_for=1.0),
        partitions=4,
    )
    run = uuid.uuid4().hex[:8]
    batch = _messages(messages, run)
    started = time.time()
    with Runtime.open(data, transports={"orders": downstream}, config=config) as rt:
        recovered = rt.stats().in_flight
        if recovered:
            console.print(f"finishing {recovered} message(s) an earlier run left in the outbox")
        peak_calls = _send_with_progress(rt, batch, console, started)
        flushed = rt.flush(5)
        stats = rt.stats()
        senders = rt.supervisor.child("senders")
        restarts = sum(c.restarts for c in senders.which_children())  # type: ignore[attr-defined]
        by_reason: dict[str, int] = {}
        for letter in rt.dead_letters.list(limit=10_000):
            if letter.failed_at >= started:
                by_reason[letter.reason_class] = by_reason.get(letter.reason_class, 0) + 1
    provider.shutdown()
    log.removeHandler(handler)
    log.propagate = True
    handler.close()
    latencies = sorted(downstream.latencies) or [0.0]
    result = DemoResult(
        accepted=stats.accepted,
        delivered=stats.delivered,
        retried=stats.retried,
        dead_lettered=by_reason,
        duplicates=stats.duplicates,
        restarts=restarts,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        seconds=time.time() - started,
        traces=traces,
        flushed=flushed,
        peak_calls=peak_calls,
    )
    if show:
        _print_summary(console, result)
    return result


def _send_with_progress(
    rt: Runtime, batch: list[dict[str, Any]], console: Console, started: float
) -> int:
    """Send from a host thread while a live bar shows what has ended; returns the most
    calls seen in flight at once."""
    total = len(batch)
    peak = 0

    def send_all() -> None:
        for start in range(0, total, 100):
            rt.send_batch(batch[start : start + 100])

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("delivering", total=total, detail="")
        host = threading.Thread(target=send_all, name="demo-host")
        host.start()
        while True:
            s = rt.stats()
            calls = sum(s.calls_in_flight.values())
            peak = max(peak, calls)
            progress.update(
                task,
                completed=min(s.delivered + s.dead_lettered + s.duplicates, total),
                detail=f"in flight {calls:>2}  retried {s.retried}  dead {s.dead_lettered}  "
                f"dup {s.duplicates}",
            )
            if (not host.is_alive() and s.in_flight == 0) or time.time() - started > 50:
                break
            threading.Event().wait(0.1)
        host.join()
    return peak


def _print_summary(console: Console, result: DemoResult) -> None:
    table = Table(title="surelay demo", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("accepted", f"{result.accepted:,}")
    table.add_row("delivered", f"{result.delivered:,}")
    table.add_row("retried (attempts scheduled again)", f"{result.retried:,}")
    for reason, count in sorted(result.dead_lettered.items()) or [("-", 0)]:
        table.add_row(f"dead-lettered: {reason}", f"{count:,}")
    table.add_row("duplicates suppressed", f"{result.duplicates:,}")
    table.add_row("sender restarts", f"{result.restarts:,}")
    table.add_row("delivery latency p50", f"{result.p50_ms:.1f} ms")
    table.add_row("delivery latency p99", f"{result.p99_ms:.1f} ms")
    table.add_row("most calls in flight at once", f"{result.peak_calls:,}")
    table.add_row("took", f"{result.seconds:.1f} s")
    console.print(table)
    console.print(f"traces: {result.traces}")
    console.print(f"log (the sender crash is there): {result.traces.parent / 'demo.log'}")
