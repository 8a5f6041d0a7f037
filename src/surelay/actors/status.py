"""The StatusReporter: publishes the runtime's status to the store for other processes.

Every `PERIOD` seconds (real time) it takes the runtime's snapshot (`stats()` and
health) and writes it when it changed, or at least every `HEARTBEAT` seconds, so an idle
runtime costs one small write a minute and `surelay stats` is at most a second behind.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import AlarmOwner

if TYPE_CHECKING:
    from surelay.storage.store import Store

__all__ = ["HEARTBEAT", "PERIOD", "Publish", "Snapshot", "StatusReporter"]

logger = logging.getLogger("surelay.actors")

PERIOD = 1.0
HEARTBEAT = 60.0

Snapshot = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish now (also sent by the alarm)."""


@dataclass(frozen=True, slots=True)
class StatusEndpoint:
    """What the StatusReporter works with: the store it publishes to, the clock, and
    where the runtime puts its snapshot function once it exists."""

    store: Store
    clock: Callable[[], float]
    snapshot: list[Snapshot]


class StatusReporter(AlarmOwner):
    def __init__(self, endpoint: StatusEndpoint) -> None:
        super().__init__()
        self._at = endpoint
        self._snapshot = endpoint.snapshot  # filled in by the runtime once it exists
        self._last: Mapping[str, Any] | None = None
        self._written_at = 0.0

    def on_start(self) -> None:
        self.start_alarm(
            Publish(), time.monotonic, name="surelay-status", at=time.monotonic() + PERIOD
        )

    def on_receive(self, message: Any) -> None:
        if not isinstance(message, Publish):
            return
        now = time.monotonic()
        if self._alarm is not None:
            self._alarm.set(now + PERIOD)
        if not self._snapshot:
            return
        try:
            snapshot = dict(self._snapshot[0]())
        except Exception:  # the runtime is closing under us: nothing worth publishing
            logger.debug("no status snapshot", exc_info=True)
            return
        if snapshot == self._last and now - self._written_at < HEARTBEAT:
            return
        self._last = snapshot
        self._written_at = now
        store = self._at.store
        status = {
            **snapshot,
            "pid": os.getpid(),
            "slot": store.slot,
            "at": self._at.clock(),
        }
        store.write(lambda txn: store.status.put(txn, status)).result()
