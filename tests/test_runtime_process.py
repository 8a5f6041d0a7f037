"""The runtime in its host process: a host that dies of an exception without close()
exits promptly, and a runtime opened before a fork refuses to be used in the child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surelay import Envelope, Outcome, Runtime, RuntimeClosed
from surelay.errors import StorageError
from surelay.storage.slots import holders

from .helpers import Recorder, open_runtime

ROOT = Path(__file__).resolve().parent.parent

HOST = """
import sys, threading
from surelay import Runtime

stuck = threading.Event()

def slow(envelope):
    stuck.wait()  # a downstream that never answers while this host lives

rt = Runtime.open(sys.argv[1], transports={"t": slow})
for i in range(50):
    rt.send("t", b"%d" % i, key="k%d" % i)
print("accepted", flush=True)
raise ValueError("the host's own bug: main ends without close()")
"""


def test_a_host_that_dies_of_an_exception_exits_and_keeps_what_it_accepted(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HOST, str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )
    assert time.monotonic() - started < 10, "the runtime kept the process alive"
    assert done.returncode == 1 and "the host's own bug" in done.stderr
    assert "still running: abandoned" in done.stderr  # the runtime was closed at exit
    assert done.stdout.strip() == "accepted"
    sink = Recorder()
    with open_runtime(data, {"t": sink}) as rt:
        assert rt.flush(10)
    assert sorted(sink.payloads()) == sorted(b"%d" % i for i in range(50))


def _sink(_envelope: Envelope) -> None:
    pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_runtime_opened_before_a_fork_refuses_the_child_and_serves_the_parent(
    tmp_path: Path,
) -> None:
    sink = Recorder()
    with open_runtime(tmp_path / "data", {"t": sink}) as rt:
        assert rt.send("t", b"before").wait(5) is Outcome.DELIVERED
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what using the runtime does, then leave at once
            try:
                rt.send("t", b"child")
                message = "sent"
            except RuntimeClosed as error:
                message = str(error)
            for use in (rt.stats, lambda: rt.dead_letters, lambda: rt.supervisor, rt.flush):
                try:
                    use()
                    message = f"{use} was allowed"
                except RuntimeClosed:
                    pass
            rt.close()  # a no-op here: the parent owns it
            # nor can the child open the directory again (LMDB's rule): it says why
            try:
                Runtime.open(tmp_path / "data", transports={"t": _sink})
                message += "|opened again"
            except StorageError as error:
                message += f"|{error}"
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            message = pipe.read()
        assert os.waitstatus_to_exitcode(status) == 0, message
        assert f"opened in process {os.getpid()} before a fork" in message
        assert "open the runtime after the fork" in message
        assert "open in the process this one was forked from" in message
        assert holders(tmp_path / "data") == {rt.slot: os.getpid()}  # still the parent's
        assert rt.send("t", b"after").wait(5) is Outcome.DELIVERED  # the parent goes on
    assert sink.payloads() == [b"before", b"after"]


TRACED_HOST = """
import sys, threading, time
from surelay import Runtime
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class Printer(SpanExporter):
    def export(self, spans):
        for span in spans:
            print("span", span.name, flush=True)
        return SpanExportResult.SUCCESS


# the usual order: surelay imported first, the SDK set up at startup, then the runtime
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(Printer()))
trace.set_tracer_provider(provider)
called = threading.Event()

def slow(envelope):
    called.set()
    time.sleep(0.3)  # still running when the host's main code ends

rt = Runtime.open(sys.argv[1], transports={"t": slow})
rt.send("t", b"x")
called.wait(10)
print("main ends", flush=True)
"""


def test_spans_of_the_close_at_exit_reach_an_sdk_set_up_after_import(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TRACED_HOST, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # the delivery ended during the close at exit, and its span was still exported
    assert "span surelay.deliver" in lines[lines.index("main ends") :], done.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_after_close_may_open_the_directory(tmp_path: Path) -> None:
    with open_runtime(tmp_path / "data", {"t": _sink}):
        pass
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with Runtime.open(tmp_path / "data", transports={"t": _sink}) as rt:
                code = 0 if rt.send("t", b"x").wait(5) is Outcome.DELIVERED else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
