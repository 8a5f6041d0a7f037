"""`surelay doctor`: what a data directory's store holds, what is wrong with it, and a
copy of what is readable into a fresh directory.

`examine` reads a store whose file is whole through LMDB (one consistent snapshot, so a
live directory can be checked) and, when the file is truncated or LMDB finds damage,
with the page reader (`surelay.storage.pagewalk`), which reads around damaged pages.
Every record of the tables that hold records is decoded. `salvage` copies every
readable outbox entry (in acceptance order, all due now), dead letter, dedup record and
inbox record into a new directory, where a runtime delivers them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from surelay.errors import StorageError
from surelay.storage.codec import DecodeError, decode, decode_dedup
from surelay.storage.environment import TABLES
from surelay.storage.integrity import MARKER
from surelay.storage.keys import micros
from surelay.storage.pagewalk import Damage, PageFile
from surelay.storage.preflight import check_data_file
from surelay.storage.records import (
    DeadLetter,
    OutboxEntry,
    QuarantinedRecord,
    ReplayRequest,
)
from surelay.storage.slots import holders
from surelay.storage.store import Store

__all__ = ["Examination", "Salvaged", "TableCheck", "examine", "salvage"]

_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "outbox": lambda raw: decode(OutboxEntry, raw),
    "scheduled": lambda raw: decode(OutboxEntry, raw),
    "dead": lambda raw: decode(DeadLetter, raw),
    "dedup": decode_dedup,
    "inbox": decode_dedup,
    "replay": lambda raw: decode(ReplayRequest, raw),
    "quarantine": lambda raw: decode(QuarantinedRecord, raw),
}
"""The tables whose values are records; the others are indexes and counters."""
_BATCH = 500


@dataclass
class TableCheck:
    name: str
    expected: int
    """Records the table's header says it holds."""
    readable: int = 0
    undecodable: int = 0


@dataclass
class Examination:
    """What `examine` found. `healthy` when `problems` is empty."""

    path: Path
    data_file: Path
    file_size: int
    read_with: str
    """`lmdb` (the file is whole) or `pages` (read around damage)."""
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "data_file": str(self.data_file),
            "file_size": self.file_size,
            "read_with": self.read_with,
            "healthy": self.healthy,
            "problems": list(self.problems),
            "tables": {
                t.name: {
                    "expected": t.expected,
                    "readable": t.readable,
                    "undecodable": t.undecodable,
                }
                for t in self.tables
            },
            "damaged_pages": [
                {"table": d.table, "page": d.page, "why": d.why} for d in self.damage
            ],
        }


def examine(path: Path) -> Examination:
    """Check the store at `path` (read only; never creates or changes anything)."""
    data_file = path / "data.mdb"
    size = data_file.stat().st_size if data_file.exists() else 0
    found = Examination(path, data_file, size, "lmdb")
    if not data_file.exists() and not (path / MARKER).exists():
        found.problems.append(f"{path} is not a surelay data directory (no data.mdb in it)")
        return found
    try:
        check_data_file(path, new_allowed=False)
    except StorageError as error:
        found.problems.append(str(error))
        found.read_with = "pages"
    if found.read_with == "lmdb":
        try:
            _examine_with_lmdb(path, found)
        except StorageError as error:
            found.problems.append(str(error))
            found.read_with = "pages"
    if found.read_with == "pages":
        found.tables.clear()
        _examine_pages(data_file, found)
    return found


def _examine_with_lmdb(path: Path, found: Examination) -> None:
    with Store.open(path, create=False, readonly=True) as store, store.read() as txn:
        for name in TABLES:
            db = store.env.db(name)
            check = TableCheck(name, int(txn.stat(db)["entries"]))
            _count(check, ((bytes(k), bytes(v)) for k, v in txn.cursor(db=db)))
            found.tables.append(check)
    _undecodable_problems(found)


def _examine_pages(data_file: Path, found: Examination) -> None:
    if not data_file.exists() or data_file.stat().st_size == 0:
        return  # nothing to read (the problem is reported already)
    pages = PageFile.open(data_file)
    if pages is None:
        return
    with pages:
        if pages.missing_pages:
            found.problems.append(
                f"{data_file} lacks its last {pages.missing_pages:,} pages (truncated)"
            )
        tables, damage = pages.tables()
        found.damage.extend(damage)
        for name in TABLES:
            db = tables.get(name)
            if db is None:
                found.problems.append(f"table {name!r} is not readable (or missing)")
                continue
            read = pages.read_table(name, db)
            found.damage.extend(read.damage)
            check = TableCheck(name, db.entries)
            _count(check, read.records)
            found.tables.append(check)
            if check.readable < check.expected:
                found.problems.append(
                    f"table {name!r}: {check.expected - check.readable:,} of its "
                    f"{check.expected:,} records are on damaged or missing pages"
                )
    _undecodable_problems(found)


def _count(check: TableCheck, records: Iterable[tuple[bytes, bytes]]) -> None:
    decoder = _DECODERS.get(check.name)
    for _key, raw in records:
        check.readable += 1
        if decoder is None:
            continue
        try:
            decoder(raw)
        except (DecodeError, ValueError, TypeError):
            check.undecodable += 1


def _undecodable_problems(found: Examination) -> None:
    for check in found.tables:
        if check.undecodable:
            found.problems.append(
                f"table {check.name!r}: {check.undecodable:,} records do not decode"
            )


@dataclass(frozen=True, slots=True)
class Salvaged:
    """How many records of each kind `salvage` copied."""

    outbox: int
    dead_letters: int
    dedup: int
    inbox: int

    def as_dict(self) -> dict[str, int]:
        return {
            "outbox": self.outbox,
            "dead_letters": self.dead_letters,
            "dedup": self.dedup,
            "inbox": self.inbox,
        }


def salvage(path: Path, out: Path) -> Salvaged:
    """Copy every readable outbox entry, dead letter, dedup and inbox record of the store
    at `path` into a new store at `out` (which must not exist or be empty).
    `StorageError` if a runtime runs on `path` (stop it first: the file is read page by
    page) or `out` is not fresh."""
    running = holders(path)
    if running:
        pids = ", ".join(str(pid) for pid in sorted(running.values()) if pid)
        raise StorageError(
            f"runtimes run on {path} (pids {pids or 'unknown'}); stop them before salvaging"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StorageError(f"{out} is not empty: salvage writes only into a new directory")
    data_file = path / "data.mdb"
    pages = PageFile.open(data_file) if data_file.exists() else None
    if pages is None:
        raise StorageError(f"{data_file} has no readable header: there is nothing to salvage")
    with pages:
        tables, _ = pages.tables()

        def records(name: str) -> list[tuple[bytes, bytes]]:
            db = tables.get(name)
            return [] if db is None else pages.read_table(name, db).records

        entries = sorted(_decoded(OutboxEntry, records("outbox")), key=lambda e: e.seq)
        dead = _decoded(DeadLetter, records("dead"))
        dedup = _valid_dedup(records("dedup"))
        inbox = _valid_dedup(records("inbox"))
    size = max(1 << 30, 2 * os.stat(data_file).st_size)
    with Store.open(out, map_size=size, max_map_size=16 * size) as store:
        futures: list[Future[Any]] = []
        for chunk in _chunks(entries):
            items = [(e.envelope, e.partition) for e in chunk]
            futures.append(store.write(partial(_put_entries, store, items)))
        for chunk in _chunks(dead):
            futures.append(store.write(partial(_put_dead, store, chunk)))
        for table, kept in (("dedup", dedup), ("inbox", inbox)):
            main, expiry = store.env.db(table), store.env.db(table + "_exp")
            for chunk in _chunks(kept):
                futures.append(store.write(partial(_put_dedup, main, expiry, chunk)))
        for future in futures:
            future.result()
    return Salvaged(len(entries), len(dead), len(dedup), len(inbox))


def _decoded(kind: type[Any], records: list[tuple[bytes, bytes]]) -> list[Any]:
    out = []
    for _key, raw in records:
        try:
            out.append(decode(kind, raw))
        except DecodeError:
            continue
    return out


def _valid_dedup(records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, float]]:
    out = []
    for key, raw in records:
        try:
            out.append((key, raw, decode_dedup(raw)[1]))
        except DecodeError:
            continue
    return out


def _put_entries(store: Store, items: list[tuple[Any, int]], txn: Any) -> None:
    store.outbox.enqueue_many(txn, items, due_at=0.0)


def _put_dead(store: Store, records: list[DeadLetter], txn: Any) -> None:
    for record in records:
        store.dead_letters.insert(txn, record)


def _put_dedup(main: Any, expiry: Any, chunk: list[tuple[bytes, bytes, float]], txn: Any) -> None:
    for key, raw, expires_at in chunk:
        txn.put(key, raw, db=main)
        txn.put(micros(expires_at) + key, b"", db=expiry)


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]
