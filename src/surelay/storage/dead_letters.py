"""Dead letters: records, their indexes, and the status machine.

Ids are time-ordered (ULIDs made at the failure time), so the main table is in failure
order and a listing pages by id. Secondary indexes by status, reason class, key and
transport let a filtered `list` read only matching records. Status counts are kept in
`meta` so gauges never scan.

Status machine (`TRANSITIONS`): dead -> replaying (leased until a time) -> replayed, or
back to dead; a replaying record whose lease expired may be leased again; dead and
replayed records may be archived. Every change is one write, indexes included.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from surelay.storage.codec import Report, decode_or_report, encode
from surelay.storage.environment import Environment, Txn, keys_with_prefix
from surelay.storage.keys import from_u64, index_key, index_prefix, u64
from surelay.storage.records import (
    DEAD_LETTER_STATUSES,
    REASON_CLASSES,
    DeadLetter,
    DeadLetterStatus,
)

__all__ = ["TRANSITIONS", "DeadLetterTable", "matches"]


TRANSITIONS: dict[DeadLetterStatus, frozenset[DeadLetterStatus]] = {
    "dead": frozenset({"replaying", "archived"}),
    "replaying": frozenset({"replayed", "dead"}),
    "replayed": frozenset({"archived"}),
    "archived": frozenset(),
}
# Index tags, most selective first: `list` walks the first one given.
_TAGS = (("key", b"k"), ("transport", b"t"), ("reason_class", b"r"), ("status", b"s"))
MAX_LIMIT = 10_000


class DeadLetterTable:
    """The dead-letter records of a store and their indexes (what operators do with
    them is `surelay.operations.dead_letters`)."""

    def __init__(self, env: Environment, report: Report) -> None:
        self._db = env.db("dead")
        self._idx = env.db("dead_idx")
        self._meta = env.db("meta")
        self._report = report

    # -- reading -------------------------------------------------------------------------

    def get(self, txn: Txn, dead_letter_id: str) -> DeadLetter | None:
        key = dead_letter_id.encode("utf-8")
        raw = txn.get(key, db=self._db)
        if raw is None:
            return None
        return decode_or_report(DeadLetter, "dead", key, raw, self._report)

    def list(
        self,
        txn: Txn,
        *,
        status: str | None = "dead",
        reason_class: str | None = None,
        key: str | None = None,
        transport: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[DeadLetter]:
        """Matching records, oldest failure first; `after` is the last id of the
        previous page. Walks the most selective index given, never the whole table."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be in [1, {MAX_LIMIT}], got {limit}")
        if status is not None and status not in DEAD_LETTER_STATUSES:
            raise ValueError(
                f"status must be one of {DEAD_LETTER_STATUSES} or None, got {status!r}"
            )
        wanted = {"status": status, "reason_class": reason_class, "key": key}
        wanted["transport"] = transport
        given = [(name, tag) for name, tag in _TAGS if wanted[name] is not None]
        out: builtins.list[DeadLetter] = []
        if given:
            name, tag = given[0]
            prefix = index_prefix(tag, wanted[name])
            cursor = txn.cursor(db=self._idx)
            start = prefix + (after.encode("ascii") + b"\x00" if after else b"")
            if not cursor.set_range(start):
                return out
            for found in cursor.iternext(keys=True, values=False):
                index_entry = bytes(found)
                if not index_entry.startswith(prefix):
                    break
                record = self.get(txn, index_entry[len(prefix) :].decode("ascii"))
                if record is not None and matches(record, wanted):
                    out.append(record)
                    if len(out) >= limit:
                        break
            return out
        cursor = txn.cursor(db=self._db)
        start = after.encode("utf-8") + b"\x00" if after else b""
        if not cursor.set_range(start):
            return out
        for raw_key in cursor.iternext(keys=True, values=False):
            record = self.get(txn, bytes(raw_key).decode("utf-8"))
            if record is not None:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def matching(
        self,
        txn: Txn,
        *,
        status: str | None = "dead",
        reason_class: str | None = None,
        key: str | None = None,
        transport: str | None = None,
    ) -> Iterator[DeadLetter]:
        """Every record `list` would give, page after page, oldest first."""
        after = None
        while True:
            page = self.list(
                txn,
                status=status,
                reason_class=reason_class,
                key=key,
                transport=transport,
                limit=MAX_LIMIT,
                after=after,
            )
            yield from page
            if len(page) < MAX_LIMIT:
                return
            after = page[-1].id

    def count(self, txn: Txn, status: str | None = None) -> int:
        """How many records have `status` (all records if None), without a scan."""
        if status is None:
            return int(txn.stat(self._db)["entries"])
        raw = txn.get(b"dl_count:" + status.encode(), db=self._meta)
        return from_u64(raw) if raw is not None else 0

    def count_by_reason(self, txn: Txn, status: str = "dead") -> dict[str, int]:
        """How many records in `status` each reason class has: index keys only, no
        record is decoded."""
        in_status = set(self._ids_under(txn, index_prefix(b"s", status)))
        return {
            reason: sum(
                1 for i in self._ids_under(txn, index_prefix(b"r", reason)) if i in in_status
            )
            for reason in REASON_CLASSES
        }

    def _ids_under(self, txn: Txn, prefix: bytes) -> Iterator[bytes]:
        return (entry[len(prefix) :] for entry in keys_with_prefix(txn, self._idx, prefix))

    # -- writing -------------------------------------------------------------------------

    def insert(self, txn: Txn, record: DeadLetter) -> DeadLetter:
        """Store a new record; `ValueError` if its id exists."""
        if not record.id.isascii() or not record.id:
            raise ValueError(f"dead letter ids are non-empty ASCII, got {record.id!r}")
        key = record.id.encode("utf-8")
        if txn.get(key, db=self._db) is not None:
            raise ValueError(f"dead letter {record.id!r} already exists")
        self._write(txn, None, record)
        return record

    def transition(
        self,
        txn: Txn,
        dead_letter_id: str,
        to: DeadLetterStatus,
        *,
        record: DeadLetter | None = None,
        **changes: Any,
    ) -> DeadLetter:
        """Move a record to status `to` (with other field changes), or raise
        `ValueError` if the status machine forbids it, `KeyError` if it is missing.
        `record`: the record as the caller read it in this same transaction (not read
        again)."""
        if record is None:
            record = self.get(txn, dead_letter_id)
        if record is None:
            raise KeyError(f"no dead letter {dead_letter_id!r}")
        if to not in TRANSITIONS[record.status]:
            raise ValueError(
                f"dead letter {dead_letter_id!r} is {record.status!r}; it cannot become {to!r}"
            )
        lease = changes.pop("lease_until", None)
        if to != "replaying":
            lease = None  # only a replaying record holds a lease
        updated = replace(record, status=to, lease_until=lease, **changes)
        self._write(txn, record, updated)
        return updated

    def lease(
        self,
        txn: Txn,
        dead_letter_id: str,
        *,
        now: float,
        until: float,
        renew: bool = False,
        record: DeadLetter | None = None,
    ) -> DeadLetter | None:
        """Take a record for replay until `until`: a `dead` one, or a `replaying` one
        whose lease expired (its worker died), or, with `renew`, one the caller knows it
        holds already. None if it cannot be taken. `record`: as `transition`."""
        if record is None:
            record = self.get(txn, dead_letter_id)
        if record is None:
            return None
        if record.status == "replaying" and (renew or (record.lease_until or 0.0) <= now):
            updated = replace(record, lease_until=until)
            self._write(txn, record, updated)
            return updated
        if record.status != "dead":
            return None
        return self.transition(txn, dead_letter_id, "replaying", record=record, lease_until=until)

    def expired_leases(
        self, txn: Txn, *, now: float, limit: int = 1000
    ) -> builtins.list[DeadLetter]:
        """`replaying` records whose lease ran out."""
        page = self.list(txn, status="replaying", limit=min(limit, MAX_LIMIT))
        return [r for r in page if (r.lease_until or 0.0) <= now]

    def archive(self, txn: Txn, ids: Iterable[str]) -> int:
        """Archive the `dead` and `replayed` records among `ids`; returns how many
        changed. Unknown ids and records in other states are left alone."""
        changed = 0
        for dead_letter_id in ids:
            record = self.get(txn, dead_letter_id)
            if record is not None and record.status in ("dead", "replayed"):
                self.transition(txn, dead_letter_id, "archived")
                changed += 1
        return changed

    def remove(self, txn: Txn, dead_letter_id: str) -> DeadLetter | None:
        record = self.get(txn, dead_letter_id)
        if record is not None:
            self._write(txn, record, None)
        return record

    def purge(self, txn: Txn, *, status: str, older_than: float | None, now: float) -> int:
        """Delete records in `status` that failed more than `older_than` seconds before
        `now` (any age if None); returns how many."""
        if status not in DEAD_LETTER_STATUSES:
            raise ValueError(f"status must be one of {DEAD_LETTER_STATUSES}, got {status!r}")
        if status == "replaying":
            raise ValueError("replaying dead letters cannot be purged: a worker holds them")
        cutoff = None if older_than is None else now - older_than
        prefix = index_prefix(b"s", status)
        doomed: builtins.list[DeadLetter] = []
        cursor = txn.cursor(db=self._idx)
        if cursor.set_range(prefix):
            for found in cursor.iternext(keys=True, values=False):
                index_entry = bytes(found)
                if not index_entry.startswith(prefix):
                    break
                record = self.get(txn, index_entry[len(prefix) :].decode("ascii"))
                if record is None:
                    continue
                if cutoff is None or record.failed_at < cutoff:
                    doomed.append(record)
        for record in doomed:
            self._write(txn, record, None)
        return len(doomed)

    def sweep(self, txn: Txn, *, cutoff: float, limit: int | None = None) -> int:
        """Retention: delete records (not being replayed) that failed before `cutoff`.
        Reads only the expired head of the table."""
        doomed: builtins.list[DeadLetter] = []
        cursor = txn.cursor(db=self._db)
        for raw_key in cursor.iternext(keys=True, values=False):
            record = self.get(txn, bytes(raw_key).decode("utf-8"))
            if record is None:
                continue
            if record.failed_at >= cutoff or (limit is not None and len(doomed) >= limit):
                break
            if record.status != "replaying":
                doomed.append(record)
        for record in doomed:
            self._write(txn, record, None)
        return len(doomed)

    def _write(self, txn: Txn, old: DeadLetter | None, new: DeadLetter | None) -> None:
        """Replace `old` by `new` (either may be None), keeping indexes and counts
        (an index entry or count that does not change is not touched)."""
        if old is not None:
            for name, tag in _TAGS:
                value = getattr(old, name)
                if new is None or getattr(new, name) != value:
                    txn.delete(index_key(tag, value, old.id), db=self._idx)
            if new is None or new.status != old.status:
                self._bump(txn, old.status, -1)
            if new is None:
                txn.delete(old.id.encode("utf-8"), db=self._db)
        if new is not None:
            txn.put(new.id.encode("utf-8"), encode(new), db=self._db)
            for name, tag in _TAGS:
                value = getattr(new, name)
                if old is None or getattr(old, name) != value:
                    txn.put(index_key(tag, value, new.id), b"", db=self._idx)
            if old is None or old.status != new.status:
                self._bump(txn, new.status, +1)

    def _bump(self, txn: Txn, status: str, delta: int) -> None:
        key = b"dl_count:" + status.encode()
        raw = txn.get(key, db=self._meta)
        current = from_u64(raw) if raw is not None else 0
        txn.put(key, u64(max(0, current + delta)), db=self._meta)


def matches(record: DeadLetter, wanted: Mapping[str, str | None]) -> bool:
    """Whether `record` has every field value of `wanted` (a None value: any)."""
    return all(value is None or getattr(record, name) == value for name, value in wanted.items())
