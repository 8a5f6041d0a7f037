"""Dead letters whose `on_dead_letter` hook has not run yet, so that a hook runs after a
crash too: each mark is written in the transaction that stores its dead letter, and
cleared once the hook has run (returned, raised or timed out). Marks are kept per slot,
like the outbox: the runtime of the slot runs them, and adopts a dead slot's marks."""

from __future__ import annotations

from collections.abc import Iterable

from surelay.storage.environment import Environment, Txn, keys_with_prefix
from surelay.storage.keys import u16

__all__ = ["HookMarks"]


class HookMarks:
    def __init__(self, env: Environment, slot: int) -> None:
        self._db = env.db("hooks_pending")
        self._slot_key = u16(slot)
        self.slot = slot

    def mark(self, txn: Txn, dead_letter_ids: Iterable[str]) -> None:
        txn.cursor(db=self._db).putmulti(
            [(self._slot_key + i.encode("utf-8"), b"") for i in dead_letter_ids]
        )

    def clear(self, txn: Txn, ids: Iterable[str]) -> None:
        for dead_letter_id in ids:
            txn.delete(self._slot_key + dead_letter_id.encode("utf-8"), db=self._db)

    def has(self, txn: Txn, dead_letter_id: str) -> bool:
        """Whether the hook of this dead letter (of this slot) has still to run."""
        return txn.get(self._slot_key + dead_letter_id.encode("utf-8"), db=self._db) is not None

    def pending(self, txn: Txn, *, limit: int) -> list[str]:
        """Up to `limit` of this slot's marks, oldest dead letter first (ids sort by time)."""
        out = []
        for key in keys_with_prefix(txn, self._db, self._slot_key):
            out.append(key[2:].decode("utf-8"))
            if len(out) >= limit:
                break
        return out

    def holds(self, txn: Txn, slot: int) -> bool:
        return next(keys_with_prefix(txn, self._db, u16(slot)), None) is not None

    def adopt(self, txn: Txn, slot: int) -> int:
        """Move `slot`'s marks (its runtime is gone) to this slot; returns how many."""
        if slot == self.slot:
            raise ValueError(f"slot {slot} is this table's own")
        keys = list(keys_with_prefix(txn, self._db, u16(slot)))
        for key in keys:
            txn.delete(key, db=self._db)
            txn.put(self._slot_key + key[2:], b"", db=self._db)
        return len(keys)

    def count(self, txn: Txn) -> int:
        return int(txn.stat(self._db)["entries"])
