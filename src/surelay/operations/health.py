"""What a runtime says of itself: `RuntimeStats` (counters and gauges), `health()`
(each part's state, with an `ok` of its own), the status the StatusReporter publishes
for `surelay stats` in other processes, and the gauges exported to OpenTelemetry.

Plain functions of the runtime's parts: nothing here holds state or changes any.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pykka

from surelay.policy.breaker import STATE_GAUGE, State
from surelay.pressure import LEVELS
from surelay.supervision import SupervisorRef

if TYPE_CHECKING:
    from surelay.backlog import RetryBacklog
    from surelay.consumers import Consumers
    from surelay.counters import Counters
    from surelay.delivery import Engines
    from surelay.delivery.breakers import Breakers
    from surelay.pressure import PressureState
    from surelay.receipts import Tracker
    from surelay.recovery import Recovery
    from surelay.sql.relay import Relays
    from surelay.storage.store import Store

__all__ = [
    "Readings",
    "RuntimeStats",
    "Vitals",
    "actor_health",
    "gauges",
    "health",
    "stats",
    "status",
]


@dataclass(frozen=True, slots=True)
class Readings:
    """What `stats()` and `health()` read (built by `surelay.wiring`); never changed
    here."""

    store: Store
    counters: Counters
    tracker: Tracker
    backlog: RetryBacklog
    pressure: PressureState
    breakers: Breakers
    engines: Engines


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """A snapshot of the runtime: counters since `open`, gauges now."""

    accepted: int
    delivered: int
    retried: int
    dead_lettered: int
    duplicates: int
    refused: int
    replayed: int
    in_flight: int
    """Accepted (or recovered) messages that have not ended yet."""
    outbox_pending: int
    retry_pending: int
    """Messages held until a retry time (or until their breaker lets a call through)."""
    dead_letters: int
    """Dead letters with status `dead`."""
    pressure: str
    breakers: Mapping[str, State]
    calls_in_flight: Mapping[str, int]
    """Transport calls running now, per transport (at most its concurrency)."""
    received: int = 0
    """Inbound messages taken from sources (`consume`) since open."""
    relayed: int = 0
    """Rows taken from SQL outbox tables (`relay`) since open."""
    scheduled: int = 0
    """Messages sent with a delay whose time has not come (on disk, every slot's)."""
    abandoned: int = 0
    """Transport calls given up at their ack timeout that are still running now (a
    plain callable's thread cannot be stopped; a coroutine that ignores its cancel);
    their results are ignored. See `health()["engines"]` for which transport."""


def stats(readings: Readings) -> RuntimeStats:
    """The runtime's counters since open and its gauges now."""
    store = readings.store
    counters = readings.counters.snapshot()
    store_stats = store.stats() if not store.env.closed else None
    return RuntimeStats(
        **counters,
        in_flight=readings.tracker.pending,
        outbox_pending=store_stats.outbox_pending if store_stats else 0,
        scheduled=store_stats.scheduled if store_stats else 0,
        retry_pending=len(readings.backlog),
        dead_letters=store_stats.dead_letters.get("dead", 0) if store_stats else 0,
        pressure=readings.pressure.level,
        breakers=MappingProxyType(readings.breakers.states(store.clock())),
        calls_in_flight=MappingProxyType(readings.engines.in_flight()),
        abandoned=readings.engines.abandoned(),
    )


def health(  # the runtime's parts
    *,
    root: SupervisorRef,
    readings: Readings,
    relays: Relays,
    consumers: Consumers,
    recovery: Recovery,
    closing: bool,
    timeout: float,
) -> Mapping[str, Any]:
    """`Runtime.health()`: the supervision tree's answers waited for `timeout` at most."""
    deadline = time.monotonic() + timeout
    store = readings.store
    actors = actor_health(root, "", deadline) if root.is_alive() else {}
    storage: dict[str, Any]
    if store.env.closed:
        storage = {"ok": False, "error": "closed"}
    else:
        size, used = store.env.usage()
        storage = {
            "ok": used < 0.9 * store.env.max_map_size and not store.full,
            "full": store.full,
            "path": str(store.path),
            "slot": store.slot,
            "map_size": size,
            "map_used": used,
            "quarantined": store.stats().quarantined,
        }
    breakers = {
        name: {"ok": state != "open", "state": state}
        for name, state in readings.breakers.states(store.clock()).items()
    }
    ok = (
        root.is_alive()
        and all(a["ok"] for a in actors.values())
        and storage["ok"]
        and all(b["ok"] for b in breakers.values())
    )
    engines = readings.engines.health()
    relayed = relays.health()
    ok = ok and all(e["ok"] for e in engines.values()) and all(r["ok"] for r in relayed.values())
    return {
        "ok": ok,
        "closed": closing,
        "actors": actors,
        "storage": storage,
        "breakers": breakers,
        "engines": engines,
        "orphaned": recovery.orphans,
        "sources": consumers.health(),
        "relays": relayed,
    }


def status(
    now: RuntimeStats, healthy: Mapping[str, Any], transports: Mapping[str, object]
) -> dict[str, Any]:
    """What the StatusReporter publishes for `surelay stats` in other processes."""
    out: dict[str, Any] = {name: getattr(now, name) for name in RuntimeStats.__slots__}
    out["breakers"] = dict(now.breakers)
    out["calls_in_flight"] = dict(now.calls_in_flight)
    out["ok"] = healthy["ok"]
    out["unhealthy_actors"] = sorted(n for n, a in healthy["actors"].items() if not a["ok"])
    out["transports"] = sorted(transports)  # what replay requests may ask of it
    out["wedged"] = sorted(name for name, e in healthy["engines"].items() if e["wedged"])
    out["relays"] = healthy["relays"]
    return out


def gauges(now: RuntimeStats) -> Mapping[str, float | Mapping[str, float]]:
    """The runtime's gauges for OpenTelemetry."""
    return {
        "surelay.outbox.pending": now.outbox_pending,
        "surelay.scheduled": now.scheduled,
        "surelay.retry.pending": now.retry_pending,
        "surelay.dead_letters": now.dead_letters,
        "surelay.pressure.level": LEVELS.index(now.pressure),
        "surelay.breaker.state": {t: STATE_GAUGE[s] for t, s in now.breakers.items()},
        "surelay.calls.in_flight": dict(now.calls_in_flight),
    }


def actor_health(
    supervisor: SupervisorRef, prefix: str, deadline: float
) -> dict[str, dict[str, Any]]:
    try:
        children = supervisor.which_children(timeout=max(0.01, deadline - time.monotonic()))
    except pykka.Timeout:
        return {prefix or "surelay": {"ok": False, "status": "unresponsive", "restarts": 0}}
    out: dict[str, dict[str, Any]] = {}
    for info in children:
        name = prefix + info.id
        out[name] = {
            "ok": info.status == "running",
            "status": info.status,
            "restarts": info.restarts,
        }
        if isinstance(info.ref, SupervisorRef) and info.status == "running":
            out.update(actor_health(info.ref, name + "/", deadline))
    return out


@dataclass(frozen=True, slots=True)
class Vitals:
    """What a running runtime says of itself, from its parts (built by
    `surelay.wiring` once the tree runs): `health()`, the status the StatusReporter
    publishes, the gauges exported to OpenTelemetry."""

    root: SupervisorRef
    readings: Readings
    relays: Relays
    consumers: Consumers
    recovery: Recovery
    closing: Callable[[], bool]
    """Whether the runtime closes (its way in is shut)."""
    transports: Mapping[str, object]

    def health(self, timeout: float) -> Mapping[str, Any]:
        """`Runtime.health()`, waiting `timeout` at most for the tree's answers."""
        return health(
            root=self.root,
            readings=self.readings,
            relays=self.relays,
            consumers=self.consumers,
            recovery=self.recovery,
            closing=self.closing(),
            timeout=timeout,
        )

    def status(self, timeout: float = 1.0) -> Mapping[str, Any]:
        """What the StatusReporter publishes for `surelay stats` in other processes."""
        return status(stats(self.readings), self.health(timeout), self.transports)

    def gauges(self) -> Mapping[str, float | Mapping[str, float]]:
        return {} if self.readings.store.env.closed else gauges(stats(self.readings))
