"""The PressureGovernor: samples the work in hand and publishes the pressure level.

Every `PERIOD` seconds (real time), and when `send` asks for a sample (`Sample`, told
when in-flight work crosses a threshold between samples), it reads the depths that
matter (messages in flight, the retry backlog, the outbox, sender mailboxes), measures
how fast work drains, and moves the level by `surelay.pressure.next_level`. The result
goes into a `PressureState` that `send` reads without an actor round trip. Every level
change emits a `surelay.pressure` span and a log line.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import AlarmOwner
from surelay.pressure import LEVELS, PressureState, next_level, retry_after
from surelay.telemetry import ATTR_PRESSURE_LEVEL, SPAN_PRESSURE

if TYPE_CHECKING:
    from surelay.backlog import RetryBacklog
    from surelay.config import PressurePolicy
    from surelay.counters import Counters
    from surelay.peers import Peers
    from surelay.receipts import Tracker
    from surelay.storage.store import Store
    from surelay.telemetry import Telemetry

__all__ = ["PERIOD", "GovernorEndpoint", "PressureGovernor", "Sample"]

logger = logging.getLogger("surelay.actors")

PERIOD = 0.05
"""Seconds between samples."""

DRAIN_WINDOW = 1.0
"""Seconds of busy history the drain rate is measured over."""

_ENDED = ("delivered", "dead_lettered", "duplicates")


@dataclass(frozen=True, slots=True)
class Sample:
    """Sample now (the alarm's message, and `send`'s request)."""


@dataclass(frozen=True, slots=True)
class GovernorEndpoint:
    """What the governor samples and where it publishes: the pressure state it owns,
    the policy, the depths it reads (messages in flight, retries held, the senders'
    mailboxes, the outbox: `store` is None when messages are not kept there) and the
    counters of ended messages."""

    state: PressureState
    policy: PressurePolicy
    tracker: Tracker
    backlog: RetryBacklog
    counters: Counters
    store: Store | None
    telemetry: Telemetry
    peers: Peers


class PressureGovernor(AlarmOwner):
    def __init__(self, endpoint: GovernorEndpoint) -> None:
        super().__init__()
        self._at = endpoint
        self._state = endpoint.state
        self._history: deque[tuple[float, int]] = deque()
        self._busy_since = 0.0

    def on_start(self) -> None:
        self.start_alarm(
            Sample(), time.monotonic, name="surelay-governor", at=time.monotonic(), poll=PERIOD
        )

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Sample):
            return None
        now = time.monotonic()
        self._sample(now)
        if self._alarm is not None:
            self._alarm.set(now + PERIOD)
        return self._state.level

    def _sample(self, now: float) -> None:
        at = self._at
        state = self._state
        state.sample_asked = False
        policy = at.policy
        in_flight = at.tracker.pending
        depths = {
            "in_flight": in_flight,
            "retry_pending": len(at.backlog),
            # (its first sample may come before the tree runs: no sender yet)
            "mailboxes": sum(r.queued() for r in at.peers.senders) if at.peers.attached else 0,
            "outbox_pending": self._outbox_pending(),
        }
        counters = at.counters.snapshot()
        ended = sum(counters[name] for name in _ENDED)
        # The level is about the work in hand: what memory holds, or the backlog on disk
        # when that is larger (messages past the window wait there, not counted by the
        # tracker). A backlog that outgrows the capacity sheds LOW; NORMAL and HIGH go on
        # into the outbox, bounded by the disk, since the hard bound counts memory only.
        work = max(in_flight, depths["outbox_pending"])
        state.drain = self._drain(now, ended, busy=work > 0)
        ratio = work / policy.capacity
        level = next_level(state.level, ratio, policy)
        state.depths = depths
        state.ratio = ratio
        state.retry_after = retry_after(work, policy, state.drain, state.measured_for)
        if level != state.level:
            self._transition(state.level, level, depths, ratio)
            state.level = level

    def _drain(self, now: float, ended: int, *, busy: bool) -> float:
        """Messages ended per second over the last `DRAIN_WINDOW` seconds in which work
        was in hand (idle time before a burst would make a busy runtime look slow, and a
        refused sender wait far too long)."""
        history = self._history
        if not busy:
            history.clear()
            self._state.measured_for = 0.0
            return self._state.drain
        if not history:
            self._busy_since = now
        history.append((now, ended))
        while now - history[0][0] > DRAIN_WINDOW:
            history.popleft()
        first_at, first_ended = history[0]
        self._state.measured_for = now - self._busy_since
        if now - first_at < PERIOD:
            return self._state.drain  # too short to say: the last measure stands
        return (ended - first_ended) / (now - first_at)

    def _outbox_pending(self) -> int:
        store = self._at.store
        if store is None or store.env.closed:
            return 0
        with store.read() as txn:
            return store.outbox.count(txn)

    def _transition(self, before: str, after: str, depths: dict[str, int], ratio: float) -> None:
        state = self._state
        state.transitions += 1
        log = logger.warning if LEVELS.index(after) > LEVELS.index(before) else logger.info
        log(
            "pressure %s -> %s: %.0f%% of capacity in flight (%s), draining %.0f/s",
            before,
            after,
            100 * ratio,
            ", ".join(f"{k} {v}" for k, v in depths.items()),
            state.drain,
        )
        telemetry = self._at.telemetry
        if telemetry.tracing:
            span = telemetry.tracer.start_span(
                SPAN_PRESSURE,
                attributes={
                    ATTR_PRESSURE_LEVEL: after,
                    "surelay.pressure.previous": before,
                    "surelay.pressure.ratio": ratio,
                    **{f"surelay.pressure.{k}": v for k, v in depths.items()},
                },
            )
            span.end()
