"""Tracing works whatever the order of the host's SDK setup and `import surelay`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HOST = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()

def install():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

if sys.argv[2] == "sdk-first":
    install()
import surelay  # the usual startup order imports the library after setting up tracing
if sys.argv[2] == "import-first":
    install()

seen = []
with surelay.Runtime.open(sys.argv[1], transports={"t": seen.append}) as rt:
    assert rt.send("t", b"x").wait(5) is surelay.Outcome.DELIVERED
names = sorted({span.name for span in exporter.get_finished_spans()})
print(",".join(names))
print("traceparent" in seen[0].headers)
"""


@pytest.mark.parametrize("order", ["sdk-first", "import-first"])
def test_spans_are_recorded_whatever_the_setup_order(tmp_path: Path, order: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HOST, str(tmp_path / "data"), order],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names, traceparent = done.stdout.split()
    assert names == "surelay.deliver,surelay.send"
    assert traceparent == "True"  # the transport's headers carry the trace on
