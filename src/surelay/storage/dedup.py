"""Dedup records: idempotency keys already delivered, each with an expiry.

An expiry index (expires_at, key) lets the TTL sweep remove exactly the expired records
in time proportional to their number (plus one step per re-put key: see `put_many`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from surelay.storage.codec import DecodeError, Report, decode_dedup, encode_dedup
from surelay.storage.environment import Environment, Txn
from surelay.storage.keys import micros, text_key
from surelay.storage.records import DedupRecord

__all__ = ["Dedup", "sweep_expired"]


class Dedup:
    """The records of table `table` (and its expiry index `<table>_exp`)."""

    def __init__(self, env: Environment, report: Report, table: str = "dedup") -> None:
        self._table = table
        self._db = env.db(table)
        self._exp = env.db(table + "_exp")
        self._report = report

    def put(self, txn: Txn, key: str, *, delivered_at: float, expires_at: float) -> DedupRecord:
        """Record `key` as delivered (replacing an earlier record of it)."""
        self.put_many(txn, (key,), delivered_at=delivered_at, expires_at=expires_at)
        return DedupRecord(key, delivered_at, expires_at)

    def put_many(
        self, txn: Txn, keys: Iterable[str], *, delivered_at: float, expires_at: float
    ) -> None:
        """`put` for keys delivered together: one encoding of the shared value and two
        LMDB calls for all of them (each call releases the GIL).

        A key delivered before gets the new record without a read: its old expiry-index
        entry stays behind, and the sweep drops it when it comes due, since it no longer
        matches the record. Keys are nearly always new (message ids by default), so
        reading every one of them first would cost each delivery for the rare re-put."""
        value = encode_dedup(delivered_at, expires_at)
        expiry = micros(expires_at)
        raw_keys = list(dict.fromkeys(text_key(key) for key in keys))
        txn.cursor(db=self._db).putmulti([(k, value) for k in raw_keys])
        txn.cursor(db=self._exp).putmulti([(expiry + k, b"") for k in raw_keys])

    def get(self, txn: Txn, key: str, *, now: float) -> DedupRecord | None:
        """The live record of `key`, or None (absent or expired)."""
        k = text_key(key)
        raw = txn.get(k, db=self._db)
        if raw is None:
            return None
        try:
            delivered_at, expires_at = decode_dedup(bytes(raw))
        except DecodeError as error:
            self._report(self._table, k, bytes(raw), error)
            return None
        if expires_at <= now:
            return None
        return DedupRecord(key, delivered_at, expires_at)

    def seen(self, txn: Txn, keys: Iterable[str], *, now: float) -> set[str]:
        """Which of `keys` were delivered and have not expired (one LMDB call)."""
        by_key = {text_key(key): key for key in keys}
        live = set()
        for k, raw in txn.cursor(db=self._db).getmulti(list(by_key)):
            try:
                expires_at = decode_dedup(bytes(raw))[1]
            except DecodeError as error:
                self._report(self._table, bytes(k), bytes(raw), error)
                continue
            if expires_at > now:
                live.add(by_key[bytes(k)])
        return live

    def sweep(self, txn: Txn, *, now: float, limit: int | None = None) -> int:
        """Delete records that expired at or before `now`; returns how many."""

        def expired(k: bytes, expiry: bytes) -> bool:
            raw = txn.get(k, db=self._db)
            if raw is None:
                return False
            try:
                current = micros(decode_dedup(bytes(raw))[1]) == expiry
            except DecodeError as error:
                self._report(self._table, k, bytes(raw), error)
                return False
            if current:
                txn.delete(k, db=self._db)
            return current

        return sweep_expired(txn, self._exp, now=now, limit=limit, expired=expired)

    def count(self, txn: Txn) -> int:
        return int(txn.stat(self._db)["entries"])


def sweep_expired(
    txn: Txn,
    index: Any,
    *,
    now: float,
    limit: int | None,
    expired: Callable[[bytes, bytes], bool],
) -> int:
    """Walk an expiry index (8-byte expiry, then a record's key) up to `now`: each entry
    is dropped, and `expired(key, expiry)` deletes its record if that entry is still the
    record's (a record put again has a later one) and says whether it did. Returns how
    many records went, at most `limit`."""
    bound = micros(now)
    cursor = txn.cursor(db=index)
    removed = 0
    while cursor.first():
        index_key = bytes(cursor.key())
        if index_key[:8] > bound or (limit is not None and removed >= limit):
            break
        if expired(index_key[8:], index_key[:8]):
            removed += 1
        cursor.delete()
    return removed
