"""Circuit breaker per transport (the pure part): a state machine over call outcomes.

`BreakerState` is a value; `allow` and `record` return the next one. The sender that
owns a transport's breaker keeps the state and the clock; this module holds the rules:

- closed: every call passes; the last `window` outcomes are kept; once at least
  `min_calls` are in the window and the failure share reaches `failure_ratio`, it opens;
- open: no call passes for `open_for` seconds, then it is half-open;
- half-open: `half_open_calls` probes pass; all succeeding closes it (with a fresh
  window), any failing opens it again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from surelay.config import BreakerPolicy

__all__ = ["STATE_GAUGE", "BreakerState", "Breakers", "allow", "record", "retry_in"]

STATE_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
"""Values of the `surelay.breaker.state` gauge."""


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: str = "closed"
    outcomes: tuple[bool, ...] = ()  # closed: the window, True for a failure
    failures: int = 0  # closed: failures in the window
    opened_at: float = 0.0
    probes: int = 0  # half-open: probes let through
    successes: int = 0  # half-open: probes that succeeded


def _now(state: BreakerState, policy: BreakerPolicy, now: float) -> BreakerState:
    if state.state == "open" and now - state.opened_at >= policy.open_for:
        return BreakerState("half_open", opened_at=state.opened_at)
    return state


def allow(state: BreakerState, policy: BreakerPolicy, now: float) -> tuple[bool, BreakerState]:
    """Whether a call may go to the transport now, and the state after deciding."""
    current = _now(state, policy, now)
    if current.state == "closed":
        return True, current
    if current.state == "half_open" and current.probes < policy.half_open_calls:
        return True, replace(current, probes=current.probes + 1)
    return False, current


def _steady(state: BreakerState, policy: BreakerPolicy) -> bool:
    """Closed with a full window of successes: another success changes nothing."""
    return state.state == "closed" and not state.failures and len(state.outcomes) >= policy.window


def record(state: BreakerState, policy: BreakerPolicy, now: float, failed: bool) -> BreakerState:
    """The state after a call's outcome."""
    current = _now(state, policy, now)
    if not failed and _steady(current, policy):
        return current  # the common case: no window copy
    if current.state == "closed":
        window = (*current.outcomes, failed)[-policy.window :]
        failures = sum(window)
        if len(window) >= policy.min_calls and failures / len(window) >= policy.failure_ratio:
            return BreakerState("open", opened_at=now)
        return replace(current, outcomes=window, failures=failures)
    if current.state == "half_open":
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


class Breakers:
    """The breaker state of every transport, shared by all senders (thread-safe).

    Senders of every partition call the same transport, so its breaker is one value
    here, updated under a lock with the pure functions above.
    """

    def __init__(self, policy: BreakerPolicy, transports: Iterable[str]) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._states = {name: BreakerState() for name in transports}

    def allow(self, transport: str, now: float) -> float:
        """0 if a call to `transport` may go now (counted as a probe when half-open),
        else the seconds until one may."""
        if self._states[transport].state == "closed":
            return 0.0  # closed lets every call through and changes nothing: no lock
        with self._lock:
            ok, state = allow(self._states[transport], self._policy, now)
            self._states[transport] = state
            if ok:
                return 0.0
            wait = retry_in(state, self._policy, now)
            if state.state == "half_open":  # probes out: look again soon, not open_for later
                wait = min(wait, 1.0)
            return max(wait, 0.001)

    def record(self, transport: str, now: float, *, failed: bool) -> str:
        """Record a call's outcome; returns the state after it."""
        if not failed and _steady(self._states[transport], self._policy):
            return "closed"  # nothing to change, so no lock
        with self._lock:
            state = record(self._states[transport], self._policy, now, failed)
            self._states[transport] = state
            return state.state

    def states(self, now: float) -> dict[str, str]:
        """`closed`, `open` or `half_open` per transport, as of `now`."""
        with self._lock:
            return {t: _now(s, self._policy, now).state for t, s in self._states.items()}
