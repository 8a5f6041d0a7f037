"""Reading an LMDB file without LMDB, for `surelay doctor`: every record a damaged or
truncated `data.mdb` still holds, and where it is damaged.

LMDB maps the file and trusts its pages: a page past the end of a truncated file is
SIGBUS, and a damaged one an error that ends the whole transaction. This reader takes
each page with a plain read and checks it before use (its number, its kind, its bounds),
so a damaged page costs the records under it and nothing else. It follows the B-trees
from the newest valid meta page, as LMDB would, so records LMDB had freed are never
brought back. Read a directory no runtime is writing: the file is read page by page,
not as one snapshot.

Page layout (LMDB 0.9, little-endian, 64-bit): a 16-byte header (page number, pad,
flags, then lower and upper bounds of the free space, or the page count of an overflow
run), then an array of 2-byte node offsets. A node: data size (leaf) or child page
(branch) in `lo`, `hi` (and `flags` above bit 32 for a branch), flags, key size, then
the key and the data. A leaf's data too big for the page is on overflow pages: the node
then holds their first page number.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from surelay.storage.integrity import PAGE_HEADER, DbRecord, Meta, parse_db, read_meta

__all__ = ["Damage", "PageFile", "TableRead"]

P_BRANCH = 0x01
P_LEAF = 0x02
P_OVERFLOW = 0x04
P_LEAF2 = 0x20
F_BIGDATA = 0x01
F_SUBDATA = 0x02
F_DUPDATA = 0x04
_NODE = struct.Struct("<HHHH")
_HEADER = struct.Struct("<QHHHH")
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Damage:
    """A page the reader could not use, and the records under it that were lost."""

    table: str
    page: int
    why: str


@dataclass
class TableRead:
    """What a walk of one table found."""

    name: str
    expected: int
    """Records the table's header says it holds."""
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)


class PageFile:
    """A data.mdb read page by page. Open with `PageFile.open`; `None` for a file with no
    valid meta page."""

    def __init__(self, file: BinaryIO, path: Path, meta: Meta) -> None:
        """Read `file` (at `path`) from the state `meta` describes."""
        self._file = file
        self.path = path
        self.meta = meta
        self.page_size = meta.page_size
        self.size = os.fstat(file.fileno()).st_size

    @classmethod
    def open(cls, path: Path, meta: Meta | None = None) -> PageFile | None:
        """`path` from `meta` (default: its newest valid meta page)."""
        meta = meta if meta is not None else read_meta(path)
        if meta is None:
            return None
        return cls(open(path, "rb"), path, meta)  # closed by close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PageFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def missing_pages(self) -> int:
        """Pages the header counts that are past the end of the file."""
        have = self.size // self.page_size
        return max(self.meta.last_page + 1 - have, 0)

    def _read(self, pgno: int, count: int = 1) -> bytes | None:
        end = (pgno + count) * self.page_size
        if pgno > self.meta.last_page or end > self.size:
            return None
        return os.pread(self._file.fileno(), count * self.page_size, pgno * self.page_size)

    def tables(self) -> tuple[dict[str, DbRecord], list[Damage]]:
        """The named tables (from the main table), and damage met finding them."""
        read = TableRead("(main)", self.meta.main.entries)
        found: dict[str, DbRecord] = {}
        for key, value, flags in self._walk(self.meta.main, read):
            if flags & F_SUBDATA and len(value) >= 48:
                found[key.decode("utf-8", "replace")] = parse_db(value)
        return found, read.damage

    def read_table(self, name: str, db: DbRecord) -> TableRead:
        """Every readable record of table `name`, in key order, and the damage met."""
        read = TableRead(name, db.entries)
        for key, value, flags in self._walk(db, read):
            if flags & (F_SUBDATA | F_DUPDATA):
                read.damage.append(Damage(name, -1, f"unexpected node flags {flags:#x}"))
                continue
            read.records.append((key, value))
        return read

    def structure(self) -> list[Damage]:
        """Check the shape of every table without reading its records: each branch page
        in full, each leaf page's header (its number and kind). That is what LMDB trusts
        while it moves from page to page (it aborts the process on a leaf that is not
        one), at a fraction of the cost of reading every record."""
        tables, damage = self.tables()
        for name, db in tables.items():
            if db.empty:
                continue
            read = TableRead(name, db.entries)
            todo: list[tuple[int, int]] = [(db.root, 0)]
            seen: set[int] = set()
            while todo:
                pgno, depth = todo.pop()
                # Only branches are remembered (a loop of branches would never end; the
                # depth bounds the rest): a set of every leaf would cost memory in
                # proportion to the store at every open.
                if depth + 1 < db.depth and _again(pgno, seen, read):
                    continue
                if depth + 1 < db.depth:  # a branch
                    page = self._page(pgno, depth, read)
                    if page is None:
                        continue
                    flags, nodes, raw = page
                    if not flags & P_BRANCH:
                        read.damage.append(Damage(name, pgno, "a leaf where a branch belongs"))
                        continue
                    for at in nodes:
                        lo, hi, top, _ksize = _NODE.unpack_from(raw, at)
                        todo.append((lo | hi << 16 | top << 32, depth + 1))
                    continue
                self._leaf_header(pgno, read)
            damage.extend(read.damage)
        return damage

    def reaches_past_end(self) -> bool:
        """Whether a page a reader may reach lies past the end of the file: the
        free-page table's, the main table's and every named
        table's branches and leaves, and their values' overflow runs (counted, not
        read). A file shorter than its header says is a healthy store when none does:
        LMDB does not write the pages a commit allocated and freed again, so the last
        ones the header counts may never have reached the file."""
        tables, _damage = self.tables()  # damage is not truncation: LMDB's checks judge it
        have = self.size // self.page_size
        return any(
            self._reaches(db, have) for db in (self.meta.free, self.meta.main, *tables.values())
        )

    def _reaches(self, db: DbRecord, have: int) -> bool:
        if db.empty:
            return False
        read = TableRead("", db.entries)
        stack: list[tuple[int, int]] = [(db.root, 0)]
        seen: set[int] = set()
        while stack:
            pgno, depth = stack.pop()
            if pgno >= have:
                return True
            if _again(pgno, seen, read):
                continue
            page = self._page(pgno, depth, read)  # None: damaged (a page being reused by
            if page is None:  # a writer, or real damage, which LMDB's own checks report)
                continue
            flags, nodes, raw = page
            for at in nodes:
                lo, hi, top, ksize = _NODE.unpack_from(raw, at)
                if flags & P_BRANCH:
                    stack.append((lo | hi << 16 | top << 32, depth + 1))
                elif top & F_BIGDATA:  # (a leaf node's flags)
                    data_at = at + _NODE.size + ksize
                    if data_at + 8 > self.page_size:
                        continue
                    first = struct.unpack_from("<Q", raw, data_at)[0]
                    count = -(-((lo | hi << 16) + PAGE_HEADER) // self.page_size)
                    if first + count > have:
                        return True
        return False

    def _leaf_header(self, pgno: int, read: TableRead) -> None:
        if pgno > self.meta.last_page or (pgno + 1) * self.page_size > self.size:
            read.damage.append(Damage(read.name, pgno, "past the end of the file (truncated)"))
            return
        raw = os.pread(self._file.fileno(), _HEADER.size, pgno * self.page_size)
        number, _pad, flags, lower, upper = _HEADER.unpack(raw)
        if number != pgno or not flags & P_LEAF or flags & (P_BRANCH | P_OVERFLOW):
            why = f"not the leaf its parent points to (page {number}, flags {flags:#x})"
            read.damage.append(Damage(read.name, pgno, why))
        elif not PAGE_HEADER <= lower <= upper <= self.page_size:
            read.damage.append(Damage(read.name, pgno, f"bad bounds ({lower}, {upper})"))

    def _walk(self, db: DbRecord, read: TableRead) -> Iterator[tuple[bytes, bytes, int]]:
        if db.empty:
            return
        # Depth first, children in order: records come out in key order.
        stack: list[tuple[int, int]] = [(db.root, 0)]
        seen: set[int] = set()
        while stack:
            pgno, depth = stack.pop()
            if _again(pgno, seen, read):
                continue
            page = self._page(pgno, depth, read)
            if page is None:
                continue
            flags, nodes, raw = page
            if flags & P_BRANCH:
                children = []
                for at in nodes:
                    lo, hi, top, _ksize = _NODE.unpack_from(raw, at)
                    children.append(lo | hi << 16 | top << 32)
                stack.extend((child, depth + 1) for child in reversed(children))
                continue
            yield from self._leaf(pgno, raw, nodes, read)

    def _page(self, pgno: int, depth: int, read: TableRead) -> tuple[int, list[int], bytes] | None:
        """A B-tree page's flags, node offsets and bytes, after checking it; None if
        damaged."""

        def damage(why: str) -> None:
            read.damage.append(Damage(read.name, pgno, why))

        if depth > _MAX_DEPTH:
            damage("the tree is deeper than any LMDB tree (a loop of pages)")
            return None
        raw = self._read(pgno)
        if raw is None:
            damage("past the end of the file (truncated)")
            return None
        number, _pad, flags, lower, upper = _HEADER.unpack_from(raw)
        if number != pgno:
            damage(f"the page says it is page {number}")
            return None
        if not flags & (P_BRANCH | P_LEAF) or flags & (P_OVERFLOW | P_LEAF2):
            damage(f"not a B-tree page (flags {flags:#x})")
            return None
        size = self.page_size
        if not PAGE_HEADER <= lower <= upper <= size or (lower - PAGE_HEADER) % 2:
            damage(f"bad bounds (lower {lower}, upper {upper})")
            return None
        count = (lower - PAGE_HEADER) // 2
        nodes = list(struct.unpack_from(f"<{count}H", raw, PAGE_HEADER))
        for at in nodes:
            if not upper <= at <= size - _NODE.size:
                damage(f"a node offset {at} outside the page")
                return None
            ksize = _NODE.unpack_from(raw, at)[3]
            if at + _NODE.size + ksize > size:
                damage("a key runs past the end of the page")
                return None
        return flags, nodes, raw

    def _leaf(
        self, pgno: int, raw: bytes, nodes: list[int], read: TableRead
    ) -> Iterator[tuple[bytes, bytes, int]]:
        size = self.page_size
        for at in nodes:
            lo, hi, flags, ksize = _NODE.unpack_from(raw, at)
            dsize = lo | hi << 16
            start = at + _NODE.size
            key = raw[start : start + ksize]
            data_at = start + ksize
            if flags & F_BIGDATA:
                if data_at + 8 > size:
                    read.damage.append(Damage(read.name, pgno, "a value pointer past the page"))
                    continue
                value = self._overflow(struct.unpack_from("<Q", raw, data_at)[0], dsize, read)
                if value is None:
                    continue
            else:
                if data_at + dsize > size:
                    read.damage.append(Damage(read.name, pgno, "a value past the end of the page"))
                    continue
                value = raw[data_at : data_at + dsize]
            yield bytes(key), bytes(value), flags

    def _overflow(self, first: int, dsize: int, read: TableRead) -> bytes | None:
        count = -(-(dsize + PAGE_HEADER) // self.page_size)
        raw = self._read(first, count)
        why = None
        if raw is None:
            why = "an overflow run past the end of the file (truncated)"
        else:
            number, _pad, flags, pages_lo, pages_hi = _HEADER.unpack_from(raw)
            if number != first or not flags & P_OVERFLOW or pages_lo | pages_hi << 16 < count:
                why = "not the overflow run its record points to"
        if why is not None or raw is None:
            read.damage.append(Damage(read.name, first, why or "unreadable"))
            return None
        return raw[PAGE_HEADER : PAGE_HEADER + dsize]


def _again(pgno: int, seen: set[int], read: TableRead) -> bool:
    """Whether `pgno` was reached before in this tree: a damaged branch that points back
    (or twice to one page) would otherwise be walked again and again."""
    if pgno in seen:
        read.damage.append(Damage(read.name, pgno, "reached a second time (pages loop)"))
        return True
    seen.add(pgno)
    return False
