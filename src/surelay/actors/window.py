"""The window: how much of a partition's outbox its sender holds in memory.

The outbox on disk is the queue; a sender holds a bounded window of it (at most
`WINDOW_MESSAGES` entries and about `WINDOW_BYTES` of payload per runtime, split between
the partitions). While everything the partition has on disk fits, the sender is *live*:
new messages reach it as `Deliver`s and it keeps them. When the window is full it
*spills*: new messages stay on disk only (they are durable already), and the sender
streams its partition's range of the outbox from a cursor as the window drains. At open
(recovery) and after an adoption every partition starts spilled, so a backlog of any
size costs the memory of one window.

The rules, which keep every entry of the partition either in memory, ended, or ahead of
the cursor:

- A scan reads the partition's range after `cursor` in acceptance order; entries the
  sender has taken in (`known`: held, or their end not yet durable) are skipped. A scan
  that reaches the range's end makes the partition live again.
- A `Deliver` of an entry already taken in (by a scan), or already ended, is ignored:
  hand-overs come from several threads (a send's caller, the writer, a host
  transaction), so one may arrive late, after a scan took its entry in.
- Spilled, any other `Deliver` is dropped (its entries are on disk; their receipts are
  kept weakly, so memory holds none of a backlog); one below the cursor (a hand-over
  that came late) moves the cursor back to it.
- `Wake(after)`: entries may be on disk below the cursor (adopted from a dead runtime's
  slot, or of a transport added since): spill and move the cursor back to `after`.

Moving the cursor back is always safe (what is held is skipped), so every rule errs that
way. Pure state and rules, no threads: the Sender owns one `Window` per partition.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from surelay.storage.records import OutboxEntry
    from surelay.supervision import Ref

__all__ = [
    "LOOK_MAX",
    "WINDOW_BYTES",
    "WINDOW_MESSAGES",
    "Deliver",
    "Limits",
    "Orphans",
    "Wake",
    "Window",
    "deliver",
    "hold_name",
    "limits_for",
]

logger = logging.getLogger("surelay.runtime")

WINDOW_MESSAGES = 4096
"""Entries a runtime holds in memory at most, over all its partitions (and at most half
its pressure `capacity`: what a window holds counts as work in hand, and a backlog being
streamed in must not by itself push the runtime to refuse sends)."""

WINDOW_BYTES = 32 << 20
"""Payload bytes a runtime holds in memory, about, over all its partitions."""

LOOK_MAX = 4096
"""Entries one scan step looks at, at most (so a sender's mailbox keeps flowing)."""


@dataclass(frozen=True, slots=True)
class Deliver:
    """To a sender: new messages for its partition, in acceptance order."""

    entries: tuple[OutboxEntry, ...]


def deliver(senders: Sequence[Ref], entries: Sequence[OutboxEntry]) -> None:
    """Hand newly accepted entries to the senders of their partitions."""
    if len(entries) == 1:
        senders[entries[0].partition].tell(Deliver((entries[0],)))
        return
    by_partition: dict[int, list[OutboxEntry]] = {}
    for entry in entries:
        by_partition.setdefault(entry.partition, []).append(entry)
    for partition, group in by_partition.items():
        senders[partition].tell(Deliver(tuple(group)))


@dataclass(frozen=True, slots=True)
class Wake:
    """To a sender: entries of its partition may be on disk after sequence `after`
    that it does not hold (adopted, recovered, or for a transport just added)."""

    after: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """One partition's window: at most `messages` entries, about `bytes` of payload
    (one entry is always let in, however large)."""

    messages: int
    bytes: int

    @property
    def refill_below(self) -> int:
        """A spilled partition reads more once it holds fewer than this."""
        return max(1, self.messages // 2)


def hold_name(partition: int) -> str:
    """The tracker hold a spilled partition keeps (`flush()` waits for its backlog)."""
    return f"window-{partition}"


def limits_for(partitions: int, capacity: int) -> Limits:
    """Each partition's share of the runtime's window (`capacity`: the pressure policy's)."""
    messages = min(WINDOW_MESSAGES, capacity // 2)
    return Limits(
        messages=max(16, messages // partitions),
        bytes=max(256 << 10, WINDOW_BYTES // partitions),
    )


@dataclass(slots=True)
class Window:
    """One partition's streaming state (owned by its `PartitionState`, so it outlives
    the sender's incarnations)."""

    limits: Limits
    spilled: bool = False
    cursor: int = 0
    """Spilled: the next scan reads entries after this sequence number."""
    orphans_upto: int = 0
    """Orphans at or below this sequence number are counted already."""
    bytes: int = 0
    """Payload bytes held."""
    known: set[str] = field(default_factory=set)
    """Message ids taken in whose end may not be durable yet (skipped by scans)."""

    def full(self, held: int) -> bool:
        return held >= self.limits.messages or self.bytes >= self.limits.bytes

    def wants_more(self, held: int) -> bool:
        """Spilled and drained enough to read more."""
        return (
            self.spilled and held < self.limits.refill_below and self.bytes < self.limits.bytes // 2
        )

    def spill(self, after: int) -> None:
        """From now on new entries stay on disk; the next scan starts after `after`."""
        self.cursor = min(self.cursor, after) if self.spilled else after
        self.spilled = True

    def caught_up(self) -> None:
        """A scan reached the range's end: live again."""
        self.spilled = False


class Orphans:
    """Entries in this slot's outbox for transports the runtime does not have, counted
    by transport as the senders' scans pass them (each once). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, counts: dict[str, int]) -> None:
        with self._lock:
            new = [t for t in counts if t not in self._counts]
            for transport, count in counts.items():
                self._counts[transport] = self._counts.get(transport, 0) + count
        for transport in new:
            logger.warning(
                "the outbox holds messages for transport %r, which this runtime has not "
                "(yet); they stay in the outbox until a runtime with that transport opens (or "
                "rt.consume adds a consumer of that name)",
                transport,
            )

    def clear(self, transport: str) -> None:
        with self._lock:
            self._counts.pop(transport, None)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
