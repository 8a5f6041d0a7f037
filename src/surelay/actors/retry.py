"""Retry scheduling: when a failed delivery is tried again (the pure part).

`retry_delay` is a pure function of the policy, the retry number and a random source,
tested without threads or clocks; the `RetryScheduler` actor is the thin shell that owns
the timer heap and hands due messages back to their senders.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import Alarm
from surelay.config import RetryPolicy
from surelay.storage.records import OutboxEntry
from surelay.supervision import Actor, CrashReport

if TYPE_CHECKING:
    from surelay.actors.hub import Hub

__all__ = ["Due", "RetryBacklog", "RetryScheduler", "Schedule", "can_retry", "retry_delay"]


def can_retry(policy: RetryPolicy, attempts_made: int) -> bool:
    """True while another attempt is allowed after `attempts_made` attempts."""
    return attempts_made < policy.max_attempts


def retry_delay(
    policy: RetryPolicy, retry: int, rng: random.Random, previous: float | None = None
) -> float:
    """Seconds to wait before retry number `retry` (1 = the first retry).

    The first `policy.immediate_retries` retries wait 0. For the n-th delayed retry the
    un-jittered delay is `min(base_delay * multiplier ** (n - 1), max_delay)`, and:
    - `none`: that delay;
    - `full`: uniform in [0, delay];
    - `equal`: delay / 2 plus uniform in [0, delay / 2];
    - `decorrelated`: uniform in [base_delay, 3 * previous], capped at `max_delay`
      (`previous` is the last delay used, `base_delay` for the first delayed retry).
    """
    if retry < 1:
        raise ValueError(f"retry must be >= 1, got {retry}")
    n = retry - policy.immediate_retries
    if n < 1:
        return 0.0
    delay = _capped(policy, n)
    if policy.jitter == "none":
        return delay
    if policy.jitter == "full":
        return rng.uniform(0.0, delay)
    if policy.jitter == "equal":
        return delay / 2 + rng.uniform(0.0, delay / 2)
    last = policy.base_delay if previous is None else max(previous, policy.base_delay)
    return min(policy.max_delay, rng.uniform(policy.base_delay, last * 3))


def _capped(policy: RetryPolicy, n: int) -> float:
    """`min(base_delay * multiplier ** (n - 1), max_delay)`, safe for any n."""
    if policy.base_delay == 0:
        return 0.0
    try:
        return min(policy.base_delay * policy.multiplier ** (n - 1), policy.max_delay)
    except OverflowError:  # the exponential passed max_delay long ago
        return policy.max_delay


# -- the actor -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """Hand `entry` back to the sender of `partition` at clock time `at`."""

    partition: int
    entry: OutboxEntry
    at: float


@dataclass(frozen=True, slots=True)
class Due:
    """To a sender: `entry`, held for a retry (or its breaker), may be sent now."""

    entry: OutboxEntry


@dataclass(frozen=True, slots=True)
class _Tick:
    """The alarm rang: hand back whatever is due."""


class RetryBacklog:
    """The timer heap of held messages, kept outside the actor so that a scheduler
    crash loses no entry (the next incarnation takes it over). Thread-safe to read."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Schedule]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def push(self, item: Schedule) -> float:
        """Add an item; returns the earliest due time."""
        with self._lock:
            heapq.heappush(self._heap, (item.at, next(self._order), item))
            return self._heap[0][0]

    def pop_due(self, now: float) -> list[Schedule]:
        with self._lock:
            out = []
            while self._heap and self._heap[0][0] <= now:
                out.append(heapq.heappop(self._heap)[2])
            return out

    def next_at(self) -> float | None:
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


class RetryScheduler(Actor):
    """Owns the retry timer heap: senders `Schedule` held messages; when one is due it
    goes back to its partition's sender as `Due`. Due times are also persisted in the
    outbox (by the sender), so retries survive a restart of the whole process."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub
        self._alarm: Alarm | None = None

    def on_start(self) -> None:
        ref = self.ref if self.ref is not None else self.actor_ref
        self._alarm = Alarm(lambda: ref.tell(_Tick()), self._hub.config.clock, name="surelay-retry")
        self._alarm.set(self._hub.backlog.next_at())

    def on_stop(self) -> None:
        self._stop_alarm()

    def on_failure(self, *_exc_info: Any) -> None:
        self._stop_alarm()

    def on_restart(self, crash: CrashReport) -> None:
        if isinstance(crash.message, Schedule):  # the one message the crash took
            self._hub.backlog.push(crash.message)
            self._rearm()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Schedule):
            self._hub.backlog.push(message)
        elif isinstance(message, _Tick):
            hub = self._hub
            for item in hub.backlog.pop_due(hub.config.clock()):
                hub.senders[item.partition].tell(Due(item.entry))
        self._rearm()

    def _rearm(self) -> None:
        if self._alarm is not None:
            self._alarm.set(self._hub.backlog.next_at())

    def _stop_alarm(self) -> None:
        if self._alarm is not None:
            self._alarm.stop()
            self._alarm = None
