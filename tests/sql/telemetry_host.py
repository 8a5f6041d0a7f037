"""A host and a relay with the OpenTelemetry SDK installed, run as a process of its own
(OpenTelemetry's providers are set once per process).

Usage: python -m tests.sql.telemetry_host <postgresql url> <data directory>. Under a
span of its own ("request") it sends two messages in one committed transaction and one
in a rolled-back transaction, relays them, and prints as JSON the finished spans
(name, trace and span ids, parent, attributes) and the data points of
`surelay.messages.relayed`.
"""

from __future__ import annotations

import json
import sys
from contextlib import suppress
from typing import Any

import psycopg
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from surelay import Runtime
from surelay.sql import SqlOutbox
from tests.helpers import Recorder, wait_until


class Rollback(Exception):
    """Raised inside a block to roll it back."""


def main(url: str, path: str) -> None:
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    outbox = SqlOutbox(url, partitions=4)
    outbox.create_table()
    with psycopg.connect(url) as conn, trace.get_tracer("host").start_as_current_span("request"):
        with suppress(Rollback), conn.transaction():
            outbox.send(conn, "hooks", b"rolled back", key="a")
            raise Rollback
        with conn.transaction():
            outbox.send(conn, "hooks", b"one", key="a")
            outbox.send_batch(conn, [{"transport": "hooks", "payload": b"two", "key": "b"}])

    recorder = Recorder()
    rt = Runtime.open(path, transports={"hooks": recorder})
    try:
        rt.relay(outbox, poll_interval=0.1)
        wait_until(lambda: len(recorder.delivered) >= 2)
        assert rt.flush(10)
    finally:
        rt.close()

    spans = [
        {
            "name": s.name,
            "trace": format(s.context.trace_id, "032x"),
            "span": format(s.context.span_id, "016x"),
            "parent": None if s.parent is None else format(s.parent.span_id, "016x"),
            "attributes": dict(s.attributes or {}),
        }
        for s in exporter.get_finished_spans()
    ]
    points: list[dict[str, Any]] = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "surelay.messages.relayed":
                    points.extend(
                        {"value": p.value, "attributes": dict(p.attributes or {})}
                        for p in metric.data.data_points
                    )
    delivered = [
        {"payload": e.payload.decode(), "traceparent": e.headers.get("traceparent")}
        for e in recorder.delivered
    ]
    print(json.dumps({"spans": spans, "relayed": points, "delivered": delivered}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
