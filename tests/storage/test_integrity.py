"""A damaged data.mdb is a `StorageError` naming the file: never a SIGBUS, never an empty
store. Each damaged open runs in a subprocess, so a crash fails the test instead of
killing pytest."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surelay.errors import StorageError
from surelay.storage import Store
from surelay.storage.integrity import MARKER, check_data_file, parse_meta, read_meta
from surelay.storage.pagewalk import PageFile

from .damage import build, damage_outbox, run, truncate

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


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("healthy") / "data"
    build(path)
    return path


def _copy(healthy: Path, tmp_path: Path) -> Path:
    path = tmp_path / "data"
    shutil.copytree(healthy, path)
    return path


def _refused(code: str, path: Path, *expected: str) -> None:
    done = run(code, str(path))
    assert done.returncode != -signal.SIGBUS, "crashed with SIGBUS"
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert str(path / "data.mdb") in done.stdout
    for text in expected:
        assert text in done.stdout


def test_a_healthy_store_is_marked_and_opens(healthy: Path, tmp_path: Path) -> None:
    path = _copy(healthy, tmp_path)
    assert (path / MARKER).exists()
    check_data_file(path, new_allowed=False)
    assert run(OPEN_RUNTIME, str(path)).returncode == 0


def test_a_store_truncated_to_half_is_refused_not_a_sigbus(healthy: Path, tmp_path: Path) -> None:
    path = _copy(healthy, tmp_path)
    truncate(path, 0.5)
    _refused(OPEN_RUNTIME, path, "is truncated", "surelay doctor")
    _refused(OPEN_STORE, path, "is truncated")


def test_a_store_truncated_to_nothing_is_refused_not_empty(healthy: Path, tmp_path: Path) -> None:
    path = _copy(healthy, tmp_path)
    truncate(path, 0)
    _refused(OPEN_RUNTIME, path, "is empty (0 bytes)", "held a surelay store")
    _refused(OPEN_STORE, path, "is empty (0 bytes)")
    assert (path / "data.mdb").stat().st_size == 0  # nothing was written over it


def test_a_lost_data_file_is_refused_where_the_directory_held_one(
    healthy: Path, tmp_path: Path
) -> None:
    path = _copy(healthy, tmp_path)
    (path / "data.mdb").unlink()
    _refused(OPEN_RUNTIME, path, "is missing")


def test_damaged_pages_are_a_storage_error_naming_the_file(healthy: Path, tmp_path: Path) -> None:
    path = _copy(healthy, tmp_path)
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
