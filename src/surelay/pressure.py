"""Pressure: the level rules and the admission rules, as pure functions.

The PressureGovernor (`surelay.actors.governor`) samples how much work is in hand and
calls `next_level`; `send` calls `admission` with the published level. Keeping the rules
here, apart from threads and clocks, lets hypothesis check them directly.

Levels, on `ratio = in_flight / capacity`:

- `normal` → `elevated` at `elevated_at`, → `critical` at `critical_at`;
- `elevated` → `critical` at `critical_at`, → `normal` only below `recover_at`;
- `critical` → stays at or above `elevated_at`; below it, `elevated`, or `normal` below
  `recover_at`.

So a ratio hovering anywhere between `recover_at` and `elevated_at` never moves the
level, and one hovering around `critical_at` does not flap between critical and elevated.

Admission, per priority:

| level | HIGH | NORMAL | LOW |
|---|---|---|---|
| normal | admit | admit | admit |
| elevated | admit | admit | admit after a bounded delay (`THROTTLE_MAX`) |
| critical | admit | refused if in `shed` | refused if in `shed` (by default) |

and, whatever the level, a send that would take `in_flight` past `capacity` is refused
unless HIGH, and HIGH is refused past the hard bound `capacity * (1 + HIGH_ALLOWANCE)`
(checked atomically as the message is accepted, so the bounds are exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from surelay.config import PressurePolicy
from surelay.envelope import Priority

__all__ = [
    "HIGH_ALLOWANCE",
    "LEVELS",
    "THROTTLE_MAX",
    "Decision",
    "Level",
    "PressureState",
    "admission",
    "hard_bound",
    "next_level",
    "retry_after",
]

Level = Literal["normal", "elevated", "critical"]

LEVELS: tuple[Level, ...] = get_args(Level)
"""In order; a level's index is the `surelay.pressure.level` gauge value."""

HIGH_ALLOWANCE = 0.25
"""HIGH may go this fraction of `capacity` past it before it too is refused."""

THROTTLE_MAX = 0.05
"""Seconds a LOW send waits at most while `elevated` (at `critical_at`; less below)."""


def next_level(current: Level, ratio: float, policy: PressurePolicy) -> Level:
    """The level after observing `ratio` (in flight / capacity) while at `current`."""
    if ratio >= policy.critical_at:
        return "critical"
    if ratio < policy.recover_at:
        return "normal"
    if current == "critical":
        return "critical" if ratio >= policy.elevated_at else "elevated"
    if current == "elevated" or ratio >= policy.elevated_at:
        return "elevated"
    return "normal"


def hard_bound(priority: Priority, policy: PressurePolicy) -> int:
    """The most messages in flight a send of `priority` may bring about."""
    if priority is Priority.HIGH:
        return policy.capacity + int(policy.capacity * HIGH_ALLOWANCE)
    return policy.capacity


@dataclass(frozen=True, slots=True)
class Decision:
    """`admit`; or wait `delay` seconds first; or refuse (`reason`, `retry_after`)."""

    admit: bool
    delay: float = 0.0
    reason: str = ""


def admission(level: Level, priority: Priority, ratio: float, policy: PressurePolicy) -> Decision:
    """What to do with a send of `priority` at `level` (the capacity bounds are checked
    separately, at acceptance)."""
    if level == "critical" and priority in policy.shed:
        return Decision(False, reason="critical")
    if level in ("elevated", "critical") and priority is Priority.LOW:
        span = policy.critical_at - policy.elevated_at
        depth = min(1.0, max(0.0, (ratio - policy.elevated_at) / span)) if span > 0 else 1.0
        return Decision(True, delay=THROTTLE_MAX * max(depth, 0.1))
    return Decision(True)


SETTLED = 1.0
"""Seconds of busy time after which a measured drain rate is trusted for `retry_after`."""


def retry_after(
    in_flight: int,
    policy: PressurePolicy,
    drain_per_second: float,
    measured_for: float = math.inf,
) -> float:
    """Seconds until the level should be back to `normal` at the measured drain rate:
    the honest wait for a refused sender. Between 0.05 s and 60 s; 1 s if nothing was
    measured yet. A rate measured over less than `SETTLED` seconds of busy time is still
    ramping up (the pool is growing, the first calls are only returning), so it may only
    shorten the wait below 1 s, never lengthen it."""
    excess = in_flight - policy.recover_at * policy.capacity
    if excess <= 0:
        return 0.05
    if drain_per_second <= 0:
        return 1.0
    wait = min(60.0, max(0.05, excess / drain_per_second))
    return wait if measured_for >= SETTLED else min(wait, 1.0)


@dataclass
class PressureState:
    """What the governor publishes (plain attributes: a read is one load, no lock)."""

    level: Level = "normal"
    ratio: float = 0.0
    retry_after: float = 1.0
    """Seconds a refused sender should wait: to `recover_at` at the measured drain."""
    drain: float = 0.0
    """Messages ended per second, over the last second of busy time."""
    measured_for: float = 0.0
    """Seconds of busy time `drain` was measured over (up to one second)."""
    depths: dict[str, int] = field(default_factory=dict)
    sample_asked: bool = False
    transitions: int = 0
