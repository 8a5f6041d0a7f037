"""Records that failed to decode: moved aside with the reason, never silently dropped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from surelay.storage.codec import decode, encode
from surelay.storage.environment import Environment, Txn
from surelay.storage.records import QuarantinedRecord

__all__ = ["Quarantine"]

logger = logging.getLogger("surelay.storage")

Submit = Callable[[Callable[[Txn], Any]], Any]


class Quarantine:
    """The `quarantine` table, and the sink scans report undecodable records to.

    A scan (often in a read transaction, which cannot write) calls `report`; the move
    (delete from the table, keep in `quarantine` with the error) is queued on the
    group-commit writer. The move checks that the bytes are unchanged first.
    """

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._db = env.db("quarantine")
        self._submit: Submit | None = None
        self._lock = threading.Lock()
        self._pending: set[tuple[str, bytes]] = set()
        self.reported = 0
        """Undecodable records reported since open (each counted once)."""

    def attach(self, submit: Submit) -> None:
        self._submit = submit

    def report(self, table: str, key: bytes, raw: bytes, error: Exception, at: float) -> None:
        with self._lock:
            if (table, key) in self._pending:
                return
            self._pending.add((table, key))
            self.reported += 1
        logger.error("quarantining undecodable %s record %r: %s", table, key, error)
        if self._submit is not None:
            record = QuarantinedRecord(table, key, raw, str(error), at)
            self._submit(lambda txn: self.move(txn, record))

    def move(self, txn: Txn, record: QuarantinedRecord) -> bool:
        """Move one record into quarantine if its table still holds the same bytes."""
        db = self._env.db(record.table)
        try:
            current = txn.get(record.key, db=db)
            if current is None or bytes(current) != record.raw:
                return False
            txn.delete(record.key, db=db)
            txn.put(record.table.encode() + b"\x00" + record.key, encode(record), db=self._db)
            return True
        finally:
            with self._lock:
                self._pending.discard((record.table, record.key))

    def list(self, txn: Txn, limit: int = 100) -> list[QuarantinedRecord]:
        out = []
        for _key, raw in txn.cursor(db=self._db):
            out.append(decode(QuarantinedRecord, raw))
            if len(out) >= limit:
                break
        return out

    def count(self, txn: Txn) -> int:
        return int(txn.stat(self._db)["entries"])
