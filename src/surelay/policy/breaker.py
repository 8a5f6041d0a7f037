"""Circuit breaker per transport (the pure part): a state machine over call outcomes.

`BreakerState` is a value; `allow` and `record` return the next one. The rules:

- closed: every call passes; the last `window` outcomes are kept; once at least
  `min_calls` are in the window and the failure share reaches `failure_ratio`, it opens;
  so do `min_calls` failures in a row, so that an outage after a long healthy run opens
  it within `min_calls` calls rather than after half a window of failures;
- open: no call passes for `open_for` seconds, then it is half-open;
- half-open: exactly `half_open_calls` probes pass; all succeeding closes it (with a fresh
  window), any failing opens it again. Probes that bring no outcome within
  `2 * open_for` (their call was lost) make way for a new half-open period, so a lost
  probe can never keep the breaker half-open for ever.

Calls run concurrently, so an outcome may arrive after the state it was allowed in has
gone. Each allowed call carries a ticket (`None` for a call allowed while closed, the
`opened_at` of its half-open period for a probe), and `record` counts an outcome only in
the state that allowed it: a call that was in flight when the breaker opened settles
normally (its message is retried or delivered) but neither re-opens nor closes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from surelay.config import BreakerPolicy

__all__ = ["STATE_GAUGE", "BreakerState", "State", "allow", "at", "record", "retry_in", "steady"]

State = Literal["closed", "half_open", "open"]

STATE_GAUGE: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}
"""Values of the `surelay.breaker.state` gauge."""


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: State = "closed"
    outcomes: tuple[bool, ...] = ()  # closed: the window, True for a failure
    failures: int = 0  # closed: failures in the window
    streak: int = 0  # closed: failures in a row at the end of the window
    opened_at: float = 0.0
    probes: int = 0  # half-open: probes let through
    successes: int = 0  # half-open: probes that succeeded
    probed_at: float = 0.0  # half-open: when the last probe was let through


def at(state: BreakerState, policy: BreakerPolicy, now: float) -> BreakerState:
    """`state` as of `now`: open turns half-open after `open_for`, and lost probes
    make way for a new half-open period."""
    return _now(state, policy, now)


def _now(state: BreakerState, policy: BreakerPolicy, now: float) -> BreakerState:
    if state.state == "open" and now - state.opened_at >= policy.open_for:
        return BreakerState("half_open", opened_at=state.opened_at)
    if (
        state.state == "half_open"
        and state.probes >= policy.half_open_calls
        and now - state.probed_at >= 2 * policy.open_for
    ):
        return BreakerState("half_open", opened_at=now)  # a new period: new tickets
    return state


def allow(
    state: BreakerState, policy: BreakerPolicy, now: float
) -> tuple[bool, float | None, BreakerState]:
    """Whether a call may go to the transport now, its ticket (None while closed, the
    half-open period's `opened_at` for a probe) and the state after deciding."""
    current = _now(state, policy, now)
    if current.state == "closed":
        return True, None, current
    if current.state == "half_open" and current.probes < policy.half_open_calls:
        probing = replace(current, probes=current.probes + 1, probed_at=now)
        return True, current.opened_at, probing
    return False, None, current


def steady(state: BreakerState, policy: BreakerPolicy) -> bool:
    """Closed with a full window of successes: another success changes nothing."""
    return state.state == "closed" and not state.failures and len(state.outcomes) >= policy.window


def record(
    state: BreakerState,
    policy: BreakerPolicy,
    now: float,
    failed: bool,
    ticket: float | None = None,
) -> BreakerState:
    """The state after the outcome of a call allowed with `ticket`."""
    current = _now(state, policy, now)
    if not failed and steady(current, policy):
        return current  # the common case: no window copy
    if current.state == "closed":
        if ticket is not None:
            return current  # a probe of an earlier half-open period: already decided
        window = (*current.outcomes, failed)[-policy.window :]
        failures = sum(window)
        streak = current.streak + 1 if failed else 0
        if streak >= policy.min_calls or (
            len(window) >= policy.min_calls and failures / len(window) >= policy.failure_ratio
        ):
            return BreakerState("open", opened_at=now)
        return replace(current, outcomes=window, failures=failures, streak=streak)
    if current.state == "half_open":
        if ticket != current.opened_at:
            return current  # not one of this period's probes
        if failed:
            return BreakerState("open", opened_at=now)
        if current.successes + 1 >= policy.half_open_calls:
            return BreakerState()
        return replace(current, successes=current.successes + 1)
    return current  # open: a late outcome of a call made before it opened changes nothing


def retry_in(state: BreakerState, policy: BreakerPolicy, now: float) -> float:
    """Seconds until a call may pass (0 if one may pass now)."""
    current = _now(state, policy, now)
    if current.state == "open":
        return max(0.0, current.opened_at + policy.open_for - now)
    if current.state == "half_open" and current.probes >= policy.half_open_calls:
        return policy.open_for  # probes are out: wait for their outcomes, at most this long
    return 0.0
