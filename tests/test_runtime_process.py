"""The runtime in its host process: a host that dies of an exception without close()
exits promptly, and a runtime opened before a fork refuses to be used in the child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surelay import Outcome, RuntimeClosed

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
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            message = pipe.read()
        assert os.waitstatus_to_exitcode(status) == 0
        assert f"opened in process {os.getpid()} before a fork" in message
        assert "open the runtime after the fork" in message
        assert rt.send("t", b"after").wait(5) is Outcome.DELIVERED  # the parent goes on
    assert sink.payloads() == [b"before", b"after"]
