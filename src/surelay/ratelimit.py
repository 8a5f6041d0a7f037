"""Token buckets: how many things may happen per unit of time.

A `TokenBucket` holds up to `burst` tokens and refills at `rate` per second. It keeps no
clock of its own: every call is told `now`, so callers choose real or injected time and
tests need no sleeping. Not thread-safe; its owner serialises access.

`KeyRates` keeps one bucket per key (thread-safe), with bounded memory: a bucket that has
refilled completely says nothing a fresh one would not, so idle buckets are dropped.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable

__all__ = ["KeyRates", "TokenBucket"]

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

    def wait_for(self, now: float, n: float = 1.0) -> float:
        """Like `take`, without taking: 0.0 if `n` tokens are there now."""
        if n > self.burst:
            return math.inf
        self._refill(now)
        return 0.0 if self._tokens >= n - _EPSILON else (n - self._tokens) / self.rate

    def full_at(self, now: float) -> float:
        """When the bucket will be full again (`now` if it is): an idle full bucket
        carries no information and may be dropped."""
        self._refill(now)
        return now + (self.burst - self._tokens) / self.rate


class KeyRates:
    """At most `count` per `per_seconds` for each key (bursts up to `count`).

    Memory is bounded: buckets that are full again are dropped once there are more than
    `max_keys / 2`, and past `max_keys` the least recently used go (such a key starts
    again with a full bucket: the bound bends before memory does).
    """

    def __init__(self, count: int, per_seconds: float, *, max_keys: int = 100_000) -> None:
        self.rate = count / per_seconds
        self.burst = float(count)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._sweep_above = min(max_keys, max(16, max_keys // 2))

    def take(self, keys: Iterable[str], now: float) -> float:
        """One token per occurrence of each key, all or none: 0.0 when taken, otherwise
        the seconds until every key would have enough (nothing taken; `inf` if a key is
        asked for more than a burst at once)."""
        wanted = Counter(keys)
        with self._lock:
            buckets = {key: self._bucket(key, now) for key in wanted}
            wait = max((buckets[key].wait_for(now, n) for key, n in wanted.items()), default=0.0)
            if wait > 0:
                return wait
            for key, n in wanted.items():
                buckets[key].take(now, n)
            if len(self._buckets) > self._sweep_above:
                self._evict(now)
            return 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def _evict(self, now: float) -> None:
        idle = [key for key, bucket in self._buckets.items() if bucket.full_at(now) <= now]
        for key in idle:
            del self._buckets[key]
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        # the next sweep once as many again have come: amortised O(1) per take
        self._sweep_above = min(
            self._max_keys, max(16, self._max_keys // 2, 2 * len(self._buckets))
        )
