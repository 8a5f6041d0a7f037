"""Admission: whether the runtime takes messages now. A send is refused
(`Overloaded`, counted by transport, priority and reason) or slowed by the published
pressure level and the per-key rates; a pull (a source's consumer, a SQL relay) takes
only what `room` allows. One rule for every way in, from `surelay.pressure`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from surelay.envelope import Priority
from surelay.errors import InvalidMessage, Overloaded
from surelay.ingress.checks import Checked
from surelay.pressure import admission, hard_bound
from surelay.ratelimit import KeyRates

if TYPE_CHECKING:
    from surelay.config import PressurePolicy
    from surelay.counters import Counters
    from surelay.pressure import PressureState
    from surelay.receipts import Tracker

__all__ = ["Gate", "check_pressure", "refuse", "room"]


@dataclass(frozen=True, slots=True)
class Gate:
    """What admission reads and counts: the pressure level the governor publishes,
    the policy, the messages in flight, the refusal counters and the clock (for the
    per-key rates)."""

    pressure: PressureState
    policy: PressurePolicy
    tracker: Tracker
    counters: Counters
    clock: Callable[[], float]


def room(gate: Gate, priority: Priority, mine: int) -> int:
    """How many messages of `priority` a pull may take now: none while the pressure
    level would refuse or slow a send of it, else up to `mine` within the priority's
    bound on messages in flight."""
    state = gate.pressure
    policy = gate.policy
    if state.level != "normal":
        decision = admission(state.level, priority, state.ratio, policy)
        if not decision.admit or decision.delay > 0:
            return 0
    return max(0, min(mine, hard_bound(priority, policy) - gate.tracker.pending))


def check_pressure(gate: Gate, rates: KeyRates | None, checked: list[Checked]) -> float:
    """Refuse (`Overloaded`) a send by the published pressure level and the per-key
    rates, or return how long to slow it down; a batch is admitted or refused
    whole."""
    state = gate.pressure
    level = state.level
    if level == "normal" and rates is None:
        return 0.0  # every priority is admitted at once
    policy = gate.policy
    delay = 0.0
    priorities = {priority for _, _, _, _, priority, *_ in checked}
    for priority in priorities:
        decision = admission(level, priority, state.ratio, policy)
        if not decision.admit:
            refuse(
                gate,
                [transport for transport, *_ in checked],
                priorities,
                reason=decision.reason,
                after=state.retry_after,
                why=f"pressure is {level}: {priority.name} sends are shed",
            )
        delay = max(delay, decision.delay)
    if rates is not None:
        keys = [key for _, _, key, *_ in checked if key is not None]
        wait = rates.take(keys, gate.clock()) if keys else 0.0
        if wait == float("inf"):
            raise InvalidMessage(
                f"the batch holds more messages for one key than rate_per_key allows "
                f"at once ({policy.rate_per_key}); split it"
            )
        if wait > 0:
            refuse(
                gate,
                [transport for transport, *_ in checked],
                priorities,
                reason="rate_per_key",
                after=wait,
                why=f"a key is over its rate {policy.rate_per_key} (count, per_seconds)",
            )
    return delay


def refuse(
    gate: Gate,
    transports: list[str],
    priorities: Iterable[Priority],
    *,
    reason: str,
    after: float,
    why: str,
) -> NoReturn:
    """Count the refusal (by the batch's lowest priority) and raise `Overloaded`."""
    priority = max(priorities, key=lambda p: p.rank).name
    gate.counters.refused(transports, priority, reason)
    raise Overloaded(f"{why}; nothing was accepted, retry after {after:.3g}s", retry_after=after)
