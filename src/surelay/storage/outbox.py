"""The outbox: accepted messages not yet delivered or dead-lettered.

Keyed by acceptance sequence, with indexes by message id, by due time ("everything due
by T") and by partition ("everything for partition P, in order"). Functions take the
caller's transaction so compound operations stay atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from surelay.envelope import Envelope
from surelay.storage.codec import Report, decode_or_report, encode, encode_outbox
from surelay.storage.environment import Environment, Txn
from surelay.storage.keys import from_u64, micros, text_key, u16, u64
from surelay.storage.records import OutboxEntry

__all__ = ["Outbox"]

MAX_PARTITIONS = 1 << 16


class Outbox:
    def __init__(self, env: Environment, report: Report) -> None:
        self._main = env.db("outbox")
        self._ids = env.db("outbox_id")
        self._due = env.db("outbox_due")
        self._part = env.db("outbox_part")
        self._meta = env.db("meta")
        self._report = report

    def _load(self, txn: Txn, seq_key: bytes) -> OutboxEntry | None:
        raw = txn.get(seq_key, db=self._main)
        if raw is None:
            return None
        return decode_or_report(OutboxEntry, "outbox", seq_key, raw, self._report)

    def enqueue(
        self, txn: Txn, envelope: Envelope, *, partition: int, due_at: float
    ) -> OutboxEntry:
        """Add an accepted message; `ValueError` if its id is already in the outbox."""
        return self.enqueue_many(txn, [(envelope, partition)], due_at=due_at)[0]

    def enqueue_many(
        self, txn: Txn, items: list[tuple[Envelope, int]], *, due_at: float
    ) -> list[OutboxEntry]:
        """`enqueue` for several (envelope, partition) pairs: one sequence update, and one
        LMDB call per table (py-lmdb releases the GIL on every call, which costs a thread
        switch whenever another thread is running)."""
        raw = txn.get(b"outbox_seq", db=self._meta)
        seq = from_u64(raw) if raw is not None else 0
        due = micros(due_at)
        out = []
        main, ids, due_idx, part_idx = [], [], [], []
        prefixes: dict[int, bytes] = {}
        for envelope, partition in items:
            prefix = prefixes.get(partition)
            if prefix is None:
                if not 0 <= partition < MAX_PARTITIONS:
                    raise ValueError(f"partition must be in [0, {MAX_PARTITIONS}), got {partition}")
                prefix = prefixes[partition] = u16(partition)
            seq += 1
            entry = OutboxEntry(seq, envelope, due_at, partition)
            seq_key = u64(seq)
            main.append((seq_key, encode_outbox(entry)))
            ids.append((text_key(envelope.message_id), seq_key))
            due_idx.append((due + seq_key, b""))
            part_idx.append((prefix + seq_key, b""))
            out.append(entry)
        _, added = txn.cursor(db=self._ids).putmulti(ids, overwrite=False)
        if added != len(ids):
            for (id_key, seq_key), entry in zip(ids, out, strict=True):
                if txn.get(id_key, db=self._ids) != seq_key:
                    raise ValueError(
                        f"message {entry.envelope.message_id!r} is already in the outbox"
                    )
        txn.cursor(db=self._main).putmulti(main)
        txn.cursor(db=self._due).putmulti(due_idx)
        txn.cursor(db=self._part).putmulti(part_idx)
        txn.put(b"outbox_seq", u64(seq), db=self._meta)
        return out

    def get(self, txn: Txn, message_id: str) -> OutboxEntry | None:
        seq = txn.get(text_key(message_id), db=self._ids)
        return None if seq is None else self._load(txn, bytes(seq))

    def reschedule(
        self, txn: Txn, message_id: str, *, attempt: int, due_at: float
    ) -> OutboxEntry | None:
        """Set the next attempt number and when it is due; None if not in the outbox."""
        entry = self.get(txn, message_id)
        if entry is None:
            return None
        seq = u64(entry.seq)
        txn.delete(micros(entry.due_at) + seq, db=self._due)
        updated = replace(entry, envelope=replace(entry.envelope, attempt=attempt), due_at=due_at)
        txn.put(seq, encode(updated), db=self._main)
        txn.put(micros(due_at) + seq, b"", db=self._due)
        return updated

    def remove(self, txn: Txn, message_id: str) -> OutboxEntry | None:
        """Remove a message and its index entries; returns it, or None if absent."""
        id_key = text_key(message_id)
        seq = txn.get(id_key, db=self._ids)
        if seq is None:
            return None
        seq = bytes(seq)
        entry = self._load(txn, seq)
        txn.delete(id_key, db=self._ids)
        txn.delete(seq, db=self._main)
        if entry is not None:
            txn.delete(micros(entry.due_at) + seq, db=self._due)
            txn.delete(u16(entry.partition) + seq, db=self._part)
        return entry

    def remove_entries(self, txn: Txn, entries: Iterable[OutboxEntry]) -> int:
        """Remove entries as their owner last saw them (no read-back, for the hot path);
        returns how many were still there. If an entry's due time changed meanwhile, its
        stale due-index entry is left behind and skipped by every reader (it points at
        nothing)."""
        delete = txn.delete  # positional calls: py-lmdb parses keywords per call
        ids, main, due, part = self._ids, self._main, self._due, self._part
        removed = 0
        for entry in entries:
            if not delete(text_key(entry.envelope.message_id), b"", ids):
                continue
            seq = u64(entry.seq)
            delete(seq, b"", main)
            delete(micros(entry.due_at) + seq, b"", due)
            delete(u16(entry.partition) + seq, b"", part)
            removed += 1
        return removed

    def scan(self, txn: Txn, *, after: int = 0, limit: int | None = None) -> list[OutboxEntry]:
        """Entries in acceptance order, after sequence number `after`."""
        out: list[OutboxEntry] = []
        cursor = txn.cursor(db=self._main)
        if not cursor.set_range(u64(after + 1)):
            return out
        for key in cursor.iternext(keys=True, values=False):
            entry = self._load(txn, bytes(key))
            if entry is not None:
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def due(self, txn: Txn, until: float, *, limit: int | None = None) -> list[OutboxEntry]:
        """Entries due at or before `until`, earliest first."""
        bound = micros(until)
        return self._via_index(txn, self._due, b"", lambda k: k[:8] <= bound, limit)

    def in_partition(
        self, txn: Txn, partition: int, *, after: int = 0, limit: int | None = None
    ) -> list[OutboxEntry]:
        """Entries of one partition in acceptance order, after sequence number `after`."""
        prefix = u16(partition)
        start = prefix + u64(after + 1)
        return self._via_index(txn, self._part, start, lambda k: k[:2] == prefix, limit)

    def _via_index(
        self,
        txn: Txn,
        index: Any,
        start: bytes,
        keep_going: Callable[[bytes], bool],
        limit: int | None,
    ) -> list[OutboxEntry]:
        out: list[OutboxEntry] = []
        cursor = txn.cursor(db=index)
        if not cursor.set_range(start):
            return out
        for found in cursor.iternext(keys=True, values=False):
            index_entry = bytes(found)
            if not keep_going(index_entry):
                break
            entry = self._load(txn, index_entry[-8:])
            if entry is not None:
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def count(self, txn: Txn) -> int:
        return int(txn.stat(self._main)["entries"])
