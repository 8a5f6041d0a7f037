"""`Breakers`: the breaker state of every transport, shared by all senders and replay
workers (thread-safe), updated with the pure rules of `surelay.policy.breaker`."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from surelay.config import BreakerPolicy
from surelay.policy.breaker import BreakerState, State, allow, at, record, retry_in, steady

__all__ = ["Breakers"]

_PASS: tuple[float, float | None] = (0.0, None)


class Breakers:
    """Every partition calls the same transport, so its breaker is one value here."""

    def __init__(self, policy: BreakerPolicy, transports: Iterable[str]) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._states = {name: BreakerState() for name in transports}

    def add(self, transport: str) -> None:
        """A breaker for a transport added while the runtime runs (`rt.consume`)."""
        with self._lock:
            self._states.setdefault(transport, BreakerState())

    def allow(self, transport: str, now: float) -> tuple[float, float | None]:
        """`(0, ticket)` if a call to `transport` may go now (a half-open breaker counts
        it as a probe), else `(seconds until one may, None)`. Give the ticket back to
        `record` with the call's outcome."""
        if self._states[transport].state == "closed":
            return _PASS  # closed lets every call through and changes nothing: no lock
        with self._lock:
            ok, ticket, state = allow(self._states[transport], self._policy, now)
            self._states[transport] = state
            if ok:
                return 0.0, ticket
            wait = retry_in(state, self._policy, now)
            if state.state == "half_open":  # probes out: look again soon, not open_for later
                wait = min(wait, 1.0)
            return max(wait, 0.001), None

    def record(
        self, transport: str, now: float, *, failed: bool, ticket: float | None = None
    ) -> str:
        """Record the outcome of a call allowed with `ticket`; returns the state after."""
        if not failed and ticket is None and steady(self._states[transport], self._policy):
            return "closed"  # nothing to change, so no lock
        with self._lock:
            state = record(self._states[transport], self._policy, now, failed, ticket)
            self._states[transport] = state
            return state.state

    def states(self, now: float) -> dict[str, State]:
        """`closed`, `open` or `half_open` per transport, as of `now`."""
        with self._lock:
            return {t: at(s, self._policy, now).state for t, s in self._states.items()}
