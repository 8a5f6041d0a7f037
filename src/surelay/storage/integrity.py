"""Checks that keep a damaged store from crashing the process or passing for an empty one.

LMDB maps `data.mdb` into memory: a file shorter than its own header says would end in
SIGBUS at the first read past its end, and a zero-length one would be taken for a new,
empty store. So before mapping, `check_data_file` (`surelay.storage.preflight`) reads
the two meta pages (LMDB's header) with plain reads and refuses such a file with a
`StorageError` naming it. A marker file written beside `data.mdb` once it held a store
(or LMDB's lock file, left by any earlier open) tells a lost file from a new directory.
Damage LMDB itself finds later (a B-tree page that is not what its parent says) becomes
a `StorageError` naming the file too (`damaged`).

The meta page layout (LMDB 0.9, `MDB_meta` after a 16-byte page header, little-endian
64-bit): magic, version, address, map size, the free and main tables' `MDB_db`
records, the last page number, the transaction id. The page size is kept in the free
table's record.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import lmdb

from surelay.errors import StorageError

__all__ = [
    "MAGIC",
    "MARKER",
    "DbRecord",
    "Meta",
    "damaged",
    "doctor_hint",
    "mark",
    "parse_db",
    "parse_meta",
    "read_meta",
    "read_metas",
]

MAGIC = 0xBEEFC0DE
VERSION = 1
PAGE_HEADER = 16
P_INVALID = (1 << 64) - 1
MARKER = "surelay.store"
"""Written beside data.mdb once it holds a store: a zero-length data.mdb next to it was
lost, not new."""
_MARKER_TEXT = (
    "This directory holds a surelay store (data.mdb). If data.mdb is ever empty or missing "
    "while this file is here, the store was lost: restore it from a backup.\n"
)
_DB = struct.Struct("<IHHQQQQQ")
_META = struct.Struct("<IIQQ")
_TAIL = struct.Struct("<QQ")
_SMALLEST_PAGE = 512
_CORRUPTION: tuple[type[lmdb.Error], ...] = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.PanicError,
    lmdb.VersionMismatchError,
    lmdb.BadTxnError,  # a transaction that met a damaged page refuses everything after it
)


@dataclass(frozen=True, slots=True)
class DbRecord:
    """LMDB's `MDB_db`: where a table's B-tree starts and how big it is."""

    pad: int
    flags: int
    depth: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int
    entries: int
    root: int

    @property
    def empty(self) -> bool:
        return self.root == P_INVALID


@dataclass(frozen=True, slots=True)
class Meta:
    """One of the two meta pages: the newest valid one is the store's current state."""

    page_size: int
    map_size: int
    last_page: int
    txnid: int
    free: DbRecord
    main: DbRecord

    @property
    def needed_bytes(self) -> int:
        """The least a healthy data.mdb holds: every page up to the last one."""
        return (self.last_page + 1) * self.page_size


def parse_db(raw: bytes, offset: int = 0) -> DbRecord:
    return DbRecord(*_DB.unpack_from(raw, offset))


def parse_meta(page: bytes) -> Meta | None:
    """The meta record in `page` (a meta page from its start), or None if it is not one."""
    if len(page) < PAGE_HEADER + _META.size + 2 * _DB.size + _TAIL.size:
        return None
    magic, version, _address, map_size = _META.unpack_from(page, PAGE_HEADER)
    if magic != MAGIC or version != VERSION:
        return None
    at = PAGE_HEADER + _META.size
    free = parse_db(page, at)
    main = parse_db(page, at + _DB.size)
    last_page, txnid = _TAIL.unpack_from(page, at + 2 * _DB.size)
    page_size = free.pad
    if page_size < _SMALLEST_PAGE or page_size & (page_size - 1):
        return None
    return Meta(page_size, map_size, last_page, txnid, free, main)


def read_meta(data_file: Path) -> Meta | None:
    """The current meta of `data_file` (the valid one with the highest transaction id),
    read without mapping the file; None if neither meta page is valid."""
    return max(read_metas(data_file), key=lambda meta: meta.txnid, default=None)


def read_metas(data_file: Path) -> list[Meta]:
    """The valid meta pages of `data_file` (none, one or two)."""
    with open(data_file, "rb") as file:
        first = parse_meta(file.read(PAGE_HEADER + 256))
        metas = [first] if first is not None else []
        # The second meta page starts one page in; its size is in the first when that
        # one is readable, else try the usual sizes.
        sizes = [first.page_size] if first is not None else [4096, 8192, 16384, 65536]
        for size in sizes:
            file.seek(size)
            second = parse_meta(file.read(PAGE_HEADER + 256))
            if second is not None and second.page_size == size:
                metas.append(second)
                break
    return metas


def doctor_hint(path: Path) -> str:
    return (
        f"stop the runtimes on it and run `surelay doctor --path {path}` (with "
        "`--salvage OUT` to copy what is readable into a new directory)"
    )


def mark(where: Path) -> None:
    """Leave the marker that says `where` holds a store (once; best effort on a
    filesystem that refuses it: the other checks still hold)."""
    marker = where / MARKER
    if marker.exists():
        return
    try:
        temporary = where / (MARKER + ".tmp")
        temporary.write_text(_MARKER_TEXT)
        temporary.chmod(0o600)
        os.replace(temporary, marker)
    except OSError:
        return


def damaged(error: BaseException, where: Path) -> StorageError | None:
    """The `StorageError` for an LMDB error that means a damaged file, else None."""
    if not isinstance(error, _CORRUPTION):
        return None
    return StorageError(f"{where / 'data.mdb'} is damaged ({error}); {doctor_hint(where)}")
