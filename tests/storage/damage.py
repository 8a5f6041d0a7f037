"""Stores with something to lose, and the ways a data.mdb gets damaged: truncated to half,
to nothing, and B-tree pages zeroed (as a disk that lost writes returns them)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from surelay.envelope import Envelope
from surelay.storage import Store
from surelay.storage.integrity import PAGE_HEADER, read_meta
from surelay.storage.pagewalk import P_BRANCH, P_LEAF, PageFile

from .builders import dead_letter

OUTBOX = 300
DEAD = 50


def build(path: Path, *, outbox: int = OUTBOX, dead: int = DEAD) -> None:
    """A store holding `outbox` accepted messages (keys k0..k9, in order) and `dead`
    dead letters."""
    with Store.open(path, map_size=1 << 24) as store:
        for n in range(outbox):
            envelope = Envelope(f"m{n:04d}", "t", b"p" * 200, key=f"k{n % 10}")
            store.enqueue([(envelope, n % 4)]).result(timeout=30)
        for n in range(dead):
            store.dead_lettered(dead_letter(message_id=f"d{n:04d}", payload=b"d" * 100)).result(
                timeout=30
            )


def healthy_store(where: Path) -> Path:
    """A healthy store built at `where/data` (for a module's fixture to copy from)."""
    path = where / "data"
    build(path)
    return path


def copy_store(healthy: Path, tmp_path: Path) -> Path:
    """A copy of the store at `healthy`, to damage."""
    path = tmp_path / "data"
    shutil.copytree(healthy, path)
    return path


def truncate(path: Path, fraction: float) -> None:
    data = path / "data.mdb"
    os.truncate(data, int(data.stat().st_size * fraction))


def leaves(path: Path, table: str) -> list[tuple[int, int]]:
    """(page number, records on it) of every leaf of `table`, in key order."""
    with PageFile.open(path / "data.mdb") as pages:  # type: ignore[union-attr]
        db = pages.tables()[0][table]
        size = pages.page_size
        found: list[tuple[int, int]] = []
        todo = [db.root]
        with open(path / "data.mdb", "rb") as file:
            while todo:
                pgno = todo.pop(0)
                file.seek(pgno * size)
                raw = file.read(size)
                _, _, flags, lower, _ = struct.unpack_from("<QHHHH", raw)
                offsets = struct.unpack_from(f"<{(lower - PAGE_HEADER) // 2}H", raw, PAGE_HEADER)
                if flags & P_BRANCH:
                    children = []
                    for at in offsets:
                        lo, hi, top = struct.unpack_from("<HHH", raw, at)
                        children.append(lo | hi << 16 | top << 32)
                    todo[:0] = children
                elif flags & P_LEAF:
                    found.append((pgno, len(offsets)))
    return found


def zero_page(path: Path, pgno: int) -> None:
    meta = read_meta(path / "data.mdb")
    assert meta is not None
    with open(path / "data.mdb", "r+b") as file:
        file.seek(pgno * meta.page_size)
        file.write(b"\0" * meta.page_size)


def damage_outbox(path: Path) -> int:
    """Zero one leaf of the outbox (not the first); returns how many records it held."""
    found = leaves(path, "outbox")
    assert len(found) >= 3, found
    pgno, records = found[1]
    zero_page(path, pgno)
    return records


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter: a SIGBUS there fails the test, not pytest."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
