"""Delivery throughput against a naive ceiling written here.

Run: .venv/bin/python benchmarks/throughput.py [--messages N] [--runs R]

The naive ceiling is the least a durable pipeline must do: one pykka actor that packs
each message with msgpack, puts batches of 256 into LMDB with a synced commit, calls a
no-op deliver for each, and deletes the batch in a second synced commit. surelay does
that plus validation, receipts, per-key ordering, dedup records and retry bookkeeping.

Figures, in one run:
- durable `send_batch(1000)` to a no-op transport, no tracer provider, vs the ceiling;
- 16 threads x `send()`: messages/s and p50/p99 `send` latency;
- BEST_EFFORT `send_batch(1000)`;
- with the OpenTelemetry SDK (ALWAYS_ON, BatchSpanProcessor, an exporter that drops
  everything): surelay vs the ceiling with one span per message, and vs the ceiling with
  the two spans surelay makes per message (`surelay.send`, then `surelay.deliver` as its
  child through the `traceparent` header); then with the sampler a busy host would use,
  `ParentBased(TraceIdRatioBased(0.01))` (against the ceiling without spans);
- the floor: the storage work surelay's contract itself asks for (an `Envelope` and an
  id per message, the outbox entry, stored by partition and sequence, with its id-index
  entry, then the dedup record with its expiry index and the outbox removal, each batch
  in one synced commit), done in one thread through surelay's storage layer with no runtime at all;
  and the raw floor, the same LMDB writes with keys and values built inline. No runtime
  of this contract can beat the raw floor; the time the ceiling leaves beyond it is all
  a runtime could spend on validation, receipts, ordering, actors and threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import lmdb
import msgpack
import pykka
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

from surelay import Envelope, Guarantee, PressurePolicy, Priority, Runtime, RuntimeConfig
from surelay.storage import Store, new_id
from surelay.telemetry import context_from, traceparent_of

BATCH = 256


class NaivePipeline(pykka.ThreadingActor):
    def __init__(self, path: str, span: Callable[[], object] | SameSpans | None) -> None:
        super().__init__()
        self.env = lmdb.open(path, map_size=1 << 30, sync=True)
        self.span = span
        self.next = 0

    def on_receive(self, message: object) -> object:
        if message == "done":
            return self.next
        assert isinstance(message, list)
        keys = []
        with self.env.begin(write=True) as txn:
            for item in message:
                if isinstance(self.span, SameSpans):
                    self.span.sent(item)
                self.next += 1
                key = self.next.to_bytes(8, "big")
                txn.put(key, msgpack.packb(item))
                keys.append(key)
        for item in message:
            if isinstance(self.span, SameSpans):
                self.span.delivered(item)
            elif self.span is not None:
                with self.span():  # type: ignore[attr-defined]
                    deliver(item)
            else:
                deliver(item)
        with self.env.begin(write=True) as txn:
            for key in keys:
                txn.delete(key)
        return None

    def on_stop(self) -> None:
        self.env.close()


def deliver(_item: object) -> None:
    """The no-op downstream."""


class SameSpans:
    """The spans surelay makes per message, for the naive pipeline: a send span whose
    `traceparent` travels with the message, and a deliver span that is its child."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def sent(self, item: dict[str, object]) -> None:
        span = self.tracer.start_span("send", attributes={"id": "m", "transport": "t", "key": "k"})
        item["headers"] = {"traceparent": traceparent_of(span)}
        span.end()

    def delivered(self, item: dict[str, object]) -> None:
        headers = item["headers"]
        assert isinstance(headers, dict)
        attributes: dict[str, str | int] = {"id": "m", "transport": "t", "key": "k", "attempt": 1}
        span = self.tracer.start_span(
            "deliver", context=context_from(headers), attributes=attributes
        )
        deliver(item)
        span.set_attribute("outcome", "delivered")
        span.end()


def naive(messages: int, span: Callable[[], object] | SameSpans | None = None) -> float:
    with tempfile.TemporaryDirectory() as path:
        actor = NaivePipeline.start(path, span)
        item = {"transport": "t", "payload": b"x" * 100, "key": "k"}
        start = time.perf_counter()
        for _ in range(0, messages, BATCH):
            actor.tell([dict(item) for _ in range(BATCH)])
        actor.ask("done")
        elapsed = time.perf_counter() - start
        actor.stop()
    return messages / elapsed


KEYS = [f"k{i % 64}" for i in range(1000)]


def thousand_envelopes(now: float) -> list[Envelope]:
    """What `send_batch` makes of the benchmark's batch: 1000 envelopes, 64 keys."""
    return [
        Envelope(m, "t", b"x" * 100, k, m, Priority.NORMAL, {}, 1, now)
        for m, k in zip(new_id.many(1000, now), KEYS, strict=True)
    ]


def floor(messages: int) -> float:
    """The contract's own storage work, in one thread with nothing else (see the module
    docstring): the most any surelay pipeline could deliver per second."""
    with tempfile.TemporaryDirectory() as path, Store.open(path, map_size=1 << 30) as store:
        start = time.perf_counter()
        for _ in range(messages // 1000):
            now = time.time()
            envelopes = thousand_envelopes(now)
            with store.env.write() as txn:
                entries = store.outbox.enqueue_many(
                    txn, [(e, i % 4) for i, e in enumerate(envelopes)], due_at=now
                )
            for entry in entries:
                deliver(entry.envelope)
            with store.env.write() as txn:
                store.dedup.put_many(
                    txn,
                    [e.envelope.idempotency_key for e in entries],
                    delivered_at=now,
                    expires_at=now + 86_400,
                )
                store.outbox.remove_entries(txn, entries)
        elapsed = time.perf_counter() - start
    return messages // 1000 * 1000 / elapsed


def fields(e: Envelope) -> list[object]:
    return [e.message_id, e.transport, e.payload, e.key, e.idempotency_key, e.priority.value]


def raw_floor(messages: int) -> float:
    """`floor` without surelay's storage layer: the same Envelopes, msgpack records and
    LMDB writes (the outbox entry and its id-index entry, 2 dedup entries, 2 deletes per
    message), with keys and values built inline and no record objects. The gap to `floor`
    is what the storage layer's own Python costs; what is left of the ceiling's time is
    all the runtime could spend on everything else."""
    with tempfile.TemporaryDirectory() as path:
        env = lmdb.open(path, max_dbs=8, map_size=1 << 30, sync=True)
        names = (b"outbox", b"ids", b"dedup", b"dedup_exp")
        outbox, ids, dedup, dedup_exp = (env.open_db(n) for n in names)
        seq = 0
        start = time.perf_counter()
        for _ in range(messages // 1000):
            now = time.time()
            envelopes = thousand_envelopes(now)
            seqs = [b"\0\0" + (seq + i).to_bytes(8, "big") for i in range(1, 1001)]
            seq += 1000
            at = int(now * 1e6).to_bytes(8, "big")
            with env.begin(write=True) as txn:
                records = [
                    (q, msgpack.packb([1, q, [*fields(e), {}, 1, now], now, 0]))
                    for q, e in zip(seqs, envelopes, strict=True)
                ]
                txn.cursor(db=outbox).putmulti(records)
                txn.cursor(db=ids).putmulti(
                    [(e.message_id.encode(), q) for q, e in zip(seqs, envelopes, strict=True)]
                )
            for e in envelopes:
                deliver(e)
            with env.begin(write=True) as txn:
                done = [e.message_id.encode() for e in envelopes]
                txn.cursor(db=dedup).putmulti([(k, b"delivered") for k in done])
                txn.cursor(db=dedup_exp).putmulti([(at + k, b"") for k in done])
                delete = txn.delete
                for k, q in zip(done, seqs, strict=True):
                    delete(k, b"", ids)
                    delete(q, b"", outbox)
        elapsed = time.perf_counter() - start
        env.close()
    return messages // 1000 * 1000 / elapsed


# The producer here may run ahead of delivery; admission control (measured by
# benchmarks/overload.py) would then refuse it. This script measures the pipeline, so its
# capacity bound is out of the way.
UNBOUNDED = PressurePolicy(capacity=10_000_000)


def surelay_batches(messages: int, guarantee: Guarantee = Guarantee.AT_LEAST_ONCE) -> float:
    with tempfile.TemporaryDirectory() as path:
        config = RuntimeConfig(guarantee=guarantee, pressure=UNBOUNDED)
        with Runtime.open(path, transports={"t": noop}, config=config) as rt:
            batch = [
                {"transport": "t", "payload": b"x" * 100, "key": f"k{i % 64}"} for i in range(1000)
            ]
            start = time.perf_counter()
            for _ in range(messages // 1000):
                rt.send_batch(batch)
            assert rt.flush(300)
            elapsed = time.perf_counter() - start
            assert rt.stats().delivered == messages // 1000 * 1000
    return messages // 1000 * 1000 / elapsed


def noop(_envelope: Envelope) -> None:
    pass


def threads_send(messages: int, threads: int = 16) -> tuple[float, float, float]:
    config = RuntimeConfig(pressure=UNBOUNDED)
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"t": noop}, config=config) as rt,
    ):
        per_thread = messages // threads
        latencies: list[list[float]] = [[] for _ in range(threads)]

        def worker(n: int) -> None:
            own = latencies[n]
            for i in range(per_thread):
                t0 = time.perf_counter()
                rt.send("t", b"x" * 100, key=f"{n}-{i % 8}")
                own.append(time.perf_counter() - t0)

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert rt.flush(300)
        elapsed = time.perf_counter() - start
        flat = sorted(x for own in latencies for x in own)
    return (
        per_thread * threads / elapsed,
        statistics.median(flat) * 1000,
        flat[int(len(flat) * 0.99)] * 1000,
    )


class Switchable(Sampler):
    """The provider's sampler, switchable within one process (a tracer provider can be
    set only once): ALWAYS_ON, then what a busy production host would use."""

    def __init__(self) -> None:
        self.inner: Sampler = ALWAYS_ON

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return self.inner.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return self.inner.get_description()


SAMPLER = Switchable()
ONE_PERCENT = ParentBased(TraceIdRatioBased(0.01))


def install_sdk() -> tuple[Callable[[], object], SameSpans]:
    class Drop(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=SAMPLER)
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("naive")
    return lambda: tracer.start_as_current_span("deliver"), SameSpans(tracer)


def best(runs: int, measure: Callable[[], float]) -> float:
    """The best of `runs` measurements: the ceiling's fsyncs vary a lot from one run to
    the next on a shared disk, and the best run is the one least disturbed."""
    return max(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3, help="best of this many, per row")
    arguments = parser.parse_args()
    n, runs = arguments.messages, arguments.runs
    ceiling = best(runs, lambda: naive(n))
    least = best(runs, lambda: floor(n))
    least_raw = best(runs, lambda: raw_floor(n))
    batched = best(runs, lambda: surelay_batches(n))
    rate16, p50, p99 = threads_send(min(n, 20_000))
    best_effort = best(runs, lambda: surelay_batches(n, Guarantee.BEST_EFFORT))
    span, same_spans = install_sdk()
    ceiling_span = best(runs, lambda: naive(n, span))
    ceiling_same = best(runs, lambda: naive(n, same_spans))
    traced = best(runs, lambda: surelay_batches(n))
    SAMPLER.inner = ONE_PERCENT
    sampled = best(runs, lambda: surelay_batches(n))
    rows = [
        ("naive ceiling (msgpack + LMDB 256/commit + no-op + delete)", ceiling, ""),
        ("floor, raw: the same LMDB writes with keys built inline", least_raw, least_raw / ceiling),
        ("floor: the contract's storage work, one thread, no runtime", least, least / ceiling),
        ("surelay send_batch(1000), AT_LEAST_ONCE, no tracing", batched, batched / ceiling),
        ("surelay 16 threads x send(), AT_LEAST_ONCE", rate16, ""),
        ("surelay send_batch(1000), BEST_EFFORT", best_effort, best_effort / ceiling),
        ("naive ceiling + one span per message (SDK)", ceiling_span, ""),
        ("naive ceiling + surelay's two spans per message (SDK)", ceiling_same, ""),
        ("surelay send_batch(1000), SDK ALWAYS_ON", traced, traced / ceiling_span),
        ("  the same, against the ceiling with the same two spans", traced, traced / ceiling_same),
        ("surelay send_batch(1000), SDK sampling 1% (ParentBased)", sampled, sampled / ceiling),
    ]
    print(f"messages per run: {n}; each row the best of {runs} runs")
    print(f"{'pipeline':62} {'msg/s':>10} {'of ceiling':>10}")
    for name, rate, share in rows:
        shown = share if isinstance(share, str) else f"{share:.0%}"
        print(f"{name:62} {rate:>10,.0f} {shown:>10}")
    print(f"16 threads x send(): latency p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
