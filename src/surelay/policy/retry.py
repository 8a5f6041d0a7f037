"""Retry delays (the pure part): when a failed delivery is tried again.

`retry_delay` is a pure function of the policy, the retry number and a random source,
tested without threads or clocks.
"""

from __future__ import annotations

import math
import random

from surelay.config import RetryPolicy

__all__ = ["can_retry", "honoured_retry_after", "retry_delay"]


def can_retry(policy: RetryPolicy, attempts_made: int) -> bool:
    """True while another attempt is allowed after `attempts_made` attempts."""
    return attempts_made < policy.max_attempts


def retry_delay(
    policy: RetryPolicy, retry: int, rng: random.Random, previous: float | None = None
) -> float:
    """Seconds to wait before retry number `retry` (1 = the first retry).

    The first `policy.immediate_retries` retries wait 0. For the n-th delayed retry the
    un-jittered delay is `min(base_delay * multiplier ** (n - 1), max_delay)`, and:
    - `none`: that delay;
    - `full`: uniform in [0, delay];
    - `equal`: delay / 2 plus uniform in [0, delay / 2];
    - `decorrelated`: uniform in [base_delay, 3 * previous], capped at `max_delay`
      (`previous` is the last delay used, `base_delay` for the first delayed retry).
    """
    if retry < 1:
        raise ValueError(f"retry must be >= 1, got {retry}")
    n = retry - policy.immediate_retries
    if n < 1:
        return 0.0
    delay = _capped(policy, n)
    if policy.jitter == "none":
        return delay
    if policy.jitter == "full":
        return rng.uniform(0.0, delay)
    if policy.jitter == "equal":
        return delay / 2 + rng.uniform(0.0, delay / 2)
    last = policy.base_delay if previous is None else max(previous, policy.base_delay)
    return min(policy.max_delay, rng.uniform(policy.base_delay, last * 3))


def honoured_retry_after(retry_after: object, policy: RetryPolicy) -> float | None:
    """How much of a receiver's `Retry-After` is honoured: `retry_after` seconds, at
    least 0 and at most `policy.max_retry_after`; None for none or for what is not a
    number (NaN included). Any value a transport puts on `TransientError.retry_after`,
    however large, gives a finite delay."""
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
        return None
    if isinstance(retry_after, int):  # float() of a huge int would overflow
        return float(min(max(retry_after, 0), policy.max_retry_after))
    if math.isnan(retry_after):
        return None
    return min(max(retry_after, 0.0), policy.max_retry_after)


def _capped(policy: RetryPolicy, n: int) -> float:
    """`min(base_delay * multiplier ** (n - 1), max_delay)`, safe for any n."""
    if policy.base_delay == 0:
        return 0.0
    try:
        return min(policy.base_delay * policy.multiplier ** (n - 1), policy.max_delay)
    except OverflowError:  # the exponential passed max_delay long ago
        return policy.max_delay
