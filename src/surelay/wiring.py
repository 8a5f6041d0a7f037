"""Wiring: the supervision tree of a runtime, built from the state it shares.

```
root Supervisor "surelay" (one_for_one)
├── governor       PressureGovernor: samples depths, publishes the pressure level
├── retry          RetryScheduler: timer heap of held messages
├── dead_letters   DeadLetterSink: stores terminal failures
├── senders        Supervisor: Sender "sender-<i>" per partition
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

from dataclasses import dataclass
from types import MappingProxyType

from surelay.actors.dead_letter import DeadLetterSink, SinkEndpoint
from surelay.actors.governor import GovernorEndpoint, PressureGovernor
from surelay.actors.replay import ReplayCoordinator, ReplayState
from surelay.actors.replay_worker import ReplayWorker, WorkerState
from surelay.actors.retry import RetryEndpoint, RetryScheduler
from surelay.actors.sender import PartitionState, Sender
from surelay.actors.slot_keeper import SlotKeeper
from surelay.actors.status import Snapshot, StatusEndpoint, StatusReporter
from surelay.actors.sweeper import Sweeper, SweeperEndpoint
from surelay.actors.window import limits_for
from surelay.backlog import RetryBacklog
from surelay.config import RuntimeConfig
from surelay.delivery import Engines
from surelay.delivery.breakers import Breakers
from surelay.hub import Counters, Hub, Transport
from surelay.peers import Peers
from surelay.receipts import Tracker
from surelay.recovery import Recovery
from surelay.storage.store import Store
from surelay.supervision import ChildSpec, Supervisor, SupervisorRef
from surelay.telemetry import Telemetry

__all__ = ["Tree", "start", "tree"]


@dataclass(frozen=True, slots=True)
class Tree:
    """A runtime's parts once its supervision tree runs (see `start`)."""

    hub: Hub
    root: SupervisorRef
    states: list[PartitionState]
    replays: ReplayState
    recovery: Recovery
    sources: SupervisorRef
    """The supervisor of the consumers `rt.consume` adds."""
    snapshot: list[Snapshot]
    """Where the runtime puts the function whose status the StatusReporter publishes."""


def start(store: Store, config: RuntimeConfig, transports: dict[str, Transport]) -> Tree:
    """Make what the actors share, start the tree and let the parts find its actors by
    name (`Peers.attach`). A failure stops what was started (not the store: the caller
    opened it) and is raised."""
    telemetry = Telemetry()  # observes the runtime's gauges once it exists
    engines: Engines | None = None
    try:
        breakers = Breakers(config.breaker, transports)
        engines = Engines(transports, config, breakers, telemetry)
        hub = Hub(
            store=store,
            config=config,
            transports=MappingProxyType(transports),
            tracker=Tracker(),
            counters=Counters(telemetry),
            telemetry=telemetry,
            breakers=breakers,
            backlog=RetryBacklog(),
            engines=engines,
            peers=Peers(config.partitions, config.replay_partitions),
        )
        limits = limits_for(config.partitions, config.pressure.capacity)
        states = [PartitionState(i, limits) for i in range(config.partitions)]
        replays = ReplayState()
        recovery = Recovery(hub)
        snapshot: list[Snapshot] = []
        root = Supervisor.start(
            tree(hub, states, replays, snapshot, recovery),
            name="surelay",
            intensity=10,
            period=5.0,
        )
    except BaseException:
        if engines is not None:
            engines.stop(1.0)
        telemetry.close()
        raise
    hub.peers.attach(root)
    sources = root.child("sources")
    assert isinstance(sources, SupervisorRef)
    return Tree(hub, root, states, replays, recovery, sources, snapshot)


def tree(
    hub: Hub,
    states: list[PartitionState],
    replays: ReplayState,
    snapshot: list[Snapshot],
    recovery: Recovery,
) -> list[ChildSpec]:
    partitions = len(states)
    store, config, clock = hub.store, hub.config, hub.config.clock
    sweeper = SweeperEndpoint(store, clock, config.dedup_ttl, config.dead_letter_ttl)
    sink = SinkEndpoint(store, hub.tracker, hub.counters, hub.telemetry, set())
    governor = GovernorEndpoint(
        hub.pressure,
        config.pressure,
        hub.tracker,
        hub.backlog,
        hub.counters,
        store if hub.durable else None,
        hub.telemetry,
        hub.peers,
    )
    senders = [
        ChildSpec(f"sender-{i}", Sender, args=(hub, states[i]), shutdown=5.0)
        for i in range(partitions)
    ]
    workers = [
        ChildSpec(f"replay-{i}", ReplayWorker, args=(hub, replays, WorkerState(i)), shutdown=5.0)
        for i in range(hub.config.replay_partitions)
    ]
    coordinator = ChildSpec("coordinator", ReplayCoordinator, args=(hub, replays))
    return [
        ChildSpec("governor", PressureGovernor, args=(governor,)),
        ChildSpec("retry", RetryScheduler, args=(RetryEndpoint(hub.backlog, clock, hub.peers),)),
        ChildSpec("dead_letters", DeadLetterSink, args=(sink,)),
        # A poison message crashes its sender at most twice before it is dead-lettered,
        # so only a sender that cannot run at all should exhaust this.
        Supervisor.spec("senders", senders, intensity=max(20, 10 * partitions), period=1.0),
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
            [*workers, coordinator],
            intensity=max(20, 10 * len(workers)),
            period=1.0,
        ),
    ]
