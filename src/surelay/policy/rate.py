"""The rate rule: GCRA (the generic cell rate algorithm), a token bucket kept as one
number per group, the theoretical arrival time (TAT) of its next call.

A rate of `count` calls per `per` seconds spaces calls `interval = per / count` apart;
`burst` calls may go at once after an idle spell (`tolerance = (burst - 1) * interval`).
A call asked for at `now` may go at `max(tat, now) - tolerance`; taking it moves the TAT
one interval on. A call that must wait reserves its turn if that turn is within
`horizon` seconds (it then goes at its turn, asking nothing more), and otherwise comes
back when it is (reserving nothing meanwhile: a process that dies holds no turn past
the horizon). Pure functions over plain numbers; `surelay.delivery.limiter` keeps the
TATs, `surelay.storage.rate_state` shares them between processes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Turn", "pause", "take_turn"]


@dataclass(frozen=True, slots=True)
class Turn:
    """The answer to one call's ask: go after `wait` seconds (0: at once); `reserved`:
    its turn is taken (it goes then without asking again); `tat`: the group's new TAT."""

    wait: float
    reserved: bool
    tat: float


def take_turn(tat: float, now: float, *, interval: float, tolerance: float, horizon: float) -> Turn:
    """One call's turn in a group whose next call is due at `tat` (see the module)."""
    due = max(tat, now)
    allowed = due - tolerance
    if allowed <= now:
        return Turn(0.0, True, due + interval)
    wait = allowed - now
    if wait <= horizon:
        return Turn(wait, True, due + interval)
    return Turn(wait - horizon, False, tat)


def pause(tat: float, until: float) -> float:
    """The TAT of a group told to wait until `until` (a 429's `Retry-After`): no call
    before then, and the configured rate after it."""
    return max(tat, until)
