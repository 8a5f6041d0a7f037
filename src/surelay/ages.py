"""Times as people read them in tables: short ages (`42s`, `3h12m`) and UTC stamps."""

from __future__ import annotations

import math
import time

__all__ = ["age", "stamp"]


def age(at: float, now: float | None = None) -> str:
    """`at` (epoch s) as a short age: 42s, 7m, 3h12m, 2d4h."""
    seconds = max(0.0, (time.time() if now is None else now) - at)
    if not math.isfinite(seconds):
        return "?"
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if seconds < 60:
        return f"{seconds:.0f}s"
    if minutes < 60:
        return f"{minutes:.0f}m"
    if hours < 24:
        return f"{int(hours)}h{int(minutes % 60):02d}m"
    return f"{int(days)}d{int(hours % 24)}h"


def stamp(at: float) -> str:
    """`at` (epoch s) as `YYYY-MM-DD HH:MM:SSZ`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"
