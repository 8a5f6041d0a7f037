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

from surelay.actors.dead_letter import DeadLetterSink
from surelay.actors.governor import PressureGovernor
from surelay.actors.replay import ReplayCoordinator, ReplayState
from surelay.actors.replay_worker import ReplayWorker, WorkerState
from surelay.actors.retry import RetryScheduler
from surelay.actors.sender import PartitionState, Sender
from surelay.actors.slot_keeper import SlotKeeper
from surelay.actors.status import Snapshot, StatusReporter
from surelay.actors.sweeper import Sweeper
from surelay.hub import Hub
from surelay.recovery import Recovery
from surelay.supervision import ChildSpec, Supervisor

__all__ = ["tree"]


def tree(
    hub: Hub,
    states: list[PartitionState],
    replays: ReplayState,
    snapshot: list[Snapshot],
    recovery: Recovery,
) -> list[ChildSpec]:
    partitions = len(states)
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
        ChildSpec("governor", PressureGovernor, args=(hub, hub.pressure)),
        ChildSpec("retry", RetryScheduler, args=(hub,)),
        ChildSpec("dead_letters", DeadLetterSink, args=(hub, set())),
        # A poison message crashes its sender at most twice before it is dead-lettered,
        # so only a sender that cannot run at all should exhaust this.
        Supervisor.spec("senders", senders, intensity=max(20, 10 * partitions), period=1.0),
        # after the senders (it hands them what it takes, and stops before them); its
        # children are added by rt.consume
        Supervisor.spec("sources", [], intensity=10, period=5.0),
        ChildSpec("sweeper", Sweeper, args=(hub,)),
        ChildSpec("status", StatusReporter, args=(hub, snapshot)),
        # after the senders: it hands them what it adopts (and stops before them)
        ChildSpec("slots", SlotKeeper, args=(hub, recovery)),
        # The same for a record that crashes its replay worker.
        Supervisor.spec(
            "replay",
            [*workers, coordinator],
            intensity=max(20, 10 * len(workers)),
            period=1.0,
        ),
    ]
