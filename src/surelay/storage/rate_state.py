"""The rate state of a data directory: each rate-limited group's next turn (a GCRA TAT,
`surelay.policy.rate`), shared by every process on the directory, so a rate holds for
all of them together.

It lives in an LMDB environment of its own, `<data dir>/rates`, opened without fsync:
the state is worth keeping across a crash of one process (the others go on with it)
but not across a crash of the machine (then the groups start afresh, at worst letting a
burst through), so no turn pays for a disk flush, and the outbox's writer never waits
for it. A group's state is one key and 8 bytes; groups idle for a while are swept, so a
hundred thousand tenants cost a few megabytes of map, and nothing in memory.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import lmdb

from surelay.policy.rate import Turn, pause, take_turn
from surelay.storage.keys import text_key

__all__ = ["RateState"]

_TAT = struct.Struct(">d")
MAP_SIZE = 256 << 20
SWEEP_EVERY = 4096
"""Turns taken between two sweeps of idle groups."""
IDLE = 600.0
"""Seconds a group's TAT may lie in the past before its key is swept (it then starts
afresh, as a new group would: the same)."""


class RateState:
    """The shared TATs (thread-safe: LMDB serialises writers, across processes too)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        self._env = lmdb.open(
            str(path), map_size=MAP_SIZE, max_dbs=0, sync=False, metasync=False, lock=True
        )
        self._turns = 0
        self._lock = threading.Lock()
        self.closed = False

    @staticmethod
    def name(transport: str, group: str | None) -> bytes:
        """The key of a transport's group (None: the transport as a whole)."""
        if group is None:
            return text_key(transport)
        return text_key(transport) + b"\x00" + text_key(group)

    def take_many(
        self,
        name: bytes,
        now: float,
        count: int,
        *,
        interval: float,
        tolerance: float,
        horizon: float,
    ) -> list[Turn]:
        """Ask `count` turns of group `name` in one transaction: turns are reserved
        while they are within the horizon; from the first that is not, the rest are
        estimated (one interval apart), not asked."""
        out: list[Turn] = []
        with self._env.begin(write=True) as txn:
            raw = txn.get(name)
            tat = _TAT.unpack(raw)[0] if raw is not None else now
            start = tat
            for _ in range(count):
                turn = take_turn(tat, now, interval=interval, tolerance=tolerance, horizon=horizon)
                if not turn.reserved:
                    break
                out.append(turn)
                tat = turn.tat
            if len(out) < count:
                first = take_turn(tat, now, interval=interval, tolerance=tolerance, horizon=horizon)
                out.extend(
                    Turn(first.wait + k * interval, False, tat) for k in range(count - len(out))
                )
            if tat != start or raw is None:
                txn.put(name, _TAT.pack(tat))
        self._count(now)
        return out

    def pause(self, name: bytes, until: float) -> None:
        """No turn of group `name` before `until`."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(name)
            tat = _TAT.unpack(raw)[0] if raw is not None else until
            txn.put(name, _TAT.pack(pause(tat, until)))

    def paused_until(self, name: bytes) -> float | None:
        """The group's TAT (None: no state)."""
        with self._env.begin() as txn:
            raw = txn.get(name)
        return None if raw is None else float(_TAT.unpack(raw)[0])

    def groups(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat()["entries"])

    def sweep(self, now: float, *, idle: float = IDLE) -> int:
        """Forget groups whose TAT is more than `idle` seconds past; returns how many."""
        with self._env.begin(write=True) as txn:
            stale = [
                bytes(key)
                for key, value in txn.cursor().iternext()
                if len(value) != _TAT.size or _TAT.unpack(value)[0] < now - idle
            ]
            for key in stale:
                txn.delete(key)
        return len(stale)

    def _count(self, now: float) -> None:
        with self._lock:
            self._turns += 1
            due = self._turns % SWEEP_EVERY == 0
        if due:
            self.sweep(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._env.close()
