"""`IngressEndpoint`: what every way in is given, built once by `surelay.wiring`.

The three ways messages enter a runtime (`send`/`asend` and transactions through
`WayIn`, `rt.consume` through `Intake`, `rt.relay` through the SQL `Relay`) check,
admit, route and write them by the same rules, from the same parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surelay.config import RuntimeConfig
    from surelay.counters import Counters
    from surelay.ingress.admission import Gate
    from surelay.peers import Peers
    from surelay.receipts import Tracker
    from surelay.storage.store import Store
    from surelay.telemetry import Telemetry
    from surelay.transports.protocol import Transport

__all__ = ["IngressEndpoint"]


@dataclass(frozen=True, slots=True)
class IngressEndpoint:
    """The config, the store, the runtime's transports by name (a live view: consumers
    add theirs), the receipts tracker, the counters, the telemetry, admission's `gate`
    and the tree's actors (`peers`: the senders take what is accepted)."""

    config: RuntimeConfig
    store: Store
    transports: Mapping[str, Transport]
    tracker: Tracker
    counters: Counters
    telemetry: Telemetry
    gate: Gate
    peers: Peers

    @property
    def durable(self) -> bool:
        """Whether accepted messages are in the outbox (AT_LEAST_ONCE)."""
        return self.config.guarantee.value == "at_least_once"
