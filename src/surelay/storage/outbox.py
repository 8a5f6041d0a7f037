"""The outbox: accepted messages not yet delivered or dead-lettered.

Each entry is stored under its location: the slot of the runtime that holds it (see
`surelay.storage.slots`), its partition, then its acceptance sequence (one counter for
the whole directory), so "everything of slot S for partition P, in order" is one range of
the table. Two indexes: by message id (to its location), and by due time for entries that
have been retried. An entry on its
first attempt (`envelope.attempt == 1`) is due from its acceptance, so the table itself,
in acceptance order, answers "everything due by T" for it. That keeps the hot path at two
LMDB writes per accepted message and two deletes per delivered one. Functions take the
caller's transaction so compound operations stay atomic.

An `Outbox` works on one slot: it adds to it, scans it, and removes from it. Lookups by
message id reach every slot. `adopt` moves another slot's entries into this one.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace

from surelay.envelope import Envelope
from surelay.storage.codec import Report, decode_or_report, encode_outbox
from surelay.storage.environment import Environment, Txn, keys_with_prefix
from surelay.storage.keys import from_u16, from_u64, micros, text_key, u16, u64
from surelay.storage.records import OutboxEntry, outbox_entry
from surelay.storage.space import entry_bytes

__all__ = ["Outbox", "Place", "location"]

MAX_PARTITIONS = 1 << 16
_HEAD = 4
"""Bytes of a location before its sequence number: slot, then partition."""


def _bytes_of(main: list[tuple[bytes, bytes]], ids: list[tuple[bytes, bytes]], page: int) -> int:
    """About how many bytes of pages new entries and their id index entries take."""
    return sum(entry_bytes(len(k), len(v), page) for k, v in itertools.chain(main, ids))


Place = tuple[bytes, bytes, bytes | None]
"""An entry's id-index key, location, and due-index key (retried entries only)."""


def location(slot: int, partition: int, seq: int) -> bytes:
    """An entry's key in the outbox table: slot (2 bytes), partition (2), sequence (8)."""
    return u16(slot) + u16(partition) + u64(seq)


class Outbox:
    def __init__(self, env: Environment, report: Report, slot: int = 0) -> None:
        self._main = env.db("outbox")
        self._ids = env.db("outbox_id")
        self._due = env.db("outbox_due")
        self._meta = env.db("meta")
        self._space = env.space
        self._report = report
        self.slot = slot
        self._slot_key = u16(slot)

    def _load(self, txn: Txn, where: bytes) -> OutboxEntry | None:
        raw = txn.get(where, db=self._main)
        if raw is None:
            return None
        return decode_or_report(OutboxEntry, "outbox", where, raw, self._report)

    def enqueue(
        self, txn: Txn, envelope: Envelope, *, partition: int, due_at: float
    ) -> OutboxEntry:
        """Add an accepted message; `ValueError` if its id is already in the outbox."""
        return self.enqueue_many(txn, [(envelope, partition)], due_at=due_at)[0]

    def enqueue_many(
        self,
        txn: Txn,
        items: list[tuple[Envelope, int]],
        *,
        due_at: float,
        dues: list[float] | None = None,
        moved: bool = False,
    ) -> list[OutboxEntry]:
        """`enqueue` for several (envelope, partition) pairs: one sequence update, and one
        LMDB call per table (py-lmdb releases the GIL on every call, which costs a thread
        switch whenever another thread is running). `dues`: each one's own due time
        (its sender holds it until then), instead of `due_at` for all. `moved`: they
        were just taken out of the scheduled table in this transaction, so they add no
        data (not refused at the store's reserve, or a full store could never drain)."""
        raw = txn.get(b"outbox_seq", db=self._meta)
        seq = from_u64(raw) if raw is not None else 0
        out = []
        main, ids, retried = [], [], []
        prefixes: dict[int, bytes] = {}
        for index, (envelope, partition) in enumerate(items):
            prefix = prefixes.get(partition)
            if prefix is None:
                if not 0 <= partition < MAX_PARTITIONS:
                    raise ValueError(f"partition must be in [0, {MAX_PARTITIONS}), got {partition}")
                prefix = prefixes[partition] = self._slot_key + u16(partition)
            seq += 1
            entry = outbox_entry(seq, envelope, due_at if dues is None else dues[index], partition)
            where = prefix + u64(seq)
            main.append((where, encode_outbox(entry)))
            ids.append((text_key(envelope.message_id), where))
            if envelope.attempt > 1:  # carried over from elsewhere: due like a retry
                retried.append((micros(entry.due_at) + where, b""))
            out.append(entry)
        # Sends add data: refused (`StorageFull`) before the reserve kept for the writes
        # that free space (`surelay.storage.space`).
        if not moved:
            self._space.admit(txn, _bytes_of(main, ids, self._space.page_size))
        _, added = txn.cursor(db=self._ids).putmulti(ids, overwrite=False)
        if added != len(ids):
            for (id_key, where), entry in zip(ids, out, strict=True):
                if txn.get(id_key, db=self._ids) != where:
                    raise ValueError(
                        f"message {entry.envelope.message_id!r} is already in the outbox"
                    )
        txn.cursor(db=self._main).putmulti(main)
        if retried:
            txn.cursor(db=self._due).putmulti(retried)
        txn.put(b"outbox_seq", u64(seq), db=self._meta)
        return out

    def holds_id(self, txn: Txn, id_key: bytes) -> bool:
        """Whether the message of this id key (`text_key(message_id)`) is in the outbox."""
        return txn.get(id_key, db=self._ids) is not None

    def get(self, txn: Txn, message_id: str) -> OutboxEntry | None:
        where = txn.get(text_key(message_id), db=self._ids)
        return None if where is None else self._load(txn, bytes(where))

    def reschedule(
        self,
        txn: Txn,
        message_id: str,
        *,
        attempt: int,
        due_at: float,
        last_error: str | None = None,
        failed_at: float | None = None,
    ) -> OutboxEntry | None:
        """Set the next attempt number (a retry's, so at least 2), when it is due and why
        (and when) the attempt before failed; None if the message is not in the outbox."""
        if attempt < 2:
            raise ValueError(f"a rescheduled message's next attempt is at least 2, got {attempt}")
        found = txn.get(text_key(message_id), db=self._ids)
        if found is None:
            return None
        where = bytes(found)
        entry = self._load(txn, where)
        if entry is None:
            return None
        if entry.envelope.attempt > 1:
            txn.delete(micros(entry.due_at) + where, db=self._due)
        updated = replace(
            entry,
            envelope=replace(entry.envelope, attempt=attempt),
            due_at=due_at,
            last_error=last_error,
            failed_at=failed_at,
        )
        txn.put(where, encode_outbox(updated), db=self._main)
        txn.put(micros(due_at) + where, b"", db=self._due)
        return updated

    def remove(self, txn: Txn, message_id: str) -> OutboxEntry | None:
        """Remove a message and its index entries; returns it, or None if absent."""
        id_key = text_key(message_id)
        where = txn.get(id_key, db=self._ids)
        if where is None:
            return None
        where = bytes(where)
        entry = self._load(txn, where)
        txn.delete(id_key, db=self._ids)
        txn.delete(where, db=self._main)
        if entry is not None and entry.envelope.attempt > 1:
            txn.delete(micros(entry.due_at) + where, db=self._due)
        return entry

    def places(self, entries: Iterable[OutboxEntry]) -> list[Place]:
        """Where entries of this slot are stored, as their owner last saw them: what
        `remove_at` needs, without their payloads (a removal waiting for its commit
        keeps no message in memory)."""
        slot = self.slot
        out = []
        for entry in entries:
            where = location(slot, entry.partition, entry.seq)
            due = micros(entry.due_at) + where if entry.envelope.attempt > 1 else None
            out.append((text_key(entry.envelope.message_id), where, due))
        return out

    def remove_at(self, txn: Txn, places: Iterable[Place]) -> int:
        """Remove entries at `places` (see `places`; no read-back, for the hot path);
        returns how many were still there. If an entry was rescheduled after its owner
        saw it, its due-index entry is left behind and skipped by every reader (it
        points at nothing)."""
        delete = txn.delete  # positional calls: py-lmdb parses keywords per call
        ids, main, due_db = self._ids, self._main, self._due
        removed = 0
        for id_key, where, due in places:
            if not delete(id_key, b"", ids):
                continue
            delete(where, b"", main)
            if due is not None:
                delete(due, b"", due_db)
            removed += 1
        return removed

    def remove_entries(self, txn: Txn, entries: Iterable[OutboxEntry]) -> int:
        """`remove_at(places(entries))`."""
        return self.remove_at(txn, self.places(entries))

    def scan(self, txn: Txn, *, after: int = 0, limit: int | None = None) -> list[OutboxEntry]:
        """This slot's entries in acceptance order, after sequence number `after`: the
        partitions' ranges merged by sequence number."""
        start = u64(after + 1)
        ranges = [
            keys_with_prefix(txn, self._main, prefix, prefix + start)
            for prefix in self._prefixes(txn)
        ]
        return self._entries(txn, heapq.merge(*ranges, key=_seq_part), limit)

    def due(self, txn: Txn, until: float, *, limit: int | None = None) -> list[OutboxEntry]:
        """This slot's entries due at or before `until`, earliest first (ties in
        acceptance order).

        Retried entries come from the due index. Entries on their first attempt are due
        from acceptance: each partition's range is read in acceptance order up to the
        first one accepted as due after `until`, so one accepted after a step back of the
        wall clock is listed with those accepted before it.
        """
        bound = micros(until)
        found: list[tuple[bytes, bytes, OutboxEntry]] = []
        for key in keys_with_prefix(txn, self._due, b""):
            when, where = key[:8], key[8:]
            if when > bound:
                break
            if not where.startswith(self._slot_key):
                continue
            entry = self._load(txn, where)
            if entry is not None and micros(entry.due_at) == when:
                found.append((when, where[_HEAD:], entry))
        for prefix in self._prefixes(txn):
            for where in keys_with_prefix(txn, self._main, prefix):
                entry = self._load(txn, where)
                if entry is None or entry.envelope.attempt > 1:
                    continue
                when = micros(entry.due_at)
                if when > bound:
                    break
                found.append((when, where[_HEAD:], entry))
        found.sort(key=lambda item: item[:2])
        return [entry for _, _, entry in found[:limit]]

    def in_partition(
        self, txn: Txn, partition: int, *, after: int = 0, limit: int | None = None
    ) -> list[OutboxEntry]:
        """This slot's entries of one partition in acceptance order, after sequence
        number `after`."""
        prefix = self._slot_key + u16(partition)
        where = keys_with_prefix(txn, self._main, prefix, prefix + u64(after + 1))
        return self._entries(txn, where, limit)

    def _entries(self, txn: Txn, where: Iterable[bytes], limit: int | None) -> list[OutboxEntry]:
        """The entries at these locations, in their order, up to `limit` (an entry that
        fails to decode is reported and skipped)."""
        out: list[OutboxEntry] = []
        for location_key in where:
            entry = self._load(txn, location_key)
            if entry is not None:
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def window(
        self,
        txn: Txn,
        partition: int,
        *,
        after: int,
        looked: int,
        max_bytes: int,
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """This slot's entries of `partition` after sequence number `after`, in
        acceptance order, raw (`(seq, raw)`: the caller decodes only what it takes): up to
        `looked` of them and about `max_bytes` (at least one). The flag says whether the
        range ended within those bounds."""
        prefix = self._slot_key + u16(partition)
        cursor = txn.cursor(db=self._main)
        out: list[tuple[int, bytes]] = []
        if not cursor.set_range(prefix + u64(after + 1)):
            return out, True
        size = 0
        for key, value in cursor.iternext(keys=True, values=True):
            if bytes(key[:_HEAD]) != prefix:
                return out, True
            if out and (len(out) >= looked or size >= max_bytes):
                return out, False
            raw = bytes(value)
            size += len(raw)
            out.append((from_u64(key, _HEAD), raw))
        return out, True

    def decode(self, partition: int, seq: int, raw: bytes) -> OutboxEntry | None:
        """Decode a raw entry of this slot read by `window` (None: reported, skipped)."""
        return decode_or_report(
            OutboxEntry, "outbox", location(self.slot, partition, seq), raw, self._report
        )

    def adopt(
        self,
        txn: Txn,
        slot: int,
        *,
        limit: int,
        route: Callable[[OutboxEntry], int],
        accept: Callable[[str], bool] | None = None,
        start: bytes | None = None,
        max_bytes: int = 8 << 20,
    ) -> tuple[dict[int, tuple[int, int]], bytes | None]:
        """Move entries of `slot` (whose runtime is gone) into this slot under the
        partition `route` gives each, keeping sequence numbers and due times: those whose
        transport `accept`s (all by default), among up to `limit` entries (and about
        `max_bytes`) looked at from location `start`. Returns, per partition, how many
        moved and the lowest sequence number moved there (so the partition's sender can
        stream them), and where to go on from (None: nothing of `slot` is left to look
        at). An entry that does not decode is moved too (to its old partition), and
        reported, but not counted in the partitions' moves (no sender can deliver it).
        Memory holds one chunk, never the slot's backlog."""
        if slot == self.slot:
            raise ValueError(f"slot {slot} is this outbox's own")
        rows, following = self._chunk(txn, u16(slot), start, limit, max_bytes)
        moves: dict[int, tuple[int, int]] = {}
        for old, raw in rows:
            entry = decode_or_report(OutboxEntry, "outbox", old, raw, self._report)
            if entry is not None and accept is not None and not accept(entry.envelope.transport):
                continue  # left for a runtime that has its transport
            if entry is None:  # moved, reported, never delivered: no sender to wake
                txn.delete(old, db=self._main)
                txn.put(
                    location(self.slot, from_u16(old, 2), from_u64(old, _HEAD)), raw, db=self._main
                )
                continue
            partition = route(entry)
            self._move(txn, old, entry, raw, partition)
            count, lowest = moves.get(partition, (0, entry.seq))
            moves[partition] = (count + 1, min(lowest, entry.seq))
        return moves, following

    def reroute(
        self,
        txn: Txn,
        route: Callable[[OutboxEntry], int],
        *,
        start: bytes | None = None,
        limit: int = 1000,
        max_bytes: int = 8 << 20,
    ) -> tuple[int, bytes | None]:
        """Move this slot's entries whose partition is not the one `route` gives them
        (the runtime's number of partitions changed), keeping sequence numbers, so each
        partition's range stays in acceptance order; up to `limit` entries (about
        `max_bytes`) looked at from `start`. Returns how many moved and where to go on
        from (None: done)."""
        rows, following = self._chunk(txn, self._slot_key, start, limit, max_bytes)
        moved = 0
        for old, raw in rows:
            entry = decode_or_report(OutboxEntry, "outbox", old, raw, self._report)
            if entry is None:
                continue
            partition = route(entry)
            if partition != from_u16(old, 2):
                self._move(txn, old, entry, raw, partition)
                moved += 1
        return moved, following

    def _chunk(
        self, txn: Txn, prefix: bytes, start: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Up to `limit` entries (about `max_bytes`) under `prefix` from `start`, raw,
        and where the next chunk starts (None: the prefix is done)."""
        cursor = txn.cursor(db=self._main)
        ended = not cursor.set_range(prefix if start is None else start)
        rows: list[tuple[bytes, bytes]] = []
        size = 0
        while not ended and len(rows) < limit and size < max_bytes:
            key = bytes(cursor.key())
            if not key.startswith(prefix):
                ended = True
                break
            raw = bytes(cursor.value())
            rows.append((key, raw))
            size += len(raw)
            ended = not cursor.next()
        return rows, None if ended or not rows else rows[-1][0] + b"\x00"

    def _move(self, txn: Txn, old: bytes, entry: OutboxEntry, raw: bytes, partition: int) -> None:
        """Move `entry` (at location `old`, stored as `raw`) to this slot's `partition`,
        keeping its sequence number; its id and due-index entries follow it."""
        new = location(self.slot, partition, entry.seq)
        txn.delete(old, db=self._main)
        moved = (
            raw
            if partition == entry.partition
            else encode_outbox(replace(entry, partition=partition))
        )
        txn.put(new, moved, db=self._main)
        txn.put(text_key(entry.envelope.message_id), new, db=self._ids)
        if entry.envelope.attempt > 1:
            when = micros(entry.due_at)
            txn.delete(when + old, db=self._due)
            txn.put(when + new, b"", db=self._due)

    def routed_for(self, txn: Txn) -> int | None:
        """The number of partitions this slot's entries are routed for (None: not
        recorded, as in a directory made before it was)."""
        raw = txn.get(b"partitions/" + self._slot_key, db=self._meta)
        return None if raw is None else from_u16(raw)

    def set_routed_for(self, txn: Txn, partitions: int) -> None:
        txn.put(b"partitions/" + self._slot_key, u16(partitions), db=self._meta)

    def slot_size(self, txn: Txn) -> int:
        """Entries of this slot (keys only: nothing is decoded)."""
        return sum(1 for _ in keys_with_prefix(txn, self._main, self._slot_key))

    def holds(self, txn: Txn, slot: int) -> bool:
        """Whether `slot` has any entry."""
        return next(keys_with_prefix(txn, self._main, u16(slot)), None) is not None

    def _prefixes(self, txn: Txn) -> list[bytes]:
        """This slot's partitions that hold entries, one seek each."""
        out = []
        cursor = txn.cursor(db=self._main)
        mine = self._slot_key
        probe = mine
        while cursor.set_range(probe):
            prefix = bytes(cursor.key()[:_HEAD])
            if not prefix.startswith(mine):
                break
            out.append(prefix)
            following = from_u16(prefix, 2) + 1
            if following >= MAX_PARTITIONS:
                break
            probe = mine + u16(following)
        return out

    def count(self, txn: Txn) -> int:
        """Entries of every slot (one read, no scan)."""
        return int(txn.stat(self._main)["entries"])


def _seq_part(where: bytes) -> bytes:
    return where[_HEAD:]
