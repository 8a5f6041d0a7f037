"""Token buckets: how many things may happen per unit of time.

A `TokenBucket` holds up to `burst` tokens and refills at `rate` per second. It keeps no
clock of its own: every call is told `now`, so callers choose real or injected time and
tests need no sleeping. Not thread-safe; its owner serialises access.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]

_EPSILON = 1e-9


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up (starts full)."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if not (isinstance(burst, int | float) and math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Take `n` tokens if there are that many and return 0.0; otherwise take nothing
        and return the seconds until there will be (the honest wait: trying again after
        it succeeds if nobody else took tokens meanwhile)."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of burst {self.burst}")
        self._refill(now)
        if self._tokens >= n - _EPSILON:  # a caller that waited exactly is admitted
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return (n - self._tokens) / self.rate

    def full_at(self, now: float) -> float:
        """When the bucket will be full again (`now` if it is): an idle full bucket
        carries no information and may be dropped."""
        self._refill(now)
        return now + (self.burst - self._tokens) / self.rate
