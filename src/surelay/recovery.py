"""Recovery: outbox entries the runtime did not accept itself, streamed, never loaded.

Two kinds: at open, what an earlier runtime of this slot left in its outbox; while
running, what the `SlotKeeper` adopts from slots whose runtime died. Neither is read into
memory here: recovery makes sure each entry sits in the range of the partition its key
routes to (moving entries when the number of partitions changed, or when adopting), and
wakes the senders, which stream their ranges through a bounded window
(`surelay.actors.window`). So opening on, or adopting, a backlog of any size costs the
memory of one window. An entry for a transport this runtime was not given stays in the
outbox (an orphan, shown by `health()`) until a runtime with that transport opens.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from surelay.actors.hooks import Resume
from surelay.actors.timer import WAITING, Check
from surelay.actors.window import Wake, hold_name
from surelay.routing import home
from surelay.storage.records import OutboxEntry

if TYPE_CHECKING:
    from surelay.actors.window import Orphans
    from surelay.peers import Peers
    from surelay.receipts import Tracker
    from surelay.storage.environment import Txn
    from surelay.storage.store import Store

__all__ = ["CHUNK", "Recovery", "route"]

logger = logging.getLogger("surelay.runtime")

CHUNK = 1000
"""Entries moved per transaction (at most about 8 MiB of them)."""


def route(partitions: int) -> Callable[[OutboxEntry], int]:
    """The partition an entry belongs to in a runtime of `partitions` partitions: its
    key's, or (no key: no order to keep) its old one folded into range."""

    def partition(entry: OutboxEntry) -> int:
        return home(entry.envelope.key, partitions, entry.partition)

    return partition


class Recovery:
    """Routes recovered and adopted entries and wakes the senders to stream them."""

    def __init__(  # what recovery touches
        self,
        store: Store,
        *,
        partitions: int,
        transports: Collection[str],
        tracker: Tracker,
        orphans: Orphans,
        peers: Peers,
        hooked: bool = False,
    ) -> None:
        self._store = store
        self.hooked = hooked
        """Whether this runtime has an `on_dead_letter` hook (then it adopts hook marks)."""
        self._partitions = partitions
        self._transports = transports
        """The runtime's transport names (a live view: `rt.consume` adds to them)."""
        self._tracker = tracker
        self._orphans = orphans
        self._peers = peers
        self.recovered = False
        """Set once this slot's outbox, as an earlier run left it, is in the senders
        (adoption waits for it: an adopted entry could be scanned by that recovery too)."""
        self._moving = threading.Lock()
        """Held while adopting, and while a transport is being added, so an adoption
        never runs between a transport's addition and the senders' new look."""

    @property
    def orphans(self) -> dict[str, int]:
        """Entries left in the outbox for transports this runtime was not given."""
        return self._orphans.snapshot()

    def recover(
        self, transport: str | None = None, then: Callable[[], object] | None = None
    ) -> int:
        """Stream this slot's outbox (what an earlier run left) into the senders; or,
        for `transport` (one being added: its entries were orphans), `then()` adds it,
        before any adoption may move entries here, and the senders look again. Returns
        how many entries the slot holds."""
        with self._moving:
            if then is not None:
                then()
            if transport is not None:
                self._orphans.clear(transport)
            held = self._recover()
            self.recovered = True
            return held

    def _recover(self) -> int:
        store = self._store
        partitions = self._partitions
        with store.read() as txn:
            held = store.outbox.slot_size(txn)
            routed_for = store.outbox.routed_for(txn)
        if held and routed_for != partitions:
            moved = self._reroute(route(partitions))
            if moved:
                logger.info(
                    "moved %d outbox entries to the partitions of their keys (%d partitions "
                    "now, %s before)",
                    moved,
                    partitions,
                    routed_for if routed_for is not None else "unknown",
                )
        if routed_for != partitions:
            store.write(lambda txn: store.outbox.set_routed_for(txn, partitions)).result()
        if held:
            logger.info("recovering %d message(s) from the outbox of %s", held, store.path)
        self._wake(dict.fromkeys(range(partitions), 0))
        return held

    def _reroute(self, partition: Callable[[OutboxEntry], int]) -> int:
        store = self._store
        moved = 0
        start: bytes | None = None
        while True:
            count, start = store.reroute(partition, start=start).result()
            moved += count
            if start is None:
                return moved

    def adopt(self, slot: int) -> int:
        """Move slot `slot`'s outbox into this runtime's and let the senders stream it;
        returns how many entries moved. Entries for transports this runtime was not
        given stay where they are, for a runtime that has them. The caller holds `slot`'s
        lock."""
        with self._moving:
            return self._adopt(slot)

    def _adopt(self, slot: int) -> int:
        store = self._store
        partition = route(self._partitions)
        moved = 0
        start: bytes | None = None
        while True:
            moves, start = store.adopt(
                slot,
                route=partition,
                limit=CHUNK,
                accept=self._transports.__contains__,
                start=start,
            ).result()
            moved += sum(count for count, _ in moves.values())
            self._wake({p: lowest - 1 for p, (_, lowest) in moves.items()})
            if start is None:
                break
        moved += self._adopt_scheduled(slot)
        if self.hooked:  # (marks wait for a runtime with the hook)
            hooks = store.write(lambda txn: store.hook_marks.adopt(txn, slot)).result()
            if hooks:
                self._peers.hooks.tell(Resume())
        if moved:
            logger.warning(
                "adopted %d message(s) from slot %d of %s, whose runtime is gone",
                moved,
                slot,
                store.path,
            )
        return moved

    def _adopt_scheduled(self, slot: int) -> int:
        """Move `slot`'s scheduled messages here, due times kept; the timer looks again."""
        store = self._store
        moved = 0
        start: bytes | None = None
        while True:
            count, start = store.write(functools.partial(self._adopt_chunk, slot, start)).result()
            moved += count
            if start is None:
                break
        if moved:
            self._tracker.hold(WAITING)
            self._peers.timer.tell(Check())
        return moved

    def _adopt_chunk(self, slot: int, start: bytes | None, txn: Txn) -> tuple[int, bytes | None]:
        return self._store.scheduled.adopt(
            txn, slot, limit=CHUNK, accept=self._transports.__contains__, start=start
        )

    def _wake(self, after: dict[int, int]) -> None:
        """Tell these partitions' senders to stream their ranges from `after[p]`; the
        tracker is held first, so a `flush()` from now on waits for what they find."""
        for partition, seq in after.items():
            self._tracker.hold(hold_name(partition))
            self._peers.senders[partition].tell(Wake(seq))
