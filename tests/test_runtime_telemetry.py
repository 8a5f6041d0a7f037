"""Spans and metrics, read back with the OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from surelay import (
    Envelope,
    Outcome,
    Overloaded,
    PermanentError,
    PressurePolicy,
    Priority,
    RetryPolicy,
    TransientError,
    transports,
)
from surelay.sources import JetStreamSource
from surelay.telemetry import DURATION_BUCKETS
from tests.nats_server import NatsServer, add_stream, wait_for
from tests.sources.test_jetstream import publish
from tests.transports.http_server import HttpServer, Reply

from .helpers import Recorder, open_runtime

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def sdk() -> Iterator[None]:
    """The SDK, installed once per process (OpenTelemetry's globals are set-once)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    yield


@pytest.fixture(autouse=True)
def clean() -> None:
    EXPORTER.clear()


def spans(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


def metric_points() -> dict[str, list[Any]]:
    data = READER.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "surelay":
                continue
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def test_a_message_is_one_trace_from_send_to_dead_letter(tmp_path: Path) -> None:
    attempts = 0

    def fail_then_reject(envelope: Envelope) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise TransientError("busy")
        raise PermanentError("rejected")

    policy = RetryPolicy(base_delay=0.001, max_delay=0.001)
    with open_runtime(tmp_path, {"t": Recorder(fail_then_reject)}, retry=policy) as rt:
        receipt = rt.send("t", b"x", key="k")
        assert receipt.wait(5) is Outcome.DEAD_LETTERED
        (letter,) = rt.dead_letters.list()
    (send,) = spans("surelay.send")
    trace_id = send.context.trace_id
    assert send.attributes == {
        "surelay.message_id": receipt.message_id,
        "surelay.transport": "t",
        "surelay.key": "k",
    }
    delivers = spans("surelay.deliver")
    assert [s.attributes["surelay.attempt"] for s in delivers] == [1, 2]  # type: ignore[index]
    assert all(s.context.trace_id == trace_id for s in delivers)
    assert all(s.parent is not None and s.parent.span_id == send.context.span_id for s in delivers)
    assert all(s.status.status_code is StatusCode.ERROR for s in delivers)
    assert delivers[0].events[0].name == "exception"
    (retry,) = spans("surelay.retry")
    assert retry.attributes["surelay.attempt"] == 2  # type: ignore[index]
    assert retry.context.trace_id == trace_id
    (dead,) = spans("surelay.dead_letter")
    assert dead.attributes["surelay.reason_class"] == "permanent"  # type: ignore[index]
    assert dead.attributes["surelay.dead_letter_id"] == letter.id  # type: ignore[index]
    assert letter.trace_id == f"{trace_id:032x}"


def test_the_traceparent_header_reaches_the_transport(tmp_path: Path) -> None:
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as rt:
        rt.send("t", b"x").wait(5)
    (send,) = spans("surelay.send")
    header = sink.delivered[0].headers["traceparent"]
    ctx = send.context
    assert header == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert int(ctx.trace_flags) & 1  # sampled


def test_metrics_count_by_transport_and_observe_gauges(tmp_path: Path) -> None:
    def behaviour(envelope: Envelope) -> None:
        if envelope.payload == b"bad":
            raise PermanentError("no")

    with open_runtime(tmp_path, {"sms": Recorder(behaviour), "mail": Recorder()}) as rt:
        for payload in (b"ok", b"ok", b"bad"):
            rt.send("sms", payload).wait(5)
        rt.send("mail", b"ok", idempotency_key="once").wait(5)
        rt.send("mail", b"ok", idempotency_key="once").wait(5)
        points = metric_points()

    def total(name: str, transport: str) -> int:
        return sum(
            p.value for p in points[name] if p.attributes.get("surelay.transport") == transport
        )

    assert total("surelay.messages.accepted", "sms") >= 3
    assert total("surelay.messages.delivered", "sms") >= 2
    assert total("surelay.messages.dead_lettered", "sms") >= 1
    assert total("surelay.messages.duplicates", "mail") >= 1
    durations = [
        p
        for p in points["surelay.delivery.duration"]
        if p.attributes.get("surelay.transport") == "sms"
    ]
    assert durations and durations[0].count >= 3
    # seconds-sized buckets: a call of a few ms lands in a bucket of its own, not the first
    assert tuple(durations[0].explicit_bounds) == DURATION_BUCKETS
    breaker = {p.attributes["surelay.transport"]: p.value for p in points["surelay.breaker.state"]}
    assert breaker == {"sms": 0, "mail": 0}
    calls = {p.attributes["surelay.transport"]: p.value for p in points["surelay.calls.in_flight"]}
    assert calls == {"sms": 0, "mail": 0}
    gauges = {
        name: points[name][0].value for name in ("surelay.outbox.pending", "surelay.dead_letters")
    }
    assert gauges == {"surelay.outbox.pending": 0, "surelay.dead_letters": 1}
    assert points["surelay.pressure.level"][0].value == 0


def test_a_duplicate_shows_in_its_trace(tmp_path: Path) -> None:
    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        assert rt.send("t", b"a", idempotency_key="once").wait(5) is Outcome.DELIVERED
        second = rt.send("t", b"b", idempotency_key="once")
        assert second.wait(5) is Outcome.DUPLICATE
    by_id = {s.attributes["surelay.message_id"]: s for s in spans("surelay.send") if s.attributes}
    send = by_id[second.message_id]
    (duplicate,) = [
        s
        for s in spans("surelay.deliver")
        if s.attributes and s.attributes["surelay.outcome"] == "duplicate"
    ]
    assert duplicate.attributes is not None
    assert duplicate.attributes["surelay.message_id"] == second.message_id
    assert duplicate.context is not None and send.context is not None
    assert duplicate.context.trace_id == send.context.trace_id  # in the send's own trace


def test_a_replay_is_its_own_span_linked_to_the_original_trace(tmp_path: Path) -> None:
    healthy = False

    def downstream(envelope: Envelope) -> None:
        if not healthy:
            raise PermanentError("rejected")

    with open_runtime(
        tmp_path, {"t": Recorder(downstream)}, retry=RetryPolicy(max_attempts=1)
    ) as rt:
        assert rt.send("t", b"x", key="k").wait(5) is Outcome.DEAD_LETTERED
        (letter,) = rt.dead_letters.list()
        healthy = True
        assert rt.dead_letters.replay().replayed == 1
        replayed_points = metric_points()["surelay.messages.replayed"]
    (send,) = spans("surelay.send")
    (replay,) = spans("surelay.replay")
    assert letter.trace_id == f"{send.context.trace_id:032x}"
    assert [link.context.trace_id for link in replay.links] == [send.context.trace_id]
    assert replay.attributes is not None
    assert replay.attributes["surelay.dead_letter_id"] == letter.id
    assert replay.attributes["surelay.outcome"] == "replayed"
    first, again = spans("surelay.deliver")
    assert first.context.trace_id == send.context.trace_id
    assert again.parent is not None and again.parent.span_id == replay.context.span_id
    assert [(p.attributes, p.value) for p in replayed_points] == [({"surelay.transport": "t"}, 1)]


def test_a_replay_still_under_way_at_close_ends_its_span_as_stopped(tmp_path: Path) -> None:
    release = threading.Event()
    calls = threading.Event()
    healthy = False

    def downstream(envelope: Envelope) -> None:
        if not healthy:
            raise PermanentError("rejected")
        calls.set()
        release.wait(10)

    rt = open_runtime(
        tmp_path, {"t": Recorder(downstream)}, retry=RetryPolicy(max_attempts=1), ack_timeout=1.0
    )
    try:
        assert rt.send("t", b"x", key="k").wait(5) is Outcome.DEAD_LETTERED
        healthy = True
        rt.dead_letters.replay(wait=False)
        assert calls.wait(10)  # the replay's call is under way
        rt.close(timeout=0.2)
    finally:
        release.set()
        rt.close()
    (replay,) = spans("surelay.replay")
    assert replay.attributes is not None
    assert replay.attributes["surelay.outcome"] == "stopped"


def test_pressure_transitions_are_spans_and_refusals_are_counted(tmp_path: Path) -> None:
    release = threading.Event()
    policy = PressurePolicy(capacity=4, elevated_at=0.5, critical_at=0.75, recover_at=0.25)
    with open_runtime(
        tmp_path, {"t": Recorder(lambda e: release.wait(10) and None)}, pressure=policy
    ) as rt:
        receipts = [rt.send("t", b"x", key="k") for _ in range(3)]
        deadline = time.monotonic() + 5
        while rt.stats().pressure != "critical":
            assert time.monotonic() < deadline
            threading.Event().wait(0.01)
        gauge = [p.value for p in metric_points()["surelay.pressure.level"]]
        with pytest.raises(Overloaded):
            rt.send("t", b"low", priority=Priority.LOW)
        release.set()
        assert all(r.wait(10) is Outcome.DELIVERED for r in receipts)
        while rt.stats().pressure != "normal":
            assert time.monotonic() < deadline + 5
            threading.Event().wait(0.01)
        refused = metric_points()["surelay.messages.refused"]
    assert gauge == [2]
    levels = [
        s.attributes["surelay.pressure.level"] for s in spans("surelay.pressure") if s.attributes
    ]
    assert levels[0] in ("elevated", "critical") and "critical" in levels
    assert levels[-1] == "normal"
    assert [(p.attributes, p.value) for p in refused] == [
        ({"surelay.transport": "t", "surelay.priority": "LOW", "surelay.reason": "critical"}, 1)
    ]


def test_asend_continues_the_callers_trace(tmp_path: Path) -> None:
    """A FastAPI-style handler: the request span is current in the coroutine, and the
    message's send span (and so its deliver span) is its child."""
    tracer = trace.get_tracer("host")

    async def handler(rt: Any) -> Any:
        with tracer.start_as_current_span("request") as request:
            receipt = await rt.asend("t", b"x")
        assert await receipt is Outcome.DELIVERED
        return request

    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        request = asyncio.run(handler(rt))
    (send,) = spans("surelay.send")
    (deliver,) = spans("surelay.deliver")
    context = request.get_span_context()
    assert send.parent is not None and send.parent.span_id == context.span_id
    assert deliver.context is not None and deliver.context.trace_id == context.trace_id


def test_asends_of_one_turn_each_continue_their_own_callers_trace(tmp_path: Path) -> None:
    """Requests handled at once send in one loop turn (one outbox write); each send span
    is still the child of its own request's span, and carries its own message id."""
    tracer = trace.get_tracer("host")

    async def handler(rt: Any, n: int) -> tuple[Any, str]:
        with tracer.start_as_current_span(f"request-{n}") as request:
            receipt = await rt.asend("t", b"%d" % n)
        assert await receipt is Outcome.DELIVERED
        return request, receipt.message_id

    async def main(rt: Any) -> list[tuple[Any, str]]:
        return await asyncio.gather(*(handler(rt, n) for n in range(5)))

    with open_runtime(tmp_path, {"t": Recorder()}) as rt:
        handled = asyncio.run(main(rt))
    sends = {s.attributes["surelay.message_id"]: s for s in spans("surelay.send") if s.attributes}
    assert len(sends) == 5
    for request, message_id in handled:
        send = sends[message_id]
        assert send.parent is not None
        assert send.parent.span_id == request.get_span_context().span_id


def test_a_consumed_message_continues_the_producers_trace(tmp_path: Path) -> None:
    """The producer's `traceparent` (a NATS header) is the parent of the message's
    `surelay.receive` span, whose child each delivery attempt is; `received` counts it."""
    producer = trace.get_tracer("producer").start_span("publish order")
    context = producer.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
    handler = Recorder()
    with NatsServer(tmp_path / "nats") as server:
        add_stream(server.url, name="ORDERS", subjects=["orders.>"])
        publish(server.url, [("orders.t", b"x", {"traceparent": traceparent})])
        with open_runtime(tmp_path / "d", {"noop": Recorder()}) as rt:
            rt.consume(JetStreamSource(server.url, "ORDERS", durable="t"), handler, name="in")
            wait_for(lambda: len(handler.delivered) == 1, 30, "the message")
            assert rt.flush(10)
    producer.end()
    (receive,) = spans("surelay.receive")
    (deliver,) = spans("surelay.deliver")
    assert receive.parent is not None and receive.parent.span_id == context.span_id
    assert receive.context is not None and receive.context.trace_id == context.trace_id
    assert deliver.parent is not None and deliver.parent.span_id == receive.context.span_id
    assert receive.attributes is not None
    assert receive.attributes["surelay.source.nats-stream"] == "ORDERS"
    received = metric_points()["surelay.messages.received"]
    assert [(p.attributes, p.value) for p in received] == [({"surelay.transport": "in"}, 1)]


@pytest.mark.parametrize("kind", ["HttpTransport", "AsyncHttpTransport"])
def test_each_attempt_sends_its_own_deliver_spans_traceparent(tmp_path: Path, kind: str) -> None:
    """The `traceparent` a downstream receives is that of the `surelay.deliver` span of
    the attempt that sent it (a child of the send's), not the send span's: a retry's
    request names the retry's attempt."""
    replies = iter([Reply(503), Reply(200)])
    with HttpServer(lambda request: next(replies)) as server:
        transport = getattr(transports, kind)(server.url + "/hook")
        fast = RetryPolicy(base_delay=0.01, max_delay=0.01, jitter="none")
        with open_runtime(tmp_path, {"hooks": transport}, retry=fast) as rt:
            assert rt.send("hooks", b"{}").wait(10) is Outcome.DELIVERED
        sent = [request.headers["traceparent"] for request in server.requests]
    delivers = sorted(spans("surelay.deliver"), key=lambda s: s.attributes["surelay.attempt"])
    (send,) = spans("surelay.send")
    assert len(sent) == len(delivers) == 2
    for traceparent, deliver in zip(sent, delivers, strict=True):
        context = deliver.context
        flags = int(context.trace_flags)
        assert traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
        assert deliver.parent is not None and deliver.parent.span_id == send.context.span_id


def test_a_jetstream_publish_carries_the_attempts_traceparent(tmp_path: Path) -> None:
    """Published through JetStreamTransport and consumed back: the consumer's
    `surelay.receive` span is a child of the publishing attempt's `surelay.deliver`."""
    handler = Recorder()
    with NatsServer(tmp_path / "nats") as server:
        add_stream(server.url, name="ORDERS", subjects=["orders.>"])
        out = {"js": transports.JetStreamTransport(server.url, "orders.new", timeout=2.0)}
        with open_runtime(tmp_path / "d", out) as rt:
            rt.consume(JetStreamSource(server.url, "ORDERS", durable="t"), handler, name="in")
            assert rt.send("js", b"order").wait(30) is Outcome.DELIVERED
            wait_for(lambda: len(handler.delivered) == 1, 30, "the message")
            assert rt.flush(10)
    (receive,) = spans("surelay.receive")
    published = [s for s in spans("surelay.deliver") if s.attributes["surelay.transport"] == "js"]
    assert receive.parent is not None
    assert receive.parent.span_id == published[0].context.span_id


def test_push_has_spans_and_metrics(tmp_path: Path) -> None:
    from surelay import Runtime  # noqa: PLC0415
    from surelay.push import PushConfig  # noqa: PLC0415
    from tests.push.serving import SECRET, Client, serving  # noqa: PLC0415

    push = PushConfig(SECRET, ack_timeout=0.2, max_deliveries=1)
    with Runtime.open(tmp_path, transports={}, push=push) as rt, serving(rt) as url:
        first = rt.push.send("ann", b"a")
        rt.push.send("ann", b"b")
        token = rt.push.issue_token("ann")

        async def main() -> None:
            client = await Client.connect(url, token, "phone")
            assert [f["seq"] for f in await client.take(2)] == [1, 2]
            assert sum(p.value for p in metric_points()["surelay.push.pending"]) == 2
            await client.ack(1)
            await client.read(1)
            assert (await client.next())["t"] == "gap"  # 2 never acked: poison
            points = metric_points()
            assert sum(p.value for p in points["surelay.push.connections"]) >= 1
            assert sum(p.value for p in points["surelay.push.pending"]) == 0  # acked, failed
            await client.close()

        asyncio.run(main())
        wait_for(lambda: bool(spans("surelay.push.failed")), 5, "the failed span")
    (append, _) = spans("surelay.push.append")
    assert append.attributes == {
        "surelay.push.recipient": "ann",
        "surelay.push.seq": 1,
        "surelay.message_id": first.msg_id,
    }
    (ack,) = spans("surelay.push.ack")
    assert (ack.attributes or {})["surelay.push.device"] == "phone"
    assert spans("surelay.push.read") and spans("surelay.push.deliver")
    (failed,) = spans("surelay.push.failed")
    assert (failed.attributes or {})["surelay.reason"] == "poison"
    points = metric_points()
    for name in ("appended", "frames", "acks", "reads", "failed"):
        assert sum(p.value for p in points[f"surelay.push.{name}"]) >= 1, name
