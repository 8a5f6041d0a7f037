"""`Lanes`: an engine's runs waiting for a free slot, served by priority weight (of a
run's first message).

Plain data, no lock: its engine guards it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from surelay.delivery.attempt import Run, Sink
from surelay.policy.priority import Picker

__all__ = ["Lanes"]

Item = tuple[Run, Sink]

_Queued = tuple[Run, Sink, bool]
"""A run, its sink, and whether it may be withdrawn once expired (`take`)."""


class Lanes:
    """Three FIFO lanes (HIGH, NORMAL, LOW); `pop` follows the 6:3:1 pattern, falling
    through to the next lane that has work so no slot is left idle."""

    __slots__ = ("_lanes", "_picker", "_size")

    def __init__(self) -> None:
        self._lanes: tuple[deque[_Queued], ...] = (deque(), deque(), deque())
        self._picker = Picker()
        self._size = 0

    def extend(self, items: Iterable[Item], *, expiring: bool = True) -> int:
        """Queue `items`; returns how many were added. `expiring`: `take` may withdraw
        them (a sender's runs; not a replay's, which is past any ttl by nature)."""
        lanes = self._lanes
        added = 0
        for run, sink in items:
            lanes[run[0].envelope.priority.rank].append((run, sink, expiring))
            added += 1
        self._size += added
        return added

    def take(self, wanted: Callable[[Run], bool]) -> list[Item]:
        """Withdraw the expiring items whose run is `wanted`, in lane order."""
        taken: list[Item] = []
        for lane in self._lanes:
            if not lane:
                continue
            kept: deque[_Queued] = deque()
            for run, sink, expiring in lane:
                if expiring and wanted(run):
                    taken.append((run, sink))
                else:
                    kept.append((run, sink, expiring))
            lane.clear()
            lane.extend(kept)
        self._size -= len(taken)
        return taken

    def pop(self) -> Item:
        """The next item by weight; IndexError when empty."""
        if not self._size:
            raise IndexError("no call is waiting")
        lanes = self._lanes
        rank = self._picker.pick(lanes)
        self._size -= 1
        run, sink, _ = lanes[rank].popleft()
        return run, sink

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0
