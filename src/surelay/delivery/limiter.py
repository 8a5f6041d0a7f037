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
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from surelay.envelope import Envelope

if TYPE_CHECKING:
    from surelay.config import Rate
    from surelay.policy.rate import Turn
    from surelay.storage.rate_state import RateState

__all__ = ["EARLY", "HORIZON", "MAX_HORIZON", "Limiter", "group_of"]

logger = logging.getLogger("surelay.delivery")

HORIZON = 1.0
"""Seconds ahead a waiting call reserves its turn (16 intervals if longer, up to
`MAX_HORIZON`): past that it comes back later, so a process that dies (or is told to
pause by a `Retry-After` another process heard) holds no turn much longer than this."""
MAX_HORIZON = 5.0
ERROR_WAIT = 1.0
"""Seconds a rate-limited call waits when the rate state cannot be read or written."""
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
        self._reserved: dict[str, tuple[float, bytes]] = {}
        """Message id -> the time of the turn it reserved, and its group's name."""
        self._paused: dict[bytes, float] = {}
        """Group -> paused until then by a `Retry-After` this process was told (its
        reserved turns move past it; other processes' reserved turns lie within the
        horizon, and their next asks see the pause in the shared state)."""
        self._failing_since = 0.0

    @property
    def any(self) -> bool:
        """Whether any transport has a rate (without, nothing is ever held here)."""
        return bool(self._limits)

    def limits(self, transport: str) -> bool:
        """Whether calls of `transport` are ever held here (it has a rate)."""
        return transport in self._limits

    def ask(self, envelope: Envelope) -> tuple[float, bool]:
        """Seconds the call of `envelope` must wait (0: call it now), and whether its
        turn is reserved: a wait within the horizon reserves it (asked again at that
        time, the call goes); a longer one comes back to ask again."""
        rate = self._limits.get(envelope.transport)
        if rate is None:
            return 0.0, True
        now = self._clock()
        reserved = self._reserved_wait(envelope.message_id, now, take=True)
        if reserved is not None:
            return reserved
        assert self._state is not None
        name = self._state.name(envelope.transport, group_of(rate, envelope))
        try:
            (turn,) = self._state.take_many(name, now, 1, **_shape(rate))
        except Exception as error:  # (the rate state's disk or map is full, say)
            return self._failed(error)
        return self._note([envelope.message_id], [turn], name, now, going=False)[0]

    def plan(self, envelopes: list[Envelope]) -> list[tuple[float, bool]]:
        """`ask` for several calls at once (a sender's round): per group, one
        transaction for all of its calls, and no ask past the first turn out of reach
        (the calls after it get estimated waits, one interval apart). A call whose turn
        is taken now is left reserved for its engine's own ask."""
        out: list[tuple[float, bool]] = [(0.0, True)] * len(envelopes)
        groups: dict[bytes, list[int]] = {}
        rates: dict[bytes, Rate] = {}
        now = self._clock()
        for index, envelope in enumerate(envelopes):
            rate = self._limits.get(envelope.transport)
            if rate is None:
                continue
            reserved = self._reserved_wait(envelope.message_id, now, take=False)
            if reserved is not None:
                out[index] = reserved
                continue
            assert self._state is not None
            name = self._state.name(envelope.transport, group_of(rate, envelope))
            groups.setdefault(name, []).append(index)
            rates[name] = rate
        for name, indexes in groups.items():
            assert self._state is not None
            try:
                turns = self._state.take_many(name, now, len(indexes), **_shape(rates[name]))
            except Exception as error:
                failed = self._failed(error)
                for index in indexes:
                    out[index] = failed
                continue
            ids = [envelopes[index].message_id for index in indexes]
            for index, answer in zip(indexes, self._note(ids, turns, name, now), strict=True):
                out[index] = answer
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
        until = self._clock() + seconds
        with self._lock:
            self._paused[name] = max(until, self._paused.get(name, 0.0))
            for message_id, (turn_at, group) in list(self._reserved.items()):
                if group == name and turn_at < until:
                    self._reserved[message_id] = (until, group)
        try:
            self._state.pause(name, until)
        except Exception as error:
            self._failed(error)

    def close(self) -> None:
        """Let go of the shared state (the engines have stopped: nothing asks any more)."""
        if self._state is not None:
            self._state.close()

    def _reserved_wait(
        self, message_id: str, now: float, *, take: bool
    ) -> tuple[float, bool] | None:
        """The wait of a call whose turn is reserved (None: it has none); `take`: it
        goes now if its turn has come (the engine's ask)."""
        with self._lock:
            found = self._reserved.get(message_id)
            if found is None:
                return None
            turn_at, name = found
            paused = self._paused.get(name)
            if paused is not None and paused > turn_at:
                turn_at = paused
                self._reserved[message_id] = (turn_at, name)
            if turn_at <= now + EARLY:
                if take:
                    del self._reserved[message_id]
                return 0.0, True
            return turn_at - now, True

    def _note(
        self, ids: list[str], turns: list[Turn], name: bytes, now: float, *, going: bool = True
    ) -> list[tuple[float, bool]]:
        """Remember the turns reserved (with `going`, one going now too: the sender asked,
        and its engine's ask takes it)."""
        with self._lock:
            if len(self._reserved) >= KEEP_RESERVED:
                self._reserved = {m: r for m, r in self._reserved.items() if r[0] > now}
            if len(self._paused) > KEEP_RESERVED:
                self._paused = {g: t for g, t in self._paused.items() if t > now}
            for message_id, turn in zip(ids, turns, strict=True):
                if turn.reserved and (going or turn.wait > 0):
                    self._reserved[message_id] = (now + turn.wait, name)
        return [(max(0.0, turn.wait), turn.reserved) for turn in turns]

    def _failed(self, error: Exception) -> tuple[float, bool]:
        """The rate state could not be read or written: the call waits `ERROR_WAIT` and
        asks again (no attempt spent); said once a minute at most."""
        now = time.monotonic()
        if now - self._failing_since >= 60.0:
            self._failing_since = now
            logger.error(
                "the rate limits' state (<data dir>/rates) failed: %s; rate-limited calls "
                "wait %.0fs and ask again",
                error,
                ERROR_WAIT,
            )
        return ERROR_WAIT, True


def _shape(rate: Rate) -> dict[str, float]:
    """GCRA's parameters of `rate`: its interval, its burst tolerance, its horizon."""
    interval = rate.per / rate.count
    return {
        "interval": interval,
        "tolerance": (rate.burst_or_one - 1) * interval,
        "horizon": min(MAX_HORIZON, max(HORIZON, 16 * interval)),
    }


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
