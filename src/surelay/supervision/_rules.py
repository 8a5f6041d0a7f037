"""The OTP restart rules as pure functions: no threads, no clocks, no state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = [
    "ExitKind",
    "backoff_delay",
    "record_restart",
    "restart_group",
    "should_restart",
]

ExitKind = Literal["normal", "crash"]
"""How a child ended on its own: `normal` (it stopped itself) or `crash` (an exception)."""


def should_restart(restart: str, kind: ExitKind) -> bool:
    """OTP: permanent always, transient only after a crash, temporary never."""
    if restart == "permanent":
        return True
    if restart == "transient":
        return kind == "crash"
    return False


def record_restart(
    history: tuple[float, ...], now: float, intensity: int, period: float
) -> tuple[tuple[float, ...], bool]:
    """Add a restart at `now` to the sliding window.

    Returns the new window (restarts no older than `period`) and whether it now holds
    more than `intensity` restarts, in which case the supervisor must give up.
    """
    threshold = now - period
    window = (*(t for t in history if t >= threshold), now)
    return window, len(window) > intensity


def restart_group(strategy: str, order: Sequence[str], crashed: str) -> list[str]:
    """Which children restart, in start order, when `crashed` is to be restarted."""
    if strategy == "one_for_all":
        return list(order)
    if strategy == "rest_for_one":
        return list(order[order.index(crashed) :])
    return [crashed]


def backoff_delay(n: int, min_s: float, max_s: float, u: float) -> float:
    """Delay before the n-th consecutive restart (n >= 1), `u` uniform in [0, 1).

    `min(max_s, min_s * 2 ** (n - 1)) * (1 + 0.2 * u)`: exponential with 0-20 % jitter so
    that children crashing together do not restart in lockstep.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # Cap the exponent: 2 ** 1100 overflows a float long before max_s matters.
    base = min(max_s, min_s * 2.0 ** min(n - 1, 1000))
    return base * (1.0 + 0.2 * u)
