"""`Store`: the one place surelay persists anything.

One LMDB environment per data directory, its tables, the group-commit writer, and the
compound operations the runtime needs, each one atomic write transaction. A runtime's
store holds a slot of the directory (`surelay.storage.slots`): its outbox is that slot's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import lmdb

from surelay.envelope import Envelope
from surelay.errors import RetryTransaction, StorageError, StorageFull
from surelay.storage.dead_letters import DeadLetterTable
from surelay.storage.dedup import Dedup
from surelay.storage.ended import Ended, Ending
from surelay.storage.environment import Environment, Txn, check_path
from surelay.storage.hook_marks import HookMarks
from surelay.storage.inbox import Inbox
from surelay.storage.mailbox import Mailboxes
from surelay.storage.outbox import Outbox
from surelay.storage.quarantine import Quarantine
from surelay.storage.records import DEAD_LETTER_STATUSES, DeadLetter, OutboxEntry
from surelay.storage.replay_requests import ReplayRequests
from surelay.storage.scheduled import Scheduled
from surelay.storage.slots import SlotLock
from surelay.storage.status import RuntimeStatus
from surelay.storage.writer import GroupCommitWriter

__all__ = ["LeaseVerdict", "Store", "StoreStats"]

T = TypeVar("T")

LeaseVerdict = Literal["leased", "duplicate", "replayed", "archived", "held", "dead", "missing"]
"""What taking a dead letter for replay found (`Store.lease_for_replay`)."""

_OPEN: set[Path] = set()
_OPEN_LOCK = threading.Lock()
_STORES: weakref.WeakSet[Store] = weakref.WeakSet()
"""The stores open in this process (for a fork: see `_after_fork_in_child`)."""
_INHERITED: list[Store] = []
"""Stores a forked child inherited: kept, never closed (see `_after_fork_in_child`)."""


def _after_fork_in_child() -> None:
    """A forked child inherits the parent's open stores, which it must neither use (LMDB
    environments do not survive a fork) nor close (closing would wait for the parent's
    threads, which are not here, and touch the parent's slots in LMDB's shared reader
    table). So each is kept for good and its slot left to the parent; py-lmdb then
    refuses to open the same directory again in this process (see `Store.open`)."""
    for store in list(_STORES):
        if store.env.closed:
            continue
        store.disown()
        _INHERITED.append(store)
    _STORES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Sizes of the tables and of the map, read without scanning."""

    outbox_pending: int
    scheduled: int
    dead_letters: dict[str, int]
    dedup_records: int
    quarantined: int
    map_size: int
    map_used: int
    commits: int
    operations: int


class Store:
    """An open data directory. Open with `Store.open`, close with `close()`.

    Reads: `with store.read() as txn:` then the table accessors (`store.outbox.scan(txn)`,
    `store.dead_letters.list(txn, ...)`, ...). Writes: the compound operations below, or
    `store.write(op)` for any function of a write transaction; each returns a future
    that completes once the write is durable.
    """

    def __init__(
        self,
        env: Environment,
        clock: Callable[[], float],
        writer: GroupCommitWriter,
        slot: SlotLock | None = None,
    ):
        self.env = env
        self.path = env.path
        self.clock = clock
        self._writer = writer
        self.slot_lock = slot
        self._inherited = False
        self.slot = 0 if slot is None else slot.slot
        """The slot whose outbox `outbox` adds to and scans (0 for a store opened
        without `claim`)."""
        self.quarantine = Quarantine(env)
        self.quarantine.attach(writer.submit)

        def report(table: str, key: bytes, raw: bytes, error: Exception) -> None:
            self.quarantine.report(table, key, raw, error, self.clock())

        self.outbox = Outbox(env, report, self.slot)
        self.scheduled = Scheduled(env, self.outbox, report)
        self.ended = Ended(env, report)
        self.hook_marks = HookMarks(env, self.slot)
        self.mailboxes = Mailboxes(env)
        self.dead_letters = DeadLetterTable(env, report)
        self.dedup = Dedup(env, report)
        self.inbox = Inbox(env, report)
        self.replay_requests = ReplayRequests(env, report)
        self.status = RuntimeStatus(env, self.slot)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        map_size: int = 1 << 30,
        max_map_size: int | None = None,
        durability: str = "sync",
        create: bool = True,
        clock: Callable[[], float] = time.time,
        max_batch: int = 1024,
        flush_interval: float = 1.0,
        claim: bool = False,
        readonly: bool = False,
    ) -> Store:
        """Open (creating, mode 0o700, if `create`) the data directory at `path`.

        `map_size` is the initial LMDB map; it doubles on demand up to `max_map_size`
        (default 16 x `map_size`). `durability`: `"sync"` (fsync per commit) or
        `"async"` (see `surelay.storage.writer`). Raises `StorageError` for a directory
        that is not a surelay one, `SchemaMismatch` for an incompatible schema. Other
        processes may open the same directory at once (LMDB's own locking); this process
        may not open it twice. With `claim`, the store takes the lowest free slot of the
        directory and holds it until `close()`. With `readonly`, it only reads (every
        write raises `StorageError`).
        """
        check_path(path)
        real = Path(os.path.realpath(path))
        with _OPEN_LOCK:
            if any(store.path == real for store in _INHERITED):
                raise StorageError(
                    f"{real} was open in the process this one was forked from, and LMDB "
                    "cannot open it again in a forked child; open the runtime only after "
                    "the fork (e.g. in the web framework's startup hook), never before it"
                )
            if real in _OPEN:
                raise StorageError(
                    f"{real} is already open in this process (LMDB forbids opening one "
                    "environment twice in a process): share the runtime or store open on "
                    "it; other processes may open it beside this one"
                )
            _OPEN.add(real)
        try:
            env = Environment.open(
                real,
                map_size=map_size,
                max_map_size=max_map_size if max_map_size is not None else 16 * map_size,
                durability=durability,
                create=create,
                readonly=readonly,
            )
        except BaseException:
            with _OPEN_LOCK:
                _OPEN.discard(real)
            raise
        slot = None
        try:
            if claim:
                slot = SlotLock.claim(real)
            # Readers left in LMDB's table by processes that died (kill -9) would pin
            # old pages, and the file would grow.
            env.reader_check()
            writer = GroupCommitWriter(env, max_batch=max_batch, flush_interval=flush_interval)
        except BaseException:
            env.close()
            if slot is not None:
                slot.release()
            with _OPEN_LOCK:
                _OPEN.discard(real)
            raise
        store = cls(env, clock, writer, slot)
        _STORES.add(store)
        return store

    # -- transactions --------------------------------------------------------------------

    def read(self) -> contextlib.AbstractContextManager[Txn]:
        """A read-only snapshot for the table accessors."""
        return self.env.read()

    def write(
        self, op: Callable[[Txn], T], *, then: Callable[[Future[T]], object] | None = None
    ) -> Future[T]:
        """Run `op(txn)` in the next group commit; see `surelay.storage.writer` (`then`:
        called as the commit ends, in commit order). `StorageError` at once on a
        read-only filesystem."""
        if self.env.readonly:
            raise StorageError(
                f"{self.path} is on a read-only filesystem: it can be read, not changed"
            )
        return self._writer.submit(op, then)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        """A write transaction for the host's own tables (`host_table`), committed when
        the block ends and aborted if it raises. `store.outbox.enqueue(txn, ...)` inside
        it puts messages in the outbox in the same transaction.

        It waits for the group-commit writer's current batch (one writer at a time);
        do not wait on store futures inside it. If the map fills up, the map is grown and
        `RetryTransaction` raised (nothing was written): run the block again. A store
        down to its reserve refuses it with `StorageFull` (it may add data).
        """
        try:
            with self.env.write() as txn:
                self.env.space.admit(txn, self.env.space.page_size)
                yield txn
        except lmdb.MapFullError as error:
            try:
                size = self.env.grow()
            except StorageFull as full:
                raise full from error
            raise RetryTransaction(
                f"the map was full and has grown to {size} bytes; nothing was written: "
                "run the transaction again"
            ) from error

    def host_table(self, name: str) -> Any:
        """The handle of a named database of the host's own, for use in `transaction()`."""
        return self.env.host_db(name)

    # -- compound operations -------------------------------------------------------------

    def enqueue(
        self, envelopes: Sequence[tuple[Envelope, int]], *, due_at: float | None = None
    ) -> Future[list[OutboxEntry]]:
        """Accept (envelope, partition) pairs into the outbox, all or none."""
        at = self.clock() if due_at is None else due_at

        items = list(envelopes)

        def op(txn: Txn) -> list[OutboxEntry]:
            return self.outbox.enqueue_many(txn, items, due_at=at)

        return self.write(op)

    def adopt(
        self,
        slot: int,
        *,
        route: Callable[[OutboxEntry], int],
        limit: int = 1000,
        accept: Callable[[str], bool] | None = None,
        start: bytes | None = None,
    ) -> Future[tuple[dict[int, tuple[int, int]], bytes | None]]:
        """`Outbox.adopt` in one transaction (hold `slot`'s lock while calling: its
        runtime must be gone)."""
        return self.write(
            lambda txn: self.outbox.adopt(
                txn, slot, limit=limit, route=route, accept=accept, start=start
            )
        )

    def reroute(
        self, route: Callable[[OutboxEntry], int], *, start: bytes | None = None
    ) -> Future[tuple[int, bytes | None]]:
        """`Outbox.reroute` in one transaction."""
        return self.write(lambda txn: self.outbox.reroute(txn, route, start=start))

    def reschedule(
        self,
        message_id: str,
        *,
        attempt: int,
        due_at: float,
        last_error: str | None = None,
        failed_at: float | None = None,
    ) -> Future[OutboxEntry | None]:
        return self.write(
            lambda txn: self.outbox.reschedule(
                txn,
                message_id,
                attempt=attempt,
                due_at=due_at,
                last_error=last_error,
                failed_at=failed_at,
            )
        )

    def accept(
        self,
        txn: Txn,
        items: Sequence[tuple[Envelope, int]],
        dues: Sequence[float | None] | None,
        *,
        now: float,
    ) -> tuple[list[OutboxEntry], list[OutboxEntry]]:
        """`Scheduled.accept` (to the outbox, or scheduled), and each message sent with
        an idempotency key of its own made findable by it (`rt.status`)."""
        accepted = self.scheduled.accept(txn, items, dues, now=now)
        own = [
            (e.idempotency_key, e.message_id) for e, _ in items if e.idempotency_key != e.message_id
        ]
        if own:
            self.ended.remember_keys(txn, own)
        return accepted

    def dead_lettered(
        self,
        record: DeadLetter,
        *,
        status_until: float | None = None,
        hooked: bool = False,
        forward: tuple[Envelope, int] | None = None,
        then: Callable[[Future[list[OutboxEntry]]], None] | None = None,
    ) -> Future[list[OutboxEntry]]:
        """Store a dead letter and remove its message from the outbox, atomically; with
        `status_until`, `rt.status` finds it by message id until then; `hooked`: the
        `on_dead_letter` hook is to run for it (`HookMarks`); `forward`: a message (and
        its partition) that carries a copy onwards, enqueued in the same transaction (the
        future's entries: it, or none). `then` as for `write`."""

        def op(txn: Txn) -> list[OutboxEntry]:
            self.dead_letters.insert(txn, record)
            self.outbox.remove(txn, record.message_id)
            if status_until is not None:
                self.record_dead(txn, [record], status_until, hooked=hooked)
            if forward is None:
                return []
            return self.outbox.enqueue_many(txn, [forward], due_at=forward[0].created_at)

        return self.write(op, then=then)

    def record_dead(
        self, txn: Txn, records: Sequence[DeadLetter], until: float, *, hooked: bool = False
    ) -> None:
        """Let `rt.status` find these dead letters by message id until `until`; mark them
        for the `on_dead_letter` hook if `hooked`."""
        if hooked:
            self.hook_marks.mark(txn, (r.id for r in records))
        if records:
            self.ended.put_many(
                txn,
                (
                    Ending(
                        r.message_id,
                        r.transport,
                        r.key,
                        r.idempotency_key,
                        r.attempts,
                        r.reason,
                        r.id,
                    )
                    for r in records
                ),
                state="dead",
                at=records[0].failed_at,
                expires_at=until,
            )

    def replayed(
        self, dead_letter_id: str, *, delivered_at: float, expires_at: float
    ) -> Future[DeadLetter]:
        """Mark a leased dead letter `replayed` and record its idempotency key as
        delivered, atomically."""

        def op(txn: Txn) -> DeadLetter:
            record = self.dead_letters.get(txn, dead_letter_id)
            if record is None:
                raise KeyError(f"no dead letter {dead_letter_id!r}")
            self.dedup.put(
                txn, record.idempotency_key, delivered_at=delivered_at, expires_at=expires_at
            )
            ending = Ending(
                record.message_id,
                record.transport,
                record.key,
                record.idempotency_key,
                record.attempts + 1,
                None,
                record.id,
            )
            self.ended.put_many(
                txn, [ending], state="replayed", at=delivered_at, expires_at=expires_at
            )
            return self.dead_letters.transition(
                txn,
                dead_letter_id,
                "replayed",
                record=record,
                replay_count=record.replay_count + 1,
            )

        return self.write(op)

    def lease_for_replay(
        self,
        dead_letter_id: str,
        *,
        now: float,
        until: float,
        renew: bool = False,
        recovering: bool = False,
    ) -> Future[tuple[LeaseVerdict, DeadLetter | None]]:
        """Take a dead letter for replay, guarded by dedup, in one transaction.

        The verdict is `leased` (now `replaying` until `until`: send it), `duplicate`
        (its idempotency key was delivered meanwhile: now `replayed`, never to be sent),
        `replayed` (replayed before), `archived`, `held` (another replay holds a live
        lease; `renew` takes it anyway, for a worker re-taking its own) or `missing`.
        A `recovering` caller takes only a record still `replaying`: one whose replay
        ended since the caller saw it gets the verdict `dead` and is left to operators.
        """

        def op(txn: Txn) -> tuple[LeaseVerdict, DeadLetter | None]:
            table = self.dead_letters
            record = table.get(txn, dead_letter_id)
            if record is None:
                return "missing", None
            if record.status in ("archived", "replayed"):
                return record.status, record
            if recovering and record.status == "dead":
                return "dead", record
            if record.status == "replaying" and not renew and (record.lease_until or 0.0) > now:
                return "held", record
            leased = table.lease(
                txn, dead_letter_id, now=now, until=until, renew=renew, record=record
            )
            if leased is None:
                return "held", record
            if self.dedup.get(txn, leased.idempotency_key, now=now) is not None:
                return "duplicate", table.transition(txn, dead_letter_id, "replayed", record=leased)
            return "leased", leased

        return self.write(op)

    def replay_failed(self, dead_letter_id: str, **changes: Any) -> Future[DeadLetter]:
        """Put a leased dead letter back to `dead` after a failed replay attempt, with
        `replay_count + 1` and the new failure's fields (`changes`)."""

        def op(txn: Txn) -> DeadLetter:
            record = self.dead_letters.get(txn, dead_letter_id)
            if record is None:
                raise KeyError(f"no dead letter {dead_letter_id!r}")
            return self.dead_letters.transition(
                txn,
                dead_letter_id,
                "dead",
                record=record,
                replay_count=record.replay_count + 1,
                **changes,
            )

        return self.write(op)

    def release_lease(self, dead_letter_id: str) -> Future[DeadLetter | None]:
        """Put a leased dead letter back to `dead` unchanged: no attempt was made."""

        def op(txn: Txn) -> DeadLetter | None:
            record = self.dead_letters.get(txn, dead_letter_id)
            if record is None or record.status != "replaying":
                return record
            return self.dead_letters.transition(txn, dead_letter_id, "dead", record=record)

        return self.write(op)

    def sweep_dedup(self, *, now: float | None = None, limit: int | None = None) -> Future[int]:
        """Remove dedup records expired by `now` (default: the clock)."""
        at = self.clock() if now is None else now
        return self.write(lambda txn: self.dedup.sweep(txn, now=at, limit=limit))

    def sweep_ended(self, *, now: float | None = None, limit: int | None = None) -> Future[int]:
        """Remove the status records of messages that ended, expired by `now`."""
        at = self.clock() if now is None else now
        return self.write(lambda txn: self.ended.sweep(txn, now=at, limit=limit))

    def sweep_inbox(self, *, now: float | None = None, limit: int | None = None) -> Future[int]:
        """Remove inbox records expired by `now` (default: the clock)."""
        at = self.clock() if now is None else now
        return self.write(lambda txn: self.inbox.sweep(txn, now=at, limit=limit))

    def sweep_dead_letters(
        self, ttl: float, *, now: float | None = None, limit: int | None = None
    ) -> Future[int]:
        """Retention: remove dead letters that failed more than `ttl` seconds ago."""
        cutoff = (self.clock() if now is None else now) - ttl
        return self.write(lambda txn: self.dead_letters.sweep(txn, cutoff=cutoff, limit=limit))

    # -- introspection and life cycle ----------------------------------------------------

    @property
    def full(self) -> bool:
        """Sends are refused for want of room, or writes that free space wait for it
        (the map or the disk is full)."""
        return self.env.space.full or self._writer.stuck

    def stats(self) -> StoreStats:
        map_size, map_used = self.env.usage()
        with self.read() as txn:
            return StoreStats(
                outbox_pending=self.outbox.count(txn),
                scheduled=self.scheduled.count(txn),
                dead_letters={s: self.dead_letters.count(txn, s) for s in DEAD_LETTER_STATUSES},
                dedup_records=self.dedup.count(txn),
                quarantined=self.quarantine.count(txn),
                map_size=map_size,
                map_used=map_used,
                commits=self._writer.commits,
                operations=self._writer.operations,
            )

    def close(self, timeout: float | None = 10.0) -> None:
        """Commit what is queued, stop the writer, close the environment, then give the
        slot back (never before: whoever takes it next must find every write done).
        Idempotent; a no-op in a forked child (see `disown`)."""
        if self.env.closed or self._inherited:
            return
        try:
            self._writer.close(timeout)
            self.env.close()
        finally:
            with _OPEN_LOCK:
                _OPEN.discard(self.path)
            _STORES.discard(self)
        if self.slot_lock is not None:
            self.slot_lock.release()

    def disown(self) -> None:
        """In a forked child: leave the store to the parent. Its slot's lock stays the
        parent's; `close()` does nothing from now on."""
        self._inherited = True
        if self.slot_lock is not None:
            self.slot_lock.disown()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
