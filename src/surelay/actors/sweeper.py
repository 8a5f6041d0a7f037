"""The Sweeper: background retention, so the store does not grow without bound.

Every `interval` clock seconds it removes expired dedup and inbox records (`dedup_ttl`)
and, when `dead_letter_ttl` is set, dead letters that failed longer ago than that. Each
sweep removes at most `SWEEP_LIMIT` records per table in one write, so a large backlog is
worked off over several sweeps without holding the writer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import AlarmOwner

if TYPE_CHECKING:
    from surelay.hub import Hub

__all__ = ["SWEEP_LIMIT", "Sweep", "Sweeper", "sweep_interval"]

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


class Sweeper(AlarmOwner):
    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub
        config = hub.config
        self._interval = sweep_interval(config.dedup_ttl, config.dead_letter_ttl)

    def on_start(self) -> None:
        clock = self._hub.config.clock
        self.start_alarm(
            Sweep(), clock, name="surelay-sweeper", at=clock() + self._interval, poll=0.2
        )

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Sweep):
            return None
        hub = self._hub
        now = hub.config.clock()
        removed = {
            "dedup": hub.store.sweep_dedup(now=now, limit=SWEEP_LIMIT).result(),
            "inbox": hub.store.sweep_inbox(now=now, limit=SWEEP_LIMIT).result(),
        }
        if hub.config.dead_letter_ttl is not None:
            removed["dead_letters"] = hub.store.sweep_dead_letters(
                hub.config.dead_letter_ttl, now=now, limit=SWEEP_LIMIT
            ).result()
        if any(removed.values()):
            logger.info("retention sweep removed %s", removed)
        if self._alarm is not None:
            full = any(n >= SWEEP_LIMIT for n in removed.values())
            self._alarm.set(now if full else now + self._interval)
        return removed
