"""Wiring: the supervision tree of a runtime, built from the state it shares.

```
root Supervisor "surelay" (one_for_one)
├── governor       PressureGovernor: samples depths, publishes the pressure level
├── retry          RetryScheduler: timer heap of held messages
├── hooks          HookRunner: runs on_dead_letter for each dead letter
├── dead_letters   DeadLetterSink: stores terminal failures
├── senders        Supervisor: Sender "sender-<i>" per partition
├── timer          Timer: moves scheduled messages into the outbox when due
├── sources        Supervisor: SourceConsumer "source-<name>" per `rt.consume`
├── sweeper        Sweeper: dedup and dead-letter retention
├── status         StatusReporter: publishes stats() to the store for `surelay stats`
├── slots          SlotKeeper: adopts the outbox of slots whose runtime died
└── replay         Supervisor: ReplayWorker "replay-<i>" per replay partition, then
                   the ReplayCoordinator "coordinator"
```

The engines that run transport calls (`surelay.delivery`) and the store's group-commit
writer are not actors: they belong to the runtime and outlive the tree's restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from surelay.actors.dead_letter import DeadLetterSink, SinkEndpoint
from surelay.actors.governor import GovernorEndpoint, PressureGovernor
from surelay.actors.hooks import HookEndpoint, HookRunner
from surelay.actors.replay import CoordinatorEndpoint, ReplayCoordinator
from surelay.actors.replay_worker import ReplayWorker, WorkerEndpoint, WorkerState
from surelay.actors.retry import RetryEndpoint, RetryScheduler
from surelay.actors.sender import PartitionState, Sender, SenderEndpoint
from surelay.actors.slot_keeper import SlotKeeper
from surelay.actors.status import Snapshot, StatusEndpoint, StatusReporter
from surelay.actors.sweeper import Sweeper, SweeperEndpoint
from surelay.actors.timer import Timer, TimerEndpoint
from surelay.actors.window import Orphans, limits_for
from surelay.backlog import RetryBacklog
from surelay.config import RuntimeConfig
from surelay.consumers import Consumers
from surelay.counters import Counters
from surelay.delivery import Engines
from surelay.delivery.breakers import Breakers
from surelay.delivery.limiter import Limiter
from surelay.ingress.admission import Gate
from surelay.ingress.endpoint import IngressEndpoint
from surelay.ingress.way_in import WayIn
from surelay.operations.dead_letters import DeadLetters
from surelay.operations.health import Readings, Vitals
from surelay.peers import Peers
from surelay.pressure import PressureState
from surelay.receipts import Tracker
from surelay.recovery import Recovery, route
from surelay.replay_jobs import ReplayState
from surelay.sql.relay import Relays
from surelay.storage.rate_state import RateState
from surelay.storage.store import Store
from surelay.supervision import ChildSpec, Supervisor, SupervisorRef
from surelay.telemetry import Telemetry
from surelay.transports.protocol import Transport

if TYPE_CHECKING:
    from surelay.push.gateway import Gateway

__all__ = ["Tree", "start"]


@dataclass(frozen=True, slots=True)
class Tree:
    """A runtime's parts once its supervision tree runs (see `start`)."""

    root: SupervisorRef
    peers: Peers
    states: list[PartitionState]
    replays: ReplayState
    recovery: Recovery
    way_in: WayIn
    consumers: Consumers
    relays: Relays
    dead_letters: DeadLetters
    readings: Readings
    vitals: Vitals
    engines: Engines
    tracker: Tracker
    telemetry: Telemetry
    transports: Mapping[str, Transport]
    """The runtime's transports by name (a live view: `rt.consume` adds to them)."""


def start(  # noqa: PLR0915  # the one place the whole tree is wired
    store: Store,
    config: RuntimeConfig,
    transports: dict[str, Transport],
    *,
    push: Gateway | None = None,
) -> Tree:
    """Make the parts the actors share, give each actor (and each way in) a record of
    what it uses, start the tree and let them find its actors by name
    (`Peers.attach`). A failure stops what was started (not the store: the caller
    opened it) and is raised."""
    telemetry = Telemetry()  # observes the runtime's gauges once it exists
    engines: Engines | None = None
    try:
        breakers = Breakers(config.breaker, transports)
        engines = _engines(store, config, transports, breakers, telemetry)
        names = MappingProxyType(transports)
        tracker = Tracker()
        counters = Counters(telemetry)
        backlog = RetryBacklog()
        pressure = PressureState()
        orphans = Orphans()
        peers = Peers(config.partitions, config.replay_partitions)
        durable = config.guarantee.value == "at_least_once"
        clock = config.clock
        limits = limits_for(config.partitions, config.pressure.capacity)
        states = [PartitionState(i, limits) for i in range(config.partitions)]
        replays = ReplayState()
        recovery = Recovery(
            store,
            partitions=config.partitions,
            transports=names,
            tracker=tracker,
            orphans=orphans,
            peers=peers,
            hooked=config.on_dead_letter is not None,
        )
        snapshot: list[Snapshot] = []
        sender = SenderEndpoint(
            config, store, names, engines, tracker, counters, telemetry, orphans, peers
        )
        senders = [
            ChildSpec(f"sender-{i}", Sender, args=(sender, states[i]), shutdown=5.0)
            for i in range(config.partitions)
        ]
        worker = WorkerEndpoint(
            store, clock, config.dedup_ttl, names, engines, counters, telemetry, peers
        )
        workers = [
            ChildSpec(
                f"replay-{i}", ReplayWorker, args=(worker, replays, WorkerState(i)), shutdown=5.0
            )
            for i in range(config.replay_partitions)
        ]
        coordinator = CoordinatorEndpoint(store, clock, names, peers)
        governor = GovernorEndpoint(
            pressure,
            config.pressure,
            tracker,
            backlog,
            counters,
            store if durable else None,
            telemetry,
            peers,
        )
        forwards: dict[str, str] = {}  # consumers forwarding their dead letters add theirs
        sweeper = SweeperEndpoint(
            store,
            clock,
            config.dedup_ttl,
            config.dead_letter_ttl,
            push_expire=None if push is None else push.expire,
            push_next=None if push is None else push.next_expiry,
        )
        specs = [
            ChildSpec("governor", PressureGovernor, args=(governor,)),
            ChildSpec("retry", RetryScheduler, args=(RetryEndpoint(backlog, clock, peers),)),
            # before the sink: it stops after it (the sink tells it of each dead letter)
            ChildSpec(
                "hooks",
                HookRunner,
                args=(HookEndpoint(store, config.on_dead_letter, config.ack_timeout),),
            ),
            ChildSpec(
                "dead_letters",
                DeadLetterSink,
                args=(
                    SinkEndpoint(
                        store,
                        tracker,
                        counters,
                        telemetry,
                        set(),
                        config.dedup_ttl,
                        peers if config.on_dead_letter is not None else None,
                        peers,
                        forwards,
                        config.partitions,
                    ),
                ),
            ),
            # A poison message crashes its sender at most twice before it is
            # dead-lettered, so only a sender that cannot run at all should exhaust this.
            Supervisor.spec(
                "senders", senders, intensity=max(20, 10 * config.partitions), period=1.0
            ),
            # after the senders: it hands them what comes due (and stops before them)
            ChildSpec(
                "timer",
                Timer,
                args=(TimerEndpoint(store, clock, route(config.partitions), tracker, peers),),
            ),
            # after the senders (it hands them what it takes, and stops before them); its
            # children are added by rt.consume
            Supervisor.spec("sources", [], intensity=10, period=5.0),
            ChildSpec("sweeper", Sweeper, args=(sweeper,)),
            ChildSpec("status", StatusReporter, args=(StatusEndpoint(store, clock, snapshot),)),
            # after the senders: it hands them what it adopts (and stops before them)
            ChildSpec("slots", SlotKeeper, args=(store, recovery)),
            # The same for a record that crashes its replay worker.
            Supervisor.spec(
                "replay",
                [
                    *workers,
                    ChildSpec("coordinator", ReplayCoordinator, args=(coordinator, replays)),
                ],
                intensity=max(20, 10 * len(workers)),
                period=1.0,
            ),
        ]
        root = Supervisor.start(specs, name="surelay", intensity=10, period=5.0)
    except BaseException:
        if engines is not None:
            engines.stop(1.0)
        telemetry.close()
        raise
    try:
        peers.attach(root)
        sources = root.child("sources")
        assert isinstance(sources, SupervisorRef)
        gate = Gate(pressure, config.pressure, tracker, counters, clock)
        ingress = IngressEndpoint(config, store, names, tracker, counters, telemetry, gate, peers)
        way_in = WayIn(ingress)
        consumers = Consumers(ingress, engines, breakers, transports, recovery, sources, forwards)
        relays = Relays(ingress)
        readings = Readings(store, counters, tracker, backlog, pressure, breakers, engines)
        vitals = Vitals(root, readings, relays, consumers, recovery, lambda: way_in.closing, names)
        telemetry.gauges = vitals.gauges  # observed from now on
        snapshot.append(vitals.status)  # published from now on
        return Tree(
            root=root,
            peers=peers,
            states=states,
            replays=replays,
            recovery=recovery,
            way_in=way_in,
            consumers=consumers,
            relays=relays,
            dead_letters=DeadLetters(store, peers, replays),
            readings=readings,
            vitals=vitals,
            engines=engines,
            tracker=tracker,
            telemetry=telemetry,
            transports=names,
        )
    except BaseException:
        _stop(root, engines, telemetry)
        raise


def _engines(
    store: Store,
    config: RuntimeConfig,
    transports: dict[str, Transport],
    breakers: Breakers,
    telemetry: Telemetry,
) -> Engines:
    """The transports' engines, with their rates (shared through `<dir>/rates` when
    the config has any)."""
    rate_state = RateState(store.path / "rates") if config.rate_limits else None
    try:
        limiter = Limiter(config.rate_limits, rate_state, config.clock)
        return Engines(transports, config, breakers, telemetry, limiter)
    except BaseException:
        if rate_state is not None:
            rate_state.close()
        raise


def _stop(root: SupervisorRef, engines: Engines, telemetry: Telemetry) -> None:
    """Undo a start that failed once the tree ran, each part whatever the others do."""
    try:
        root.stop(timeout=5.0)
    finally:
        try:
            engines.stop(1.0)
        finally:
            telemetry.close()
