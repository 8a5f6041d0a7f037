"""The reserve that keeps a full store drainable.

Every write LMDB makes needs free pages, including the writes that free space: recording
a delivery (a dedup record, then the outbox entry deleted), dead-lettering, deleting. So
the last `reserve_for(max_map_size)` bytes of the map, and as many bytes of the disk, are
kept for those. A write that adds data (a send, a consumed message, a new replay
request, a host transaction) calls `Space.admit` first and is refused with `StorageFull`
when it would leave less than the reserve; the others never are (the writer retries
them until they land: `surelay.storage.writer`).

The room is measured in the write transaction itself (the pages of every table, which
LMDB keeps in each table's header, so nothing is scanned): pages on LMDB's free list
count as room, since the next transactions reuse them. The disk bounds the map when its
free space plus the data file's size is less than `max_map_size`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surelay.errors import StorageFull

__all__ = ["RESERVE_CEILING", "RESERVE_FLOOR", "Room", "Space", "entry_bytes", "reserve_for"]

logger = logging.getLogger("surelay.storage")

RESERVE_FLOOR = 2 << 20
"""The smallest reserve: room to record a few thousand deliveries at once."""
RESERVE_CEILING = 64 << 20
"""The largest reserve: freeing writes touch a bounded number of pages, whatever the map."""
_META_PAGES = 2
_NODE = 8
"""Bytes of an LMDB node header (sizes and flags) before its key."""
_SLACK = 2
_DISK_EVERY = 1.0
"""Seconds between two looks at the disk's free space (see `Space._quick_left`)."""
"""B-tree pages are between half and completely full: count small records twice."""


def reserve_for(max_map_size: int) -> int:
    """Bytes of the map and of the disk kept for the writes that free space: 1/32 of the
    map, between 2 MiB and 64 MiB, and never more than a quarter of the map."""
    return min(max(max_map_size // 32, RESERVE_FLOOR), RESERVE_CEILING, max_map_size // 4)


def entry_bytes(key: int, value: int, page_size: int) -> int:
    """Pages' worth of bytes one record of `key` and `value` bytes takes: a value too big
    for half a page goes to pages of its own (LMDB's overflow pages)."""
    if key + value + _NODE > (page_size - 16) // 2:
        pages = -(-(value + 16) // page_size)
        return pages * page_size + (key + _NODE + 8 + 2) * _SLACK
    return (key + value + _NODE + 2) * _SLACK


@dataclass(frozen=True, slots=True)
class Room:
    """One measurement of a store's space, in bytes."""

    used: int
    """Bytes in the pages of every table (free-list pages excluded: they are reused)."""
    limit: int
    """How far the data may grow: the map's maximum, or less when the disk is smaller."""
    disk_free: int
    disk_bound: bool
    """The disk, not the map, sets `limit`."""

    def left(self, reserve: int) -> int:
        """Bytes a write that adds data may still take."""
        return self.limit - self.used - reserve


def refusal(room: Room, reserve: int, path: Path) -> str:
    """The text of the `StorageFull` raised when `room` has no place for an add."""
    if room.disk_bound:
        return (
            f"the disk at {path} is full: {room.disk_free:,} bytes free, and surelay keeps "
            f"{reserve:,} for recording deliveries; free disk space (the outbox drains on "
            "its own once the downstream takes messages again)"
        )
    return (
        f"the store at {path} is full: {room.used:,} of its {room.limit:,} bytes are in "
        f"use and the last {reserve:,} are kept for recording deliveries and dead letters; "
        "it drains once the downstream takes messages again, or raise max_map_size"
    )


class Space:
    """The room of one open environment, and whether adds are refused (one log line
    each time that changes)."""

    def __init__(
        self,
        path: Path,
        max_map_size: int,
        page_size: int,
        *,
        tables: Callable[[], Iterable[Any]],
        main_pages: Callable[[], int],
        high_water: Callable[[], int],
    ) -> None:
        self.path = path
        self.data_file = path / "data.mdb"
        self.max_map_size = max_map_size
        self.page_size = page_size
        self.reserve = reserve_for(max_map_size)
        self._tables = tables
        self._main_pages = main_pages
        self._high_water = high_water
        self._limit = 0
        self._limit_at = -_DISK_EVERY
        self._since_limit = 0
        self._txn: Any = None
        self._left = 0
        self._room: Room | None = None
        self.full = False
        """The last add was refused (and none has been admitted since)."""
        self.added = False
        """Set by `admit`: the writer clears it before each operation to learn whether
        that operation adds data."""

    def measure(self, txn: Any) -> Room:
        """The room as `txn` sees it."""
        pages = _META_PAGES + self._main_pages()
        for db in list(self._tables()):  # (a host table may be opened meanwhile)
            stat = txn.stat(db)
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        used = pages * self.page_size
        disk_free = self.disk_free()
        try:
            size = os.stat(self.data_file).st_size
        except OSError:
            size = 0
        on_disk = size + disk_free
        room = Room(
            used=used,
            limit=min(self.max_map_size, on_disk),
            disk_free=disk_free,
            disk_bound=on_disk < self.max_map_size,
        )
        self._limit, self._limit_at, self._since_limit = room.limit, time.monotonic(), 0
        return room

    def _quick_left(self) -> int:
        """A lower bound of the room left, without counting pages: LMDB's high-water mark
        is at least the pages in use, and the disk's limit is taken again every second
        or once a quarter of the reserve was admitted since."""
        if self._since_limit > self.reserve // 4 or time.monotonic() - self._limit_at > _DISK_EVERY:
            disk_free = self.disk_free()
            try:
                size = os.stat(self.data_file).st_size
            except OSError:
                size = 0
            self._limit = min(self.max_map_size, size + disk_free)
            self._limit_at, self._since_limit = time.monotonic(), 0
        return self._limit - self._high_water() - self.reserve

    def disk_free(self) -> int:
        """Bytes an unprivileged writer may still add to the filesystem of the store."""
        try:
            found = os.statvfs(self.path)
        except OSError:
            return 1 << 62  # cannot tell: let LMDB say
        return found.f_bavail * found.f_frsize

    def disk_short(self) -> bool:
        """Whether the disk has less free space than the reserve (a failed commit then
        failed for want of disk: LMDB reports a short write as an I/O error)."""
        return self.disk_free() < self.reserve

    def admit(self, txn: Any, nbytes: int) -> None:
        """Take `nbytes` of room for a write that adds data in `txn`; `StorageFull` when
        that would leave less than the reserve (nothing was written then)."""
        self.added = True
        if txn is not self._txn:  # reckoned once per transaction, then counted down
            self._txn = txn
            self._room = None
            self._left = self._quick_left()
        if (nbytes > self._left or self._left <= 0) and self._room is None:
            self._room = self.measure(txn)  # near the limit: count the pages in use
            self._left = self._room.left(self.reserve)
        if nbytes > self._left or self._left <= 0:
            assert self._room is not None
            self._set_full(True)
            raise StorageFull(refusal(self._room, self.reserve, self.path))
        self._left -= nbytes
        self._since_limit += nbytes
        if self.full and self._left >= self.reserve // 2:
            # Not at the first add that fits: near the line, adds and refusals alternate
            # as deliveries free pages, and the log would flap with them.
            self._set_full(False)

    def refused(self, reason: str) -> None:
        """An add was refused elsewhere (its commit found the disk full): the store is
        full, as if `admit` had refused it."""
        self._set_full(True, reason)

    def _set_full(self, full: bool, reason: str | None = None) -> None:
        if full == self.full:
            return
        self.full = full
        if full:
            if reason is None:
                assert self._room is not None
                reason = refusal(self._room, self.reserve, self.path)
            logger.warning(
                "%s; refusing sends until there is room (deliveries, dead letters and "
                "deletions go on)",
                reason,
            )
        else:
            logger.warning("the store at %s has room again: accepting sends", self.path)
