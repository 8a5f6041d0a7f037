"""Before LMDB maps a data.mdb: refuse a file it would crash on or take for a new store.

A file shorter than its header says is truncated only if a page a reader may reach lies
past its end: LMDB does not write the pages a commit allocated and freed again, so a
healthy file may end a few pages before its last page number. Then every reachable page
is checked with plain reads (`PageFile.reaches_past_end`), which only such a file pays.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from surelay.errors import StorageError
from surelay.storage.integrity import MARKER, Meta, doctor_hint, read_meta
from surelay.storage.pagewalk import PageFile

__all__ = ["check_data_file"]


def check_data_file(where: Path, *, new_allowed: bool) -> None:
    """Refuse a `data.mdb` in `where` that LMDB would crash on or take for a new store.

    `new_allowed`: the caller may create a store (a zero-length file is then a new
    store unless the marker says the directory held one). A missing file is left to
    the caller.
    """
    data_file = where / "data.mdb"
    try:
        size = os.stat(data_file).st_size
    except FileNotFoundError:
        if (where / MARKER).exists():
            raise StorageError(
                f"{data_file} is missing, but {where} held a surelay store ({MARKER} is "
                "there): restore data.mdb from a backup, or move the directory aside to "
                "start empty"
            ) from None
        return
    if size == 0:
        # The marker (written once an open has succeeded) says a store was here; for a
        # directory of a release before it, LMDB's lock file does, once it is older than
        # a first open takes: while one is still writing the new file's header (other
        # workers of a web server opening a new directory at once), it is young.
        if (where / MARKER).exists() or _old(where / "lock.mdb") or not new_allowed:
            raise StorageError(
                f"{data_file} is empty (0 bytes), but {where} held a surelay store: the "
                "file was lost or truncated; restore it from a backup, or move the "
                "directory aside to start empty"
            )
        return
    try:
        meta = read_meta(data_file)
    except OSError as error:
        raise StorageError(f"cannot read {data_file}: {error}") from error
    if meta is None:
        raise StorageError(
            f"{data_file} is not an LMDB file or its header is damaged ({size} bytes, no "
            f"valid meta page); {doctor_hint(where)}"
        )
    # Read the size again after the header: the file only grows, and LMDB writes the
    # pages of a commit before its meta page.
    size = os.stat(data_file).st_size
    if size < meta.needed_bytes and _truncated(data_file, meta):
        raise StorageError(
            f"{data_file} is truncated: it is {size:,} bytes, but its header says it holds "
            f"{meta.needed_bytes:,} (pages 0 to {meta.last_page} of {meta.page_size} bytes); "
            f"{doctor_hint(where)}"
        )


def _truncated(data_file: Path, meta: Meta) -> bool:
    """Whether a page a reader reaches lies past the end of the file. Another process
    may be writing the store meanwhile (pages of this state reused by a later commit),
    so a walk that saw the state change is done again from the new one, up to a few
    times; one that keeps seeing it change trusts the header's counts no further than
    the last walk."""
    for _ in range(3):
        with PageFile(open(data_file, "rb"), data_file, meta) as pages:  # closed on exit
            past = pages.reaches_past_end()
        again = read_meta(data_file)
        if again is None or again.txnid == meta.txnid:
            return past
        meta = again
        if os.stat(data_file).st_size >= meta.needed_bytes:
            return False
    return past


FIRST_OPEN = 60.0
"""Seconds: a lock file older than this was not made by a first open still under way."""


def _old(path: Path) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > FIRST_OPEN
    except FileNotFoundError:
        return False
