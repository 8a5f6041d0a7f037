"""The Sweeper: background retention, so the store does not grow without bound.

Every `interval` clock seconds it removes expired dedup, inbox and message-status records
(`dedup_ttl`), and, when `dead_letter_ttl` is set, dead letters that failed longer ago
than that. With push, it also ends the retention of pushed messages (those no device
acked become dead letters), waking at the next one due rather than a whole interval
late. Each
sweep removes at most `SWEEP_LIMIT` records per table in one write, so a large backlog is
worked off over several sweeps without holding the writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import AlarmOwner

if TYPE_CHECKING:
    from surelay.storage.store import Store

__all__ = ["SWEEP_LIMIT", "Sweep", "Sweeper", "SweeperEndpoint", "sweep_interval"]

logger = logging.getLogger("surelay.actors")

SWEEP_LIMIT = 10_000


def sweep_interval(dedup_ttl: float, dead_letter_ttl: float | None) -> float:
    """A tenth of the shortest TTL, between 1 s and 60 s: expired records outlive their
    TTL by at most about a tenth of it (or a minute)."""
    shortest = min(dedup_ttl, dead_letter_ttl) if dead_letter_ttl is not None else dedup_ttl
    return min(60.0, max(1.0, shortest / 10))


@dataclass(frozen=True, slots=True)
class Sweep:
    """Sweep now (also sent by the alarm)."""


@dataclass(frozen=True, slots=True)
class SweeperEndpoint:
    """What the Sweeper works with: the store it sweeps, the clock, the retention."""

    store: Store
    clock: Callable[[], float]
    dedup_ttl: float
    dead_letter_ttl: float | None
    push_expire: Callable[[float], int] | None = None
    """Ends the push retention due at a time; returns how many messages failed."""
    push_next: Callable[[], float | None] | None = None
    """When the next push retention ends."""


class Sweeper(AlarmOwner):
    def __init__(self, endpoint: SweeperEndpoint) -> None:
        super().__init__()
        self._at = endpoint
        self._interval = sweep_interval(endpoint.dedup_ttl, endpoint.dead_letter_ttl)

    def on_start(self) -> None:
        clock = self._at.clock
        self.start_alarm(Sweep(), clock, name="surelay-sweeper", at=self._next(clock()), poll=0.2)

    def _next(self, now: float) -> float:
        """The next sweep: an interval on, or sooner when a push retention ends."""
        later = now + self._interval
        if self._at.push_next is not None:
            due = self._at.push_next()
            if due is not None:
                later = min(later, max(due, now + 1.0))  # (at most one push sweep a second)
        return later

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Sweep):
            return None
        at = self._at
        now = at.clock()
        removed = {
            "dedup": at.store.sweep_dedup(now=now, limit=SWEEP_LIMIT).result(),
            "inbox": at.store.sweep_inbox(now=now, limit=SWEEP_LIMIT).result(),
            "status": at.store.sweep_ended(now=now, limit=SWEEP_LIMIT).result(),
        }
        if at.dead_letter_ttl is not None:
            removed["dead_letters"] = at.store.sweep_dead_letters(
                at.dead_letter_ttl, now=now, limit=SWEEP_LIMIT
            ).result()
        if at.push_expire is not None:
            removed["push_failed"] = at.push_expire(now)
        if any(removed.values()):
            logger.info("retention sweep removed %s", removed)
        if self._alarm is not None:
            full = any(n >= SWEEP_LIMIT for n in removed.values())
            self._alarm.set(now if full else self._next(now))
        return removed
