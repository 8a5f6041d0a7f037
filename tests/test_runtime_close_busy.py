"""Closing a busy runtime says what it waits for and how long, and a second interrupt
stops the wait without losing anything (ctrl-C, then ctrl-C again)."""

from __future__ import annotations

import _thread
import logging
import threading
from pathlib import Path

import pytest

from tests.helpers import Gate, Recorder, open_runtime


class _InterruptOnce(logging.Handler):
    """Interrupts the main thread (a second ctrl-C) once the close has said it waits."""

    def emit(self, record: logging.LogRecord) -> None:
        if "not yet delivered" in record.getMessage():
            threading.Timer(0.05, _thread.interrupt_main).start()


def test_a_busy_close_says_it_waits_and_a_second_interrupt_stops_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    rt = open_runtime(tmp_path, {"t": Recorder(gate)})
    interrupter = _InterruptOnce()
    logger = logging.getLogger("surelay.runtime")
    logger.addHandler(interrupter)
    try:
        with caplog.at_level(logging.WARNING, "surelay.runtime"):
            receipt = rt.send("t", b"x")
            assert gate.entered.wait(10)
            with pytest.raises(KeyboardInterrupt):
                rt.close(timeout=60)  # would wait the whole minute for the hung call
        said = [r.getMessage() for r in caplog.records if "not yet delivered" in r.getMessage()]
        assert len(said) == 1
        assert said[0].startswith("closing with 1 message(s) not yet delivered: waiting up to 5")
        assert said[0].endswith(
            "s more for the calls under way (interrupt again to stop waiting); whatever is not "
            "delivered by then stays in the outbox for the next open"
        )
    finally:
        logger.removeHandler(interrupter)
        gate.open()
    assert receipt.wait(0) is None
    sink = Recorder()
    with open_runtime(tmp_path, {"t": sink}) as again:  # nothing was lost
        assert again.flush(10)
    assert sink.payloads() == [b"x"]


def test_a_close_that_ends_quickly_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    rt = open_runtime(tmp_path, {"t": Recorder(gate)})
    with caplog.at_level(logging.WARNING, "surelay.runtime"):
        receipt = rt.send("t", b"x")
        assert gate.entered.wait(10)
        threading.Timer(0.1, gate.open).start()  # the call ends well within SLOW_CLOSE
        rt.close(timeout=10)
    assert receipt.wait(0) is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
