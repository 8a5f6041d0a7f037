"""The `Limiter`: how fast each transport (or each group of its messages) may be called.

A transport with a `Rate` in `RuntimeConfig.rate_limits` has its calls spaced by GCRA
(`surelay.policy.rate`), per group when the rate has `by`, with every group's state
shared by all processes on the directory (`surelay.storage.rate_state`). An engine asks
before each call (`ask`); a call that must wait is not made and not counted as an
attempt: its message is held (as for an open breaker) and comes back at its turn. One
group's backlog takes only its own turns, so it never delays another group.

A rate-limited transport that answers 429 or 503 with `Retry-After` (a `TransientError`
with `retry_after`) slows its whole transport, or its group, for that long (`slow`), in
every process, then resumes at its rate. (Without a rate, a `Retry-After` delays only the
message it answered, as the retry policy says.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from surelay.envelope import Envelope

if TYPE_CHECKING:
    from surelay.config import Rate
    from surelay.storage.rate_state import RateState

__all__ = ["EARLY", "HORIZON", "Limiter"]

logger = logging.getLogger("surelay.delivery")

HORIZON = 1.0
"""Seconds ahead a waiting call reserves its turn (at least 16 intervals): past that it
comes back later, so a process that dies leaves no turn reserved much longer than this."""
EARLY = 0.002
"""A reserved call that comes back this early (clock granularity) goes all the same."""
KEEP_RESERVED = 8192
"""Reservations kept before the stale ones (their messages never came back) are dropped."""


class Limiter:
    """The rates of one runtime's transports (thread-safe: engines ask from their
    threads and their event loop)."""

    def __init__(
        self,
        limits: Mapping[str, Rate],
        state: RateState | None,
        clock: Callable[[], float],
    ) -> None:
        self._limits = dict(limits)
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()
        self._reserved: dict[str, float] = {}
        """Message id -> the time of the turn it reserved."""

    def limits(self, transport: str) -> bool:
        """Whether calls of `transport` are ever held here (it has a rate)."""
        return transport in self._limits

    def ask(self, envelope: Envelope) -> tuple[float, bool]:
        """Seconds the call of `envelope` must wait (0: call it now), and whether its
        turn is reserved: a wait within the horizon reserves it (asked again at that
        time, the call goes); a longer one comes back to ask again."""
        transport = envelope.transport
        rate = self._limits.get(transport)
        if rate is None:
            return 0.0, True
        now = self._clock()
        message_id = envelope.message_id
        with self._lock:
            turn_at = self._reserved.pop(message_id, None)
            if turn_at is not None:
                if turn_at <= now + EARLY:
                    return 0.0, True
                self._reserved[message_id] = turn_at
                return turn_at - now, True
        assert self._state is not None
        interval = rate.per / rate.count
        turn = self._state.take(
            self._state.name(transport, group_of(rate, envelope)),
            now,
            interval=interval,
            tolerance=(rate.burst_or_one - 1) * interval,
            horizon=max(HORIZON, 16 * interval),
        )
        if turn.wait <= 0:
            return 0.0, True
        if turn.reserved:
            with self._lock:
                if len(self._reserved) >= KEEP_RESERVED:
                    self._reserved = {m: t for m, t in self._reserved.items() if t > now}
                self._reserved[message_id] = now + turn.wait
        return turn.wait, turn.reserved

    def plan(self, envelopes: list[Envelope]) -> list[tuple[float, bool]]:
        """`ask` for several calls at once (a sender's round): per group, one
        transaction for all of its calls, and no ask past the first turn out of reach
        (the calls after it get estimated waits, one interval apart)."""
        out: list[tuple[float, bool]] = [(0.0, True)] * len(envelopes)
        groups: dict[bytes, list[int]] = {}
        rates: dict[bytes, Rate] = {}
        now = self._clock()
        for index, envelope in enumerate(envelopes):
            rate = self._limits.get(envelope.transport)
            if rate is None:
                out[index] = self.ask(envelope)
                continue
            with self._lock:
                turn_at = self._reserved.get(envelope.message_id)
            if turn_at is not None:  # (left for the engine's own ask, which takes it)
                out[index] = (max(0.0, turn_at - now) if turn_at > now + EARLY else 0.0, True)
                continue
            assert self._state is not None
            name = self._state.name(envelope.transport, group_of(rate, envelope))
            groups.setdefault(name, []).append(index)
            rates[name] = rate
        for name, indexes in groups.items():
            rate = rates[name]
            interval = rate.per / rate.count
            assert self._state is not None
            turns = self._state.take_many(
                name,
                now,
                len(indexes),
                interval=interval,
                tolerance=(rate.burst_or_one - 1) * interval,
                horizon=max(HORIZON, 16 * interval),
            )
            with self._lock:
                if len(self._reserved) >= KEEP_RESERVED:
                    self._reserved = {m: t for m, t in self._reserved.items() if t > now}
                for index, turn in zip(indexes, turns, strict=True):
                    out[index] = (turn.wait, turn.reserved)
                    if turn.reserved:  # (one going now too: the engine's ask finds it)
                        self._reserved[envelopes[index].message_id] = now + turn.wait
        return out

    def slow(self, envelope: Envelope, seconds: float) -> None:
        """The downstream of a rate-limited transport asked for a pause (`Retry-After`):
        no call of the transport (or of the envelope's group) for `seconds`, in any
        process. A transport without a rate is not paused."""
        rate = self._limits.get(envelope.transport)
        if rate is None or seconds <= 0:
            return
        assert self._state is not None
        name = self._state.name(envelope.transport, group_of(rate, envelope))
        self._state.pause(name, self._clock() + seconds)

    def close(self) -> None:
        """Let go of the shared state (the engines have stopped: nothing asks any more)."""
        if self._state is not None:
            self._state.close()


def group_of(rate: Rate, envelope: Envelope) -> str | None:
    """The group a rate bounds the envelope's call in: None without `by`; the value of
    header `by` (a missing one: the empty group); or what the function `by` returns (one
    that raises, or returns no str: the empty group, said in the log)."""
    by = rate.by
    if by is None:
        return None
    if isinstance(by, str):
        found = envelope.headers.get(by)
        if found is None:  # header names are case-insensitive
            lowered = by.lower()
            found = next((v for k, v in envelope.headers.items() if k.lower() == lowered), "")
        return found
    try:
        group = by(envelope)
    except Exception:
        logger.exception(
            "Rate.by raised for message %s; it counts in the empty group", envelope.message_id
        )
        return ""
    if not isinstance(group, str):
        logger.error(
            "Rate.by returned %s for message %s, not a str; it counts in the empty group",
            type(group).__name__,
            envelope.message_id,
        )
        return ""
    return group
