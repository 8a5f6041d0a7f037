"""Argument checks the built-in transports share (refused at construction, not at the
first message)."""

from __future__ import annotations

import math

__all__ = ["check_timeout"]


def check_timeout(timeout: object) -> float:
    """`timeout` as a float, if it is a finite number > 0 (`TypeError` or `ValueError`
    naming it otherwise)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a finite number > 0, got {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number > 0, got {timeout!r}")
    return float(timeout)
