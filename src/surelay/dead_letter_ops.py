"""`rt.dead_letters`: what an operator does with dead letters (list, get, archive, purge).

Reads are snapshots; every change is one durable write. Listing is oldest first (ids are
time-ordered), paged with `after`, the last id of the previous page.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from surelay.storage.dead_letters import MAX_LIMIT
from surelay.storage.environment import Txn
from surelay.storage.records import DEAD_LETTER_STATUSES, REASON_CLASSES, DeadLetter
from surelay.storage.store import Store

if TYPE_CHECKING:
    from surelay.actors.hub import Hub

__all__ = ["DeadLetters"]


class DeadLetters:
    def __init__(self, store: Store, hub: Hub) -> None:
        self._store = store
        self._hub = hub

    def list(
        self,
        *,
        status: str | None = "dead",
        reason_class: str | None = None,
        key: str | None = None,
        transport: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[DeadLetter]:
        """Records matching every filter given (None: any), oldest first, at most
        `limit`, after id `after`."""
        if status is not None and status not in DEAD_LETTER_STATUSES:
            raise ValueError(
                f"status must be one of {DEAD_LETTER_STATUSES} or None, got {status!r}"
            )
        if reason_class is not None and reason_class not in REASON_CLASSES:
            raise ValueError(
                f"reason_class must be one of {REASON_CLASSES} or None, got {reason_class!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an int in [1, {MAX_LIMIT}], got {limit!r}")
        with self._store.read() as txn:
            return self._store.dead_letters.list(
                txn,
                status=status,
                reason_class=reason_class,
                key=key,
                transport=transport,
                limit=limit,
                after=after,
            )

    def get(self, dead_letter_id: str) -> DeadLetter | None:
        with self._store.read() as txn:
            return self._store.dead_letters.get(txn, dead_letter_id)

    def archive(self, ids: Iterable[str]) -> int:
        """Archive `dead` and `replayed` records; returns how many changed. Unknown ids
        and records in other states are left alone."""
        wanted = [ids] if isinstance(ids, str) else list(ids)
        table = self._store.dead_letters

        def op(txn: Txn) -> int:
            changed = 0
            for dead_letter_id in wanted:
                record = table.get(txn, dead_letter_id)
                if record is not None and record.status in ("dead", "replayed"):
                    table.transition(txn, dead_letter_id, "archived")
                    changed += 1
            return changed

        return self._store.write(op).result()

    def purge(self, *, status: str = "archived", older_than: float | None = None) -> int:
        """Delete records in `status` that failed more than `older_than` seconds ago
        (any age if None); returns how many. `replaying` records cannot be purged."""
        if older_than is not None and not older_than >= 0:
            raise ValueError(f"older_than must be seconds >= 0 or None, got {older_than!r}")
        now = self._hub.config.clock()
        table = self._store.dead_letters
        return self._store.write(
            lambda txn: table.purge(txn, status=status, older_than=older_than, now=now)
        ).result()
