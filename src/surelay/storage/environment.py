"""The LMDB environment of one data directory: tables, schema version, map growth.

LMDB rules this module keeps so the rest of surelay need not think about them:
- one write transaction at a time in this process (a lock; LMDB's own lock covers other
  processes, so the CLI may write beside a running host);
- the map may only be resized while *no* transaction is open in this process, so every
  transaction passes a gate that a resize closes and waits to drain;
- when another process grew the map, our next transaction adopts the new size.

Never wait for a group-commit future while holding a transaction from here: a map
resize waits for that transaction to end, and the writer waits for the resize.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from surelay.errors import SchemaMismatch, StorageError, StorageFull
from surelay.storage.integrity import damaged, doctor_hint, mark, read_metas
from surelay.storage.keys import from_u64, u64
from surelay.storage.migrations import MIGRATIONS
from surelay.storage.pagewalk import PageFile
from surelay.storage.preflight import check_data_file
from surelay.storage.slots import SlotLock, holders
from surelay.storage.space import Space

__all__ = ["SCHEMA_VERSION", "TABLES", "Environment", "Txn", "keys_with_prefix"]

logger = logging.getLogger("surelay.storage")

Txn = Any  # lmdb.Transaction: py-lmdb ships no type information
T = TypeVar("T")

SCHEMA_VERSION = 5
SINGLE_OWNER_UNTIL = 2
"""The last schema of the single-owner layout (one runtime per directory, no slots)."""
TABLES = (
    "meta",
    "outbox",
    "outbox_id",
    "outbox_due",
    "dead",
    "dead_idx",
    "dedup",
    "dedup_exp",
    "replay",
    "quarantine",
    "inbox",
    "inbox_exp",
    "scheduled",
    "scheduled_id",
    "scheduled_key",
    "ended",
    "ended_exp",
    "idempotency_ids",
    "hooks_pending",
    "push_head",
    "push_mail",
    "push_status",
    "push_idem",
    "push_cursor",
    "push_exp",
    "push_presence",
)
HOST_TABLE_PREFIX = "host."


def keys_with_prefix(
    txn: Txn, db: Any, prefix: bytes, start: bytes | None = None
) -> Iterator[bytes]:
    """The keys of `db` that start with `prefix`, in order, from `start` (default: the
    first such key) on."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix if start is None else start):
        return
    for found in cursor.iternext(keys=True, values=False):
        key = bytes(found)
        if not key.startswith(prefix):
            return
        yield key


class _Gate:
    """Shared for transactions, exclusive for a map resize."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active = 0
        self._resizing = False

    def enter(self) -> None:
        with self._lock:
            while self._resizing:
                self._changed.wait()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._resizing and self._active == 0:
                self._changed.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            while self._resizing:
                self._changed.wait()
            self._resizing = True
            while self._active:
                self._changed.wait()
        try:
            yield
        finally:
            with self._lock:
                self._resizing = False
                self._changed.notify_all()


class Environment:
    """An open data directory. Create with `Environment.open`."""

    def __init__(
        self, env: Any, path: Path, dbs: dict[str, Any], max_map_size: int, durability: str
    ) -> None:
        self._env = env
        self.path = path
        self._dbs = dbs
        self.max_map_size = max_map_size
        self.durability = durability
        self._gate = _Gate()
        self._write_lock = threading.Lock()
        self._local = threading.local()  # .writing: this thread holds the write lock
        self._closed = False
        self.readonly = False
        """Opened for reading only (a read-only filesystem): every write is refused."""
        self.space = Space(
            path,
            max_map_size,
            int(env.stat()["psize"]),
            tables=self._dbs.values,
            main_pages=self._main_pages,
            high_water=self._high_water,
        )
        """The room left, and the reserve kept for writes that free space."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        map_size: int,
        max_map_size: int,
        durability: str = "sync",
        create: bool = True,
        host_tables: int = 32,
        readonly: bool = False,
    ) -> Environment:
        """Open (or, with `create`, make) the environment of `path`. With `readonly`,
        nothing is written (not even the schema check's transaction); on a read-only
        filesystem that is so by itself, and LMDB's lock file is not used either."""
        if durability not in ("sync", "async"):
            raise ValueError(f"durability must be 'sync' or 'async', got {durability!r}")
        if map_size <= 0 or max_map_size < map_size:
            raise ValueError(
                f"need 0 < map_size <= max_map_size, got map_size={map_size}, "
                f"max_map_size={max_map_size}"
            )
        check_path(path)
        where = Path(path)
        if where.exists() and not where.is_dir():
            raise StorageError(f"{where} is not a directory")
        if where.exists():
            # Before LMDB maps the file: a truncated one would crash the process.
            check_data_file(where, new_allowed=create)
        if not where.exists():
            if not create:
                raise StorageError(f"{where} does not exist (no surelay data directory there)")
            where.mkdir(mode=0o700, parents=True)
        elif not (where / "data.mdb").exists():
            if not create:
                raise StorageError(f"{where} is not a surelay data directory (no data.mdb)")
            _refuse_foreign(where)
        # Only on a read-only filesystem is it opened without LMDB's lock file: nothing
        # can write there, so nothing changes under the readers. Elsewhere a directory
        # this process may not write is an error (reading a live store unlocked is not
        # safe).
        unlocked = not create and _read_only_filesystem(where)
        readonly = readonly or unlocked
        try:
            env = _open_lmdb(
                where, map_size, len(TABLES) + host_tables, durability, readonly, lock=not unlocked
            )
        except lmdb.Error as error:
            hint = (
                ": this user may not write there (run as the service's user)"
                if getattr(error, "errno", None) in (errno.EACCES, errno.EPERM)
                else ""
            )
            raise StorageError(
                f"cannot open {where} as a surelay data directory: {error}{hint}"
            ) from error
        try:
            if readonly:
                dbs = {name: env.open_db(name.encode(), create=False) for name in TABLES}
                _check_schema_readonly(env, dbs, where)
            else:
                dbs = {name: env.open_db(name.encode(), create=True) for name in TABLES}
                _check_schema(env, dbs, where)
            _check_structure(env, where)
        except lmdb.NotFoundError as error:
            env.close()
            raise StorageError(
                f"{where} is read-only and lacks tables this surelay needs ({error}); "
                "open it once where it is writable"
            ) from error
        except BaseException as error:
            env.close()
            translated = damaged(error, where)
            if translated is not None:
                raise translated from error
            raise
        if not readonly:
            mark(where)
        environment = cls(env, where, dbs, max_map_size, durability)
        environment.readonly = readonly
        return environment

    # -- tables --------------------------------------------------------------------------

    def db(self, name: str) -> Any:
        return self._dbs[name]

    def host_db(self, name: str) -> Any:
        """A named database of the host's own (kept apart from surelay's tables).

        Opening one takes a write transaction, so a table must be opened once before it
        is first used inside `write()`; asking for a new one there is an error.
        """
        full = HOST_TABLE_PREFIX + name
        handle = self._dbs.get(full)
        if handle is None:
            if getattr(self._local, "writing", False):
                raise StorageError(
                    f"host table {name!r} is not open yet and this thread is inside a write "
                    "transaction; call host_table() once before the transaction"
                )
            self._gate.enter()
            try:
                with self._write_lock:
                    handle = self._dbs[full] = self._env.open_db(full.encode(), create=True)
            except lmdb.DbsFullError as error:
                raise StorageError(f"too many host tables; cannot open {name!r}") from error
            finally:
                self._gate.leave()
        return handle

    @property
    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def _high_water(self) -> int:
        """Bytes up to the last page LMDB has used (in use, or free for reuse)."""
        return int(self._env.info()["last_pgno"] + 1) * self.space.page_size

    def _main_pages(self) -> int:
        stat = self._env.stat()
        return int(stat["branch_pages"]) + int(stat["leaf_pages"]) + int(stat["overflow_pages"])

    def usage(self) -> tuple[int, int]:
        """(map size, bytes in use) in bytes. In use: the pages of every table; pages
        LMDB freed (and reuses) are not, so the figure falls again as the outbox drains."""
        info = self._env.info()
        with self.read() as txn:
            used = self.space.measure(txn).used
        return int(info["map_size"]), used

    # -- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A read-only snapshot."""
        self._check_open()
        self._gate.enter()
        try:
            txn = self._begin(write=False)
            try:
                yield txn
            except lmdb.Error as error:
                translated = damaged(error, self.path)
                if translated is None:
                    raise
                raise translated from error
            finally:
                txn.abort()
        finally:
            self._gate.leave()

    @contextlib.contextmanager
    def write(self) -> Iterator[Txn]:
        """A write transaction, committed on normal exit and aborted on an exception.

        `lmdb.MapFullError` escapes as is: the caller decides whether to `grow` and retry
        (the group-commit writer does) or to report it (see `Store.transaction`).
        """
        self._check_open()
        if self.readonly:
            raise StorageError(
                f"{self.path} is on a read-only filesystem: it can be read, not changed"
            )
        if getattr(self._local, "writing", False):
            raise StorageError("a write transaction is already open in this thread")
        with self._write_lock:
            self._gate.enter()
            self._local.writing = True
            try:
                txn = self._begin(write=True)
                try:
                    yield txn
                except BaseException as error:
                    txn.abort()
                    translated = damaged(error, self.path)
                    if translated is None:
                        raise
                    raise translated from error
                txn.commit()
            finally:
                self._local.writing = False
                self._gate.leave()

    def _begin(self, *, write: bool) -> Txn:
        try:
            return self._env.begin(write=write)
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size. We hold the gate shared, so
            # step out, resize exclusively, step back in.
            self._gate.leave()
            try:
                with self._gate.exclusive():
                    self._env.set_mapsize(0)
            finally:
                self._gate.enter()
            return self._env.begin(write=write)

    def grow(self) -> int:
        """Double the map (up to `max_map_size`); `StorageFull` if it is there already.

        Call with no transaction open in this thread.
        """
        with self._gate.exclusive():
            current = self.map_size
            if current >= self.max_map_size:
                raise StorageFull(
                    f"the store at {self.path} is full: its map is at max_map_size "
                    f"({self.max_map_size} bytes); raise max_map_size or free space "
                    "(purge dead letters, sweep dedup records)"
                )
            target = min(current * 2, self.max_map_size)
            self._env.set_mapsize(target)
        logger.warning("grew the LMDB map of %s from %d to %d bytes", self.path, current, target)
        return target

    def sync(self) -> None:
        """Flush OS buffers to disk (for `durability="async"`)."""
        if not self._closed:
            self._env.sync(True)

    def reader_check(self) -> int:
        """Clear the reader slots of processes that died; returns how many."""
        self._check_open()
        return 0 if self.readonly else int(self._env.reader_check())

    def stat(self, name: str) -> dict[str, int]:
        with self.read() as txn:
            return dict(txn.stat(self._dbs[name]))

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock, self._gate.exclusive():
            self._closed = True
            self._env.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the store at {self.path} is closed")


def check_path(path: str | os.PathLike[str]) -> None:
    """Refuse an empty path: it would put surelay's files in the current directory."""
    if not os.fspath(path):
        raise ValueError(
            "path must name a data directory, got an empty string (which would put "
            "surelay's files in the current directory)"
        )


def _refuse_foreign(where: Path) -> None:
    """An existing directory without surelay's files must be empty: surelay does not
    move into a directory that holds someone else's files (nothing is written then)."""
    found = sorted(entry.name for entry in where.iterdir())
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise StorageError(
            f"{where} is not empty and is not a surelay data directory (it holds {shown}); "
            "give surelay a directory of its own (a new or empty one)"
        )


def _check_structure(env: Any, where: Path) -> None:
    """Refuse a store whose B-tree pages are damaged, before LMDB walks them (it aborts
    the process on some). The pages are read under a read transaction, whose snapshot no
    writer may reuse meanwhile, from the meta page of that snapshot."""
    data_file = where / "data.mdb"
    for _ in range(5):
        with env.begin() as txn:
            meta = next((m for m in read_metas(data_file) if m.txnid == txn.id()), None)
            if meta is None:
                continue  # two commits landed since the transaction began: again
            with PageFile.open(data_file, meta) as pages:  # type: ignore[union-attr]
                damage = pages.structure()
            break
    else:
        return  # a writer too busy to catch a snapshot: LMDB's own checks still hold
    if damage:
        first = damage[0]
        more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
        raise StorageError(
            f"{data_file} is damaged: page {first.page} of table {first.table!r}: "
            f"{first.why}{more}; {doctor_hint(where)}"
        )


def _read_only_filesystem(where: Path) -> bool:
    try:
        return bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _open_lmdb(
    where: Path, map_size: int, max_dbs: int, durability: str, readonly: bool, *, lock: bool
) -> Any:
    return lmdb.open(
        str(where),
        map_size=map_size,
        max_dbs=max_dbs,
        mode=0o700,
        sync=durability == "sync",
        metasync=durability == "sync",
        max_readers=256,
        readonly=readonly,
        lock=lock,  # off on a read-only filesystem: no lock file can be written there
    )


def _check_schema_readonly(env: Any, dbs: dict[str, Any], where: Path) -> None:
    with env.begin() as txn:
        raw = txn.get(b"schema", db=dbs["meta"])
    found = SCHEMA_VERSION if raw is None else from_u64(raw)
    if found != SCHEMA_VERSION:
        raise SchemaMismatch(
            f"{where} is read-only and uses schema {found}; this surelay reads schema "
            f"{SCHEMA_VERSION} (it would migrate the directory, which it cannot do here)"
        )


def _check_schema(env: Any, dbs: dict[str, Any], where: Path) -> None:
    meta = dbs["meta"]
    with env.begin(write=True) as txn:
        raw = txn.get(b"schema", db=meta)
        if raw is None:
            txn.put(b"schema", u64(SCHEMA_VERSION), db=meta)
            return
        found = from_u64(raw)
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"{where} was written by a newer surelay (schema {found}); this version "
                f"reads schema {SCHEMA_VERSION} and older: upgrade surelay to open it"
            )
        if found == SCHEMA_VERSION:
            return
        single_owner = None
        if found <= SINGLE_OWNER_UNTIL:
            single_owner = _hold_single_owner_lock(where)
        try:
            _migrate(env, txn, dbs, where, found)
        finally:
            if single_owner is not None:
                single_owner.release()


def _hold_single_owner_lock(where: Path) -> SlotLock:
    """The lock of a runtime of the single-owner layout (slot 0's): a directory of that
    layout is migrated only while no such runtime runs, since it would go on writing
    the old layout underneath the new one."""
    lock = SlotLock.try_take(where, 0)
    if lock is None:
        pid = holders(where).get(0)
        who = f"process {pid}" if pid else "another process"
        raise StorageError(
            f"{where} is held by a runtime of an older surelay in {who}; stop it before "
            "opening the directory with this version (which migrates it to a new layout)"
        )
    return lock


def _migrate(env: Any, txn: Any, dbs: dict[str, Any], where: Path, found: int) -> None:
    """Upgrade from schema `found` to `SCHEMA_VERSION`, one version at a time, in `txn`."""
    while found < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(found)
        if migrate is None:
            raise SchemaMismatch(
                f"{where} uses schema {found}, which this surelay cannot migrate to "
                f"{SCHEMA_VERSION}; open it with the surelay release that wrote it and "
                "drain it first"
            )
        migrate(env, txn, dbs)
        found += 1
        txn.put(b"schema", u64(found), db=dbs["meta"])
        logger.warning("migrated %s to schema %d", where, found)
