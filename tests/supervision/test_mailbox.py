"""A child's mailbox at its final stop: queued asks fail, queued tells are dropped with a
warning, except ticks of a timer (a nudge left at the stop is no loss)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from pykka._envelope import Envelope

from surelay.supervision._mailbox import Mailbox, quiet_when_dropped


@dataclass(frozen=True)
class Work:
    n: int


@dataclass(frozen=True)
class Tick:
    pass


quiet_when_dropped(Tick)


def test_only_dropped_work_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    mailbox = Mailbox("worker")
    mailbox.put(Envelope(Tick()))
    mailbox.put(Envelope(Tick()))
    with caplog.at_level(logging.WARNING, "surelay.supervision"):
        assert mailbox.close() == 0
    assert not caplog.records
    mailbox = Mailbox("worker")
    mailbox.put(Envelope(Tick()))
    mailbox.put(Envelope(Work(1)))
    with caplog.at_level(logging.WARNING, "surelay.supervision"):
        assert mailbox.close() == 1
    assert [r.getMessage() for r in caplog.records] == [
        "worker stopped for good; 1 queued tell(s) dropped"
    ]
