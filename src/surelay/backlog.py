"""`RetryBacklog`: the timer heap of messages held until a retry time (or until their
breaker lets a call through). It is state, not an actor: it outlives the RetryScheduler's
incarnations, so a scheduler crash loses no entry, and `stats()` reads its size."""

from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass

from surelay.storage.records import OutboxEntry

__all__ = ["Due", "RetryBacklog", "Schedule"]


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
