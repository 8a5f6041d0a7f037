"""`Hub`: what the delivery actors share, and the runtime's `Counters`.

One Hub per runtime, made before the supervision tree and handed to the parts that
still share it: the senders, the replay actors, the SQL relay, intake, recovery and the
way in (the other actors get records of what they use, built in `surelay.wiring`).
They find the tree's actors through `peers`, by name, once the tree runs.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from surelay.actors.window import Orphans
from surelay.backlog import RetryBacklog
from surelay.config import RuntimeConfig
from surelay.delivery import Engines
from surelay.delivery.breakers import Breakers
from surelay.envelope import Envelope
from surelay.peers import Peers
from surelay.pressure import PressureState
from surelay.receipts import Tracker
from surelay.storage.store import Store
from surelay.telemetry import COUNTERS, Telemetry

__all__ = ["Counters", "Hub", "Transport"]

Transport = Callable[[Envelope], Any]
"""Any callable taking an `Envelope` (or a coroutine function); returning means
delivered."""


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


@dataclass
class Hub:
    store: Store
    config: RuntimeConfig
    transports: Mapping[str, Transport]
    tracker: Tracker
    counters: Counters
    telemetry: Telemetry
    breakers: Breakers
    backlog: RetryBacklog
    engines: Engines
    peers: Peers
    """The actors of the tree, found by name once it runs."""
    rng: random.Random = field(default_factory=random.Random)
    orphans: Orphans = field(default_factory=Orphans)
    """Entries in this slot's outbox for transports the runtime has not (yet)."""
    pressure: PressureState = field(default_factory=PressureState)

    @property
    def durable(self) -> bool:
        """Whether accepted messages are in the outbox (AT_LEAST_ONCE)."""
        return self.config.guarantee.value == "at_least_once"

    def ack_timeout(self, transport: str) -> float:
        """Seconds one call to `transport` may take before it is cut off and retried."""
        return self.engines[transport].ack_timeout
