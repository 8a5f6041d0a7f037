"""`History`: the last minutes of the runtimes' counters, for the overview's rates and
charts. The console samples the statuses the runtimes publish (about once a second)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SERIES", "History", "sparkline"]

SERIES = ("delivered", "retried", "dead_lettered")
"""The counters charted, summed over the runtimes of the directory."""
KEEP = 600
"""Samples kept (one a second: ten minutes)."""


class History:
    """Samples taken by a daemon thread every `every` seconds from `read()` (the
    runtimes' statuses by slot); `rates()` per second between samples."""

    def __init__(self, read: Callable[[], Mapping[int, Mapping[str, Any]]], every: float = 1.0):
        self._read = read
        self._every = every
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=KEEP)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="surelay-console-history", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> None:
        try:
            statuses = self._read()
        except Exception:  # the store is busy or closing: skip this one
            return
        totals = dict.fromkeys(SERIES, 0)
        for status in statuses.values():
            for name in SERIES:
                value = status.get(name)
                if isinstance(value, int):
                    totals[name] += value
        with self._lock:
            self._samples.append((time.monotonic(), totals))

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    def rates(self) -> dict[str, list[float]]:
        """Per second, oldest first, for each series (a counter that went down, a
        runtime that restarted, counts as 0)."""
        with self._lock:
            samples = list(self._samples)
        out: dict[str, list[float]] = {name: [] for name in SERIES}
        for (t0, before), (t1, after) in itertools.pairwise(samples):
            span = max(t1 - t0, 1e-6)
            for name in SERIES:
                out[name].append(max(0, after[name] - before[name]) / span)
        return out


def sparkline(values: list[float], width: int = 240, height: int = 40) -> str:
    """An SVG polyline's points for `values` (empty: a flat line)."""
    if not values:
        return f"0,{height} {width},{height}"
    top = max(values) or 1.0
    step = width / max(1, len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2):.1f}" for i, v in enumerate(values)
    )
