"""Recovery: dispatching outbox entries the runtime did not accept itself.

Two kinds: at open, what an earlier runtime of this slot left in its outbox; while
running, what the `SlotKeeper` adopts from slots whose runtime died. Both go to the
senders in acceptance order, so each key's messages keep their order. An entry for a
transport this runtime was not given stays in the outbox (an orphan, shown by `health()`)
until a runtime with that transport opens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from surelay.actors.sender import Deliver
from surelay.routing import partition_for
from surelay.storage.records import OutboxEntry

if TYPE_CHECKING:
    from surelay.hub import Hub
    from surelay.supervision import Ref

__all__ = ["CHUNK", "Recovery", "deliver"]

logger = logging.getLogger("surelay.runtime")

CHUNK = 10_000
"""Entries read (or adopted) per transaction."""


def deliver(
    senders: Sequence[Ref], entries: Sequence[OutboxEntry], partitions: Sequence[int] | None = None
) -> None:
    """Hand entries to their senders: `entry.partition`'s, or `partitions[i]`'s."""
    if len(entries) == 1 and partitions is None:
        senders[entries[0].partition].tell(Deliver((entries[0],)))
        return
    by_partition: dict[int, list[OutboxEntry]] = {}
    routes = partitions if partitions is not None else [e.partition for e in entries]
    for entry, partition in zip(entries, routes, strict=True):
        by_partition.setdefault(partition, []).append(entry)
    for partition, group in by_partition.items():
        senders[partition].tell(Deliver(tuple(group)))


class Recovery:
    """Dispatches recovered and adopted entries; counts orphans by transport."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._lock = threading.Lock()
        self._orphans: dict[str, int] = {}
        self._moving = threading.Lock()
        """Held while adopting, and while a transport's own entries go out before it is
        added: an entry is never sent by both."""

    @property
    def orphans(self) -> dict[str, int]:
        """Entries left in the outbox for transports this runtime was not given."""
        with self._lock:
            return dict(self._orphans)

    def recover(
        self, transport: str | None = None, then: Callable[[], object] | None = None
    ) -> int:
        """Dispatch this slot's outbox (what an earlier run left), or only its entries
        for `transport` (one being added: they were orphans; `then()` adds it, before
        any adoption may move its entries here); returns how many."""
        with self._moving:
            recovered = self._recover(transport)
            if then is not None:
                then()
        return recovered

    def _recover(self, transport: str | None) -> int:
        store = self._hub.store
        after = 0
        recovered = 0
        orphans: dict[str, int] = {}
        if transport is not None:
            with self._lock:
                self._orphans.pop(transport, None)
        while True:
            with store.read() as txn:
                chunk = store.outbox.scan(txn, after=after, limit=CHUNK)
            if not chunk:
                break
            after = chunk[-1].seq
            if transport is not None:
                chunk = [e for e in chunk if e.envelope.transport == transport]
            recovered += self.dispatch(chunk, orphans, also=transport)
        if recovered:
            logger.info("recovered %d message(s) from the outbox of %s", recovered, store.path)
        self._warn(orphans)
        return recovered

    def adopt(self, slot: int) -> int:
        """Move slot `slot`'s outbox into this runtime's and dispatch it; returns how
        many entries moved. Entries for transports this runtime was not given stay
        where they are, for a runtime that has them. The caller holds `slot`'s lock."""
        with self._moving:
            return self._adopt(slot)

    def _adopt(self, slot: int) -> int:
        hub = self._hub
        store = hub.store
        moved = 0
        orphans: dict[str, int] = {}
        start: bytes | None = None
        while True:
            chunk, start = store.adopt(
                slot, limit=CHUNK, accept=hub.transports.__contains__, start=start
            ).result()
            moved += len(chunk)
            self.dispatch(chunk, orphans)
            if start is None:
                break
        if moved:
            logger.warning(
                "adopted %d message(s) from slot %d of %s, whose runtime is gone",
                moved,
                slot,
                store.path,
            )
        self._warn(orphans)
        return moved

    def dispatch(
        self, chunk: Sequence[OutboxEntry], orphans: dict[str, int], also: str | None = None
    ) -> int:
        """Route entries to this runtime's senders (a key's partition is recomputed: the
        runtime that accepted them may have had another number of partitions); returns
        how many went, counting the rest into `orphans`."""
        hub = self._hub
        partitions = hub.config.partitions
        entries = []
        routes = []
        for entry in chunk:
            envelope = entry.envelope
            if envelope.transport not in hub.transports and envelope.transport != also:
                orphans[envelope.transport] = orphans.get(envelope.transport, 0) + 1
                continue
            key = envelope.key
            entries.append(entry)  # keeps the partition its index entry was made for
            routes.append(
                partition_for(key, partitions) if key is not None else entry.partition % partitions
            )
        if entries:
            hub.tracker.add((e.envelope.message_id for e in entries), receipts=False)
            deliver(hub.senders, entries, routes)
        return len(entries)

    def _warn(self, orphans: dict[str, int]) -> None:
        with self._lock:
            for transport, count in orphans.items():
                self._orphans[transport] = self._orphans.get(transport, 0) + count
        for transport, count in orphans.items():
            logger.warning(
                "%d message(s) in the outbox are for transport %r, which this runtime has not "
                "(yet); they stay in the outbox until a runtime with that transport opens (or "
                "rt.consume adds a consumer of that name)",
                count,
                transport,
            )
