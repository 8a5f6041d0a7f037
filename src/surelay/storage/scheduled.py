"""Scheduled messages: accepted with a due time in the future, kept on disk until it comes.

A message sent with `delay` or `not_before` does not enter the outbox at once: it waits
in the `scheduled` table, keyed by its runtime's slot, its due time and its acceptance
sequence, so "everything of slot S due by T, in due order" is one range, and memory holds
none of it (a million messages scheduled hours ahead cost disk, not RAM). When its time
comes, the runtime's timer moves it into the outbox in one transaction (`fire`): it is
then an ordinary accepted message, and since the move is atomic it fires once.

Order per key is acceptance order. A message of a key that has messages scheduled is
itself scheduled, at its own due time or the key's latest, whichever is later
(`scheduled_key` holds each such key's latest due time and how many wait), so it never
passes them; messages of the key accepted before a delayed one are not held back. Rows
of one due time fire in acceptance order.

A `Scheduled` works on one slot, like an `Outbox`; `adopt` takes over another slot's
rows (its runtime is gone) with their due times. Functions take the caller's
transaction so that acceptance, firing and adoption are each atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from surelay.envelope import Envelope
from surelay.storage.codec import Report, decode_or_report, encode_outbox
from surelay.storage.environment import Environment, Txn, keys_with_prefix
from surelay.storage.keys import from_u64, micros, text_key, u16, u64
from surelay.storage.outbox import Outbox
from surelay.storage.records import OutboxEntry, outbox_entry
from surelay.storage.space import entry_bytes

__all__ = ["Scheduled"]

_HOLD_BYTES = 16
"""A `scheduled_key` value: the key's latest due time (micros), then how many wait."""


class Scheduled:
    def __init__(self, env: Environment, outbox: Outbox, report: Report) -> None:
        self._rows = env.db("scheduled")
        self._ids = env.db("scheduled_id")
        self._keys = env.db("scheduled_key")
        self._meta = env.db("meta")
        self._space = env.space
        self._outbox = outbox
        self._report = report
        self.slot = outbox.slot
        self._slot_key = u16(outbox.slot)

    # -- acceptance ----------------------------------------------------------------------

    def holds_keys(self, txn: Txn) -> bool:
        """Whether any key has messages scheduled (one read: the hot path's question)."""
        return bool(txn.stat(self._keys)["entries"])

    def accept(
        self,
        txn: Txn,
        items: Sequence[tuple[Envelope, int]],
        dues: Sequence[float | None] | None,
        *,
        now: float,
    ) -> tuple[list[OutboxEntry], list[OutboxEntry]]:
        """Accept (envelope, partition) pairs, each due at `dues[i]` (None: at once):
        those due now and not held back by their key go to the outbox, the others are
        scheduled. Returns (outbox entries, scheduled entries), each in acceptance order.
        `ValueError` if a message id is already scheduled or in the outbox."""
        keyed = self.holds_keys(txn)
        if dues is None and not keyed:  # (the usual send: one read, then the outbox)
            return self._outbox.enqueue_many(txn, list(items), due_at=now), []
        latest: dict[str, float] = {}
        later: list[tuple[Envelope, int, float]] = []
        at_once: list[tuple[Envelope, int]] = []
        # the outbox's part first: a key's messages scheduled here are all accepted after
        # its messages that go to the outbox, and the sequence numbers say so
        for index, (envelope, partition) in enumerate(items):
            due = None if dues is None else dues[index]
            key = envelope.key
            if key is not None:
                held = latest.get(key)
                if held is None and keyed:
                    held = self._latest(txn, key)
                if held is not None:
                    due = held if due is None else max(due, held)
                if due is not None:
                    latest[key] = due
            if due is None:
                at_once.append((envelope, partition))
            else:
                later.append((envelope, partition, due))
        entries = self._outbox.enqueue_many(txn, at_once, due_at=now) if at_once else []
        return entries, self._add(txn, later) if later else []

    def _latest(self, txn: Txn, key: str) -> float | None:
        raw = txn.get(text_key(key), db=self._keys)
        return None if raw is None else from_u64(raw) / 1_000_000

    def _add(
        self, txn: Txn, later: list[tuple[Envelope, int, float]], *, moved: bool = False
    ) -> list[OutboxEntry]:
        """Schedule messages (new ones: refused if their id is accepted already; `moved`
        ones were just taken out of the outbox)."""
        raw_seq = txn.get(b"outbox_seq", db=self._meta)
        seq = from_u64(raw_seq) if raw_seq is not None else 0
        rows: list[tuple[bytes, bytes]] = []
        ids: list[tuple[bytes, bytes]] = []
        out: list[OutboxEntry] = []
        counts: dict[str, tuple[float, int]] = {}
        for envelope, partition, due in later:
            seq += 1
            entry = outbox_entry(seq, envelope, due, partition)
            where = self._slot_key + micros(due) + u64(seq)
            rows.append((where, encode_outbox(entry)))
            ids.append((text_key(envelope.message_id), where))
            out.append(entry)
            if envelope.key is not None:
                _, count = counts.get(envelope.key, (due, 0))
                counts[envelope.key] = (due, count + 1)
        if not moved:  # (a move adds no data: a full store must still drain)
            page = self._space.page_size
            self._space.admit(txn, sum(entry_bytes(len(k), len(v), page) for k, v in rows + ids))
        _, added = txn.cursor(db=self._ids).putmulti(ids, overwrite=False)
        for (id_key, where), entry in zip(ids, out, strict=True):
            if (added != len(ids) and txn.get(id_key, db=self._ids) != where) or (
                not moved and self._outbox.holds_id(txn, id_key)
            ):
                raise ValueError(f"message {entry.envelope.message_id!r} is already accepted")
        txn.cursor(db=self._rows).putmulti(rows)
        for key, (due, count) in counts.items():
            name = text_key(key)
            raw = txn.get(name, db=self._keys)
            before = 0 if raw is None else from_u64(raw, 8)
            txn.put(name, micros(due) + u64(before + count), db=self._keys)
        txn.put(b"outbox_seq", u64(seq), db=self._meta)
        return out

    def defer(self, txn: Txn, waits: Sequence[tuple[OutboxEntry, float]]) -> list[OutboxEntry]:
        """Move unkeyed messages of this slot from the outbox to wait here, each until its
        time (their rate's turn is far off: they free the window meanwhile), their
        attempts kept; returns the entries made here for those still in the outbox. The
        entries given are the owner's (no read back: one write for many)."""
        if any(entry.envelope.key is not None for entry, _ in waits):
            raise ValueError("only messages without a key may be deferred: keys keep order")
        places = self._outbox.places(entry for entry, _ in waits)
        still = [
            (entry.envelope, entry.partition, due)
            for (entry, due), place in zip(waits, places, strict=True)
            if self._outbox.remove_at(txn, [place])
        ]
        return self._add(txn, still, moved=True) if still else []

    # -- firing --------------------------------------------------------------------------

    def next_due(self, txn: Txn) -> float | None:
        """When this slot's earliest scheduled message is due (None: none is)."""
        first = next(keys_with_prefix(txn, self._rows, self._slot_key), None)
        return None if first is None else from_u64(first, 2) / 1_000_000

    def fire(
        self,
        txn: Txn,
        until: float,
        *,
        limit: int,
        route: Callable[[OutboxEntry], int],
        now: float,
    ) -> list[OutboxEntry]:
        """Move this slot's messages due at or before `until` (at most `limit`, earliest
        first, ties in acceptance order) into the outbox, each under the partition
        `route` gives it now, with a new sequence number (behind everything accepted
        until now, as its key's later messages are still scheduled), due at its own time
        (`until` may be ahead of `now`: its sender holds it until then); returns their
        outbox entries. A row that does not decode is reported (quarantined) and
        dropped."""
        bound = micros(until)
        taken: list[tuple[bytes, bytes]] = []
        cursor = txn.cursor(db=self._rows)
        if cursor.set_range(self._slot_key):
            for key, value in cursor.iternext(keys=True, values=True):
                where = bytes(key)
                if not where.startswith(self._slot_key) or where[2:10] > bound:
                    break
                taken.append((where, bytes(value)))
                if len(taken) >= limit:
                    break
        moving: list[tuple[Envelope, int]] = []
        dues: list[float] = []
        released: dict[str, int] = {}
        for where, raw in taken:
            txn.delete(where, db=self._rows)
            entry = decode_or_report(OutboxEntry, "scheduled", where, raw, self._report)
            if entry is None:
                continue
            envelope = entry.envelope
            txn.delete(text_key(envelope.message_id), db=self._ids)
            if envelope.key is not None:
                released[envelope.key] = released.get(envelope.key, 0) + 1
            moving.append((envelope, route(entry)))
            dues.append(max(now, entry.due_at))
        for key, count in released.items():
            self._release(txn, key, count)
        if not moving:
            return []
        return self._outbox.enqueue_many(txn, moving, due_at=now, dues=dues, moved=True)

    def _release(self, txn: Txn, key: str, count: int) -> None:
        name = text_key(key)
        raw = txn.get(name, db=self._keys)
        if raw is None:
            return
        left = from_u64(raw, 8) - count
        if left > 0:
            txn.put(name, bytes(raw[:8]) + u64(left), db=self._keys)
        else:
            txn.delete(name, db=self._keys)

    # -- lookups, counts and adoption ----------------------------------------------------

    def get(self, txn: Txn, message_id: str) -> OutboxEntry | None:
        """A scheduled message of any slot, or None."""
        where = txn.get(text_key(message_id), db=self._ids)
        if where is None:
            return None
        raw = txn.get(bytes(where), db=self._rows)
        if raw is None:
            return None
        return decode_or_report(OutboxEntry, "scheduled", bytes(where), bytes(raw), self._report)

    def count(self, txn: Txn) -> int:
        """Messages scheduled, of every slot (one read, no scan)."""
        return int(txn.stat(self._rows)["entries"])

    def holds(self, txn: Txn, slot: int) -> bool:
        """Whether `slot` has any message scheduled."""
        return next(keys_with_prefix(txn, self._rows, u16(slot)), None) is not None

    def adopt(
        self,
        txn: Txn,
        slot: int,
        *,
        limit: int,
        accept: Callable[[str], bool] | None = None,
        start: bytes | None = None,
    ) -> tuple[int, bytes | None]:
        """Move `slot`'s scheduled messages (its runtime is gone) into this slot, keeping
        their due times and order: those whose transport `accept`s (all by default),
        among up to `limit` rows looked at from `start`. Returns how many moved and
        where to go on from (None: nothing of `slot` is left to look at). A row that does
        not decode is moved too, and reported."""
        if slot == self.slot:
            raise ValueError(f"slot {slot} is this table's own")
        prefix = u16(slot)
        cursor = txn.cursor(db=self._rows)
        rows: list[tuple[bytes, bytes]] = []
        ended = not cursor.set_range(prefix if start is None else start)
        while not ended and len(rows) < limit:
            key = bytes(cursor.key())
            if not key.startswith(prefix):
                ended = True
                break
            rows.append((key, bytes(cursor.value())))
            ended = not cursor.next()
        moved = 0
        for old, raw in rows:
            entry = decode_or_report(OutboxEntry, "scheduled", old, raw, self._report)
            if entry is not None and accept is not None and not accept(entry.envelope.transport):
                continue  # left for a runtime that has its transport
            new = self._slot_key + old[2:]
            txn.delete(old, db=self._rows)
            txn.put(new, raw, db=self._rows)
            if entry is not None:
                txn.put(text_key(entry.envelope.message_id), new, db=self._ids)
            moved += 1
        return moved, None if ended or not rows else rows[-1][0] + b"\x00"
