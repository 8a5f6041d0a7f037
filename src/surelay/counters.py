"""`Counters`: the runtime's monotonic counters (`stats()`), mirrored to OpenTelemetry."""

from __future__ import annotations

import threading

from surelay.telemetry import COUNTERS, Telemetry

__all__ = ["Counters"]


class Counters:
    """The runtime's monotonic counters (`stats()`), mirrored to OpenTelemetry."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        self._telemetry = telemetry

    def add(self, name: str, transport: str, amount: int = 1) -> None:
        if amount:
            with self._lock:
                self._values[name] += amount
            self._telemetry.count(name, transport, amount)

    def add_each(self, name: str, transports: list[str]) -> None:
        """One per element of `transports` (one instrument call per distinct transport)."""
        if transports:
            with self._lock:
                self._values[name] += len(transports)
            self._telemetry.count_many(name, transports)

    def refused(self, transports: list[str], priority: str, reason: str) -> None:
        """Sends turned away by pressure, by transport, priority and reason."""
        with self._lock:
            self._values["refused"] += len(transports)
        self._telemetry.count_refused(transports, priority, reason)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
