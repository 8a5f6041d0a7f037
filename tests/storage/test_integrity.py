"""A damaged data.mdb is a `StorageError` naming the file: never a SIGBUS, never an empty
store. Each damaged open runs in a subprocess, so a crash fails the test instead of
killing pytest."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surelay.errors import StorageError
from surelay.storage import Store
from surelay.storage.integrity import MARKER, parse_meta, read_meta
from surelay.storage.pagewalk import PageFile
from surelay.storage.preflight import check_data_file

from .damage import copy_store, damage_outbox, healthy_store, run, truncate

OPEN_RUNTIME = """
import sys
from surelay import Runtime, StorageError
try:
    Runtime.open(sys.argv[1], transports={"t": lambda e: None}).close()
except StorageError as error:
    print(error)
    sys.exit(3)
"""
OPEN_STORE = """
import sys
from surelay.storage import Store
from surelay.errors import StorageError
try:
    with Store.open(sys.argv[1], create=False) as store:
        store.stats()
except StorageError as error:
    print(error)
    sys.exit(3)
"""


@contextlib.contextmanager
def _table(records: dict[bytes, bytes]) -> Iterator[tuple[Path, Any, Any]]:
    """A fresh LMDB file in a temporary directory (hypothesis examples cannot share
    pytest's `tmp_path`) whose table `t` holds `records`; removed afterwards."""
    directory = Path(tempfile.mkdtemp())
    try:
        env = lmdb.open(str(directory), map_size=1 << 26, max_dbs=2)
        db = env.open_db(b"t")
        with env.begin(write=True) as txn:
            for key, value in records.items():
                txn.put(key, value, db=db)
        yield directory, env, db
    finally:
        shutil.rmtree(directory)


LAST_PAGE_AT = 16 + 24 + 2 * 48
"""Where a meta page keeps the last page number: after the page header, the meta's
magic, version, address and map size, and the free and main tables' records."""


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return healthy_store(tmp_path_factory.mktemp("healthy"))


def _refused(code: str, path: Path, *expected: str) -> None:
    done = run(code, str(path))
    assert done.returncode != -signal.SIGBUS, "crashed with SIGBUS"
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert str(path / "data.mdb") in done.stdout
    for text in expected:
        assert text in done.stdout


def test_a_healthy_store_is_marked_and_opens(healthy: Path, tmp_path: Path) -> None:
    path = copy_store(healthy, tmp_path)
    assert (path / MARKER).exists()
    check_data_file(path, new_allowed=False)
    assert run(OPEN_RUNTIME, str(path)).returncode == 0


def test_a_file_that_ends_before_pages_no_reader_reaches_opens(
    healthy: Path, tmp_path: Path
) -> None:
    """LMDB does not write pages a commit allocated and freed again, so a healthy file
    may end before the last page its header counts. Only a page a reader may reach past
    the end makes it truncated."""
    path = copy_store(healthy, tmp_path)
    data = path / "data.mdb"
    meta = read_meta(data)
    assert meta is not None
    with open(data, "r+b") as file:  # both meta pages count three pages more
        for page in (0, 1):
            at = page * meta.page_size + LAST_PAGE_AT
            file.seek(at)
            last = struct.unpack("<Q", file.read(8))[0]
            file.seek(at)
            file.write(struct.pack("<Q", last + 3))
    again = read_meta(data)
    assert again is not None and again.needed_bytes > data.stat().st_size
    check_data_file(path, new_allowed=False)
    assert run(OPEN_RUNTIME, str(path)).returncode == 0
    truncate(path, 0.5)  # now pages a reader reaches are past the end too
    _refused(OPEN_RUNTIME, path, "is truncated")


def test_a_store_truncated_to_half_is_refused_not_a_sigbus(healthy: Path, tmp_path: Path) -> None:
    path = copy_store(healthy, tmp_path)
    truncate(path, 0.5)
    _refused(OPEN_RUNTIME, path, "is truncated", "surelay doctor")
    _refused(OPEN_STORE, path, "is truncated")


def test_a_store_truncated_to_nothing_is_refused_not_empty(healthy: Path, tmp_path: Path) -> None:
    path = copy_store(healthy, tmp_path)
    truncate(path, 0)
    _refused(OPEN_RUNTIME, path, "is empty (0 bytes)", "held a surelay store")
    _refused(OPEN_STORE, path, "is empty (0 bytes)")
    assert (path / "data.mdb").stat().st_size == 0  # nothing was written over it


def test_an_emptied_store_of_an_older_release_is_refused_too(healthy: Path, tmp_path: Path) -> None:
    path = copy_store(healthy, tmp_path)
    (path / MARKER).unlink()  # written since this release only
    truncate(path, 0)
    an_hour_ago = time.time() - 3600
    os.utime(path / "lock.mdb", (an_hour_ago, an_hour_ago))  # a store used for a while
    _refused(OPEN_RUNTIME, path, "is empty (0 bytes)")


def test_an_empty_file_beside_a_young_lock_is_a_first_open_under_way(tmp_path: Path) -> None:
    """Workers of a web server opening a new directory at once: one may see data.mdb
    still empty beside LMDB's new lock file; that is a new store, not a lost one."""
    path = tmp_path / "data"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"")
    (path / "lock.mdb").write_bytes(b"")
    check_data_file(path, new_allowed=True)
    assert run(OPEN_RUNTIME, str(path)).returncode == 0


def test_a_lost_data_file_is_refused_where_the_directory_held_one(
    healthy: Path, tmp_path: Path
) -> None:
    path = copy_store(healthy, tmp_path)
    (path / "data.mdb").unlink()
    _refused(OPEN_RUNTIME, path, "is missing")


def test_damaged_pages_are_a_storage_error_naming_the_file(healthy: Path, tmp_path: Path) -> None:
    path = copy_store(healthy, tmp_path)
    damage_outbox(path)
    _refused(OPEN_STORE, path, "is damaged", "surelay doctor")
    _refused(OPEN_RUNTIME, path, "is damaged")


def test_a_file_that_is_not_lmdb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"\x07" * 20_000)
    with pytest.raises(StorageError, match="not an LMDB file"):
        Store.open(path)


def test_the_header_is_read_as_lmdb_wrote_it(healthy: Path) -> None:
    meta = read_meta(healthy / "data.mdb")
    assert meta is not None
    assert meta.page_size == 4096
    assert meta.needed_bytes == (healthy / "data.mdb").stat().st_size
    assert not meta.main.empty


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=400))
def test_any_bytes_parse_as_a_meta_page_or_none(raw: bytes) -> None:
    meta = parse_meta(raw)
    assert meta is None or meta.page_size >= 512


def test_the_page_reader_reads_what_lmdb_reads(healthy: Path) -> None:
    with PageFile.open(healthy / "data.mdb") as pages:  # type: ignore[union-attr]
        tables, damage = pages.tables()
        assert not damage
        read = {name: pages.read_table(name, db) for name, db in tables.items()}
    with Store.open(healthy, create=False, readonly=True) as store, store.read() as txn:
        for name, found in read.items():
            assert not found.damage
            expected = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.env.db(name))]
            assert found.records == expected, name
    assert len(read["outbox"].records) == 300
    assert len(read["dead"].records) == 50


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=200),
        st.binary(max_size=3000) | st.binary(min_size=5000, max_size=12_000),
        max_size=150,
    ),
    st.sets(st.integers(0, 149), max_size=60),
)
def test_the_page_reader_agrees_with_lmdb_on_any_table(
    records: dict[bytes, bytes], deleted: set[int]
) -> None:
    with _table(records) as (directory, env, db):
        keys = sorted(records)
        with env.begin(write=True) as txn:  # freed pages must not come back
            for index in deleted:
                if index < len(keys):
                    txn.delete(keys[index], db=db)
        with env.begin() as txn:
            expected = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
        env.close()
        with PageFile.open(directory / "data.mdb") as pages:  # type: ignore[union-attr]
            tables, damage = pages.tables()
            found = pages.read_table("t", tables["t"])
            assert not damage
            assert not found.damage
            assert not pages.structure()
        assert found.records == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 200), st.binary(min_size=1, max_size=4096), st.integers(0, 4095))
def test_the_page_reader_never_fails_on_a_damaged_page(
    page: int, garbage: bytes, offset: int
) -> None:
    records = {b"k%05d" % n: b"v" * (n % 7 * 900) for n in range(400)}
    with _table(records) as (directory, env, db):
        with env.begin() as txn:
            original = {bytes(k): bytes(v) for k, v in txn.cursor(db=db)}
        env.close()
        data = directory / "data.mdb"
        with open(data, "r+b") as file:
            file.seek(page * 4096 + offset)
            file.write(garbage[: 4096 - offset])
        with PageFile.open(data) as pages:  # type: ignore[union-attr]
            tables, _ = pages.tables()
            pages.structure()
            if "t" in tables:
                found = pages.read_table("t", tables["t"])
                # LMDB keeps no checksums: bytes garbled inside a value read back garbled
                # (the codec then quarantines the record), but a page that is not what
                # its parent says is skipped, and nothing raises.
                assert len(found.records) <= len(original)


def test_a_branch_that_points_back_to_itself_is_damage_not_a_loop(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), map_size=1 << 26, max_dbs=2)
    db = env.open_db(b"t")
    with env.begin(write=True) as txn:
        for n in range(2000):
            txn.put(b"k%05d" % n, b"v" * 100, db=db)
    env.close()
    with PageFile.open(tmp_path / "data.mdb") as pages:  # type: ignore[union-attr]
        root = pages.tables()[0]["t"].root
        size = pages.page_size
    with open(tmp_path / "data.mdb", "r+b") as file:  # every child of the root: the root
        file.seek(root * size)
        raw = bytearray(file.read(size))
        lower = struct.unpack_from("<H", raw, 12)[0]
        for at in struct.unpack_from(f"<{(lower - 16) // 2}H", raw, 16):
            struct.pack_into("<HHH", raw, at, root & 0xFFFF, root >> 16 & 0xFFFF, root >> 32)
        file.seek(root * size)
        file.write(raw)
    with PageFile.open(tmp_path / "data.mdb") as pages:  # type: ignore[union-attr]
        table = pages.tables()[0]["t"]
        found = pages.read_table("t", table)
        assert found.records == []
        assert any("second time" in d.why for d in found.damage)
        assert pages.structure()
