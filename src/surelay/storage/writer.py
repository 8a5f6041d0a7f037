"""Group commit: one thread commits the writes of many threads in one transaction.

Callers `submit` an operation (a function of a write transaction) and get a
`concurrent.futures.Future`. The writer takes everything queued (up to `max_batch`),
runs the operations in one transaction and commits; only then, with `durability="sync"`,
after LMDB's fsync, does it complete the futures. Many sends share one fsync.

- An operation that raises fails only its own future: the batch is run again without it.
- An operation may run more than once (after a failed batch, or after the map grew);
  only the effects of its last run are committed. Keep operations free of side effects
  outside the transaction.
- A full map is grown (doubled, up to `max_map_size`) and the batch retried. At the
  maximum (or when the disk is full), the writes that free space and those that add data
  are split: the freeing ones commit on their own, and any that still do not fit wait
  and are tried again (backing off to every 2 s) until they land: a full store always
  drains. A write that adds data is refused by the reserve (`surelay.storage.space`)
  before it comes to that; if it gets there anyway it fails with `StorageFull`.
- With `durability="async"`, commits skip the fsync and the writer flushes every
  `flush_interval` seconds (and on close): a process crash (even kill -9) loses nothing,
  since the OS holds the pages; an OS crash or power loss can lose the commits of the
  last interval. LMDB documents that this keeps the file consistent only on a
  filesystem that preserves write order (ext4's default `data=ordered` does); on
  others an OS crash may corrupt it. Use `"sync"` where that matters.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import lmdb

from surelay.errors import StorageError, StorageFull
from surelay.storage.environment import Environment, Txn
from surelay.storage.integrity import damaged
from surelay.storage.keys import u64

__all__ = ["GroupCommitWriter", "backoff"]

logger = logging.getLogger("surelay.storage")

T = TypeVar("T")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
STUCK_QUIET = 30.0
_STUCK_TRIES = 5


def backoff(tries: int) -> float:
    """Seconds before a write that did not fit is tried again, after `tries` failures."""
    return float(min(BACKOFF_FIRST * 2 ** max(tries - 1, 0), BACKOFF_MAX))


class _Request:
    __slots__ = ("adds", "future", "op", "tries")

    def __init__(self, op: Callable[[Txn], Any], future: Future[Any]) -> None:
        self.op = op
        self.future = future
        self.adds = False
        """It added data the last time it ran (it asked the reserve for room)."""
        self.tries = 0
        """Times it did not fit."""


class _OpFailed(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        self.index = index
        self.error = error


class _NoRoom(Exception):
    """The batch did not fit: the map is at its maximum or the disk is full."""

    def __init__(self, error: StorageFull) -> None:
        self.error = error


class GroupCommitWriter:
    """The single writer of a store (a thread the store owns and stops)."""

    def __init__(
        self, env: Environment, *, max_batch: int = 1024, flush_interval: float = 1.0
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0, got {flush_interval}")
        self._env = env
        self._space = env.space
        self._max_batch = max_batch
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._waiting: list[tuple[float, int, _Request]] = []
        """Writes that free space and did not fit: (when to try again, order, request)."""
        self._order = itertools.count()
        self._closing = False
        self._last_try = False
        self._unsynced = False
        self._stuck = False
        self._failing = False
        self._ticks = 0
        self._unstuck_at = -STUCK_QUIET
        self._quiet = False
        self.commits = 0
        """Transactions committed (each may hold many operations)."""
        self.operations = 0
        """Operations committed."""
        self._thread = threading.Thread(target=self._run, name="surelay-storage-writer")
        self._thread.daemon = True  # LMDB is crash-safe; never hold the interpreter open
        self._thread.start()

    def submit(
        self, op: Callable[[Txn], T], then: Callable[[Future[T]], object] | None = None
    ) -> Future[T]:
        """Queue `op`; its future completes once the commit holding it is durable. `then`
        is added to the future before `op` is queued, so it runs on the writer's thread
        as the commit ends, in commit order with other writes' callbacks."""
        future: Future[T] = Future()
        if then is not None:
            future.add_done_callback(then)
        with self._lock:
            if self._closing:
                raise StorageError(f"the store at {self._env.path} is closed")
            self._queue.append(_Request(op, future))
            self._wake.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop. Writes waiting for room get one last try
        and fail with `StorageFull` if they still do not fit. Idempotent."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the storage writer did not finish within %ss", timeout)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._waiting)

    @property
    def stuck(self) -> bool:
        """Writes that free space are waiting for room (the store or its disk is full)."""
        return self._stuck

    def _run(self) -> None:
        asynchronous = self._env.durability == "async"
        last_batch = 0
        last_commit = time.monotonic()
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    self._release_waiting(now)
                    if self._queue or self._closing:
                        break
                    timeout = self._waiting[0][0] - now if self._waiting else None
                    if asynchronous and self._unsynced:
                        flush_at = last_commit + self._flush_interval - now
                        if flush_at <= 0:
                            break  # idle for a whole interval: flush below
                        timeout = flush_at if timeout is None else min(timeout, flush_at)
                    self._wake.wait(timeout)
                if not self._queue and self._closing:
                    if not self._waiting:
                        break
                    self._last_try = True  # closing: one more try for the waiting ones
                    self._queue.extend(r for _, _, r in sorted(self._waiting))
                    self._waiting.clear()
            if last_batch > 1:
                # Several callers just had their futures completed and are about to
                # submit again; letting them run first turns a batch of one into a batch
                # of many. (With one caller this would only add latency.)
                time.sleep(0)
            with self._lock:
                take = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
            last_batch = len(batch)
            if batch:
                self._commit(batch)
                self._unsynced = asynchronous
                last_commit = time.monotonic()
            elif self._unsynced:
                self._flush()
        if self._unsynced:
            self._flush()

    def _release_waiting(self, now: float) -> None:
        """Move the waiting writes whose time came to the queue (call holding the lock)."""
        while self._waiting and self._waiting[0][0] <= now:
            self._queue.append(heapq.heappop(self._waiting)[2])

    def _flush(self) -> None:
        try:
            self._env.sync()
        except lmdb.Error as error:
            logger.error("flushing %s failed: %s", self._env.path, error)
        self._unsynced = False

    def _commit(self, batch: list[_Request]) -> None:
        running = []
        for request in batch:
            # A request back from waiting is running already.
            if request.future.running() or request.future.set_running_or_notify_cancel():
                running.append(request)
        self._commit_running(running)

    def _commit_running(self, pending: list[_Request]) -> None:
        while pending:
            try:
                results = self._run_batch(pending)
            except _OpFailed as failed:
                pending.pop(failed.index).future.set_exception(failed.error)
                continue
            except _NoRoom as no_room:
                self._no_room(pending, no_room.error)
                return
            except Exception as error:  # LMDB itself failed: nothing in the batch landed
                self._set_failing(error)
                wrapped = StorageError(f"commit to {self._env.path} failed: {error}")
                # A write that frees space (a delivery recorded, a dead letter, a delete)
                # must land in the end whatever went wrong (an I/O error that passes, a
                # disk freed meanwhile), or what it settles is sent again: it waits and is
                # tried again. A write that adds data fails (its caller is told), and so
                # does everything once the store is damaged or closing.
                again = (
                    isinstance(error, lmdb.Error)
                    and damaged(error, self._env.path) is None
                    and not self._last_try
                )
                for request in pending:
                    if again and not request.adds:
                        self._wait(request)
                    else:
                        request.future.set_exception(wrapped)
                return
            self.commits += 1
            self.operations += len(pending)
            self._set_failing(None)
            if not self._waiting:
                self._set_stuck(False)
            for request, result in zip(pending, results, strict=True):
                request.future.set_result(result)
            return

    def _no_room(self, pending: list[_Request], error: StorageFull) -> None:
        """`pending` did not fit: commit the writes that free space apart from those that
        add data, one at a time when that is not enough; a freeing write that does not
        fit alone waits and is tried again, an adding one fails."""
        if len(pending) == 1:
            request = pending[0]
            if request.adds or self._last_try:
                if request.adds:
                    self._space.refused(str(error))
                request.future.set_exception(error)
                return
            self._set_stuck(True, error)
            if self._quiet and request.tries + 1 >= _STUCK_TRIES:
                self._announce_stuck(error)  # a quiet wait that lasts is said after all
            self._wait(request)
            self._tick()
            return
        adding = [r for r in pending if r.adds]
        freeing = [r for r in pending if not r.adds]
        if adding and freeing:
            self._commit_running(freeing)
        else:
            for request in freeing:
                self._commit_running([request])
        for request in adding:
            self._commit_running([request])

    def _wait(self, request: _Request) -> None:
        """Try `request` again after a back-off that grows with its tries."""
        request.tries += 1
        delay = backoff(request.tries)
        with self._lock:
            heapq.heappush(self._waiting, (time.monotonic() + delay, next(self._order), request))

    def _run_batch(self, pending: list[_Request]) -> list[Any]:
        """Run `pending` in one transaction; `_NoRoom` when it does not fit once the map
        is at its maximum, or when the disk is full."""
        while True:
            try:
                return self._try_batch(pending)
            except lmdb.MapFullError:
                try:
                    self._env.grow()
                except StorageFull as full:
                    raise _NoRoom(full) from None
            except _OpFailed:
                raise
            except lmdb.Error as error:
                if damaged(error, self._env.path) is None and self._space.disk_short():
                    # LMDB reports a write the disk could not take as an I/O error.
                    raise _NoRoom(StorageFull(self._disk_full())) from error
                raise

    def _disk_full(self) -> str:
        return (
            f"the disk at {self._env.path} is full ({self._space.disk_free():,} bytes "
            "free); free disk space: the outbox drains on its own once it can write again"
        )

    def _try_batch(self, pending: list[_Request]) -> list[Any]:
        results = []
        space = self._space
        with self._env.write() as txn:
            for index, request in enumerate(pending):
                space.added = False
                try:
                    results.append(request.op(txn))
                except lmdb.MapFullError:
                    request.adds = space.added
                    raise
                except Exception as error:
                    translated = damaged(error, self._env.path)
                    raise _OpFailed(index, translated or error) from error
                request.adds = space.added
        return results

    def _tick(self) -> None:
        """Commit a tiny write. LMDB reuses the pages a commit freed only once a later
        commit has happened (a reader may still see them until then), so while nothing
        else commits, a waiting write would never find the room its predecessors freed."""
        self._ticks += 1
        try:
            with self._env.write() as txn:
                txn.put(b"tick", u64(self._ticks), db=self._env.db("meta"))
        except (lmdb.Error, StorageError):
            return  # no room even for that: the next freeing commit advances instead

    def _set_stuck(self, stuck: bool, error: StorageFull | None = None) -> None:
        """One line when freeing writes start to wait and one when they land again; a
        store that flaps between the two (each freed page taken at once) says it once
        per `STUCK_QUIET` seconds."""
        if stuck == self._stuck:
            return
        self._stuck = stuck
        now = time.monotonic()
        if stuck:
            if now - self._unstuck_at < STUCK_QUIET:
                self._quiet = True  # said by `_no_room` if it lasts
                return
            self._announce_stuck(error)
        else:
            self._unstuck_at = now
            if not self._quiet:
                logger.warning("the store at %s can write again", self._env.path)

    def _announce_stuck(self, error: StorageFull | None) -> None:
        self._quiet = False
        logger.warning(
            "%s; writes that free space (recording deliveries, dead letters) wait and "
            "are tried again until they fit",
            error,
        )

    def _set_failing(self, error: Exception | None) -> None:
        """One line when commits start failing (for another reason than room) and one
        when they work again: not a traceback per failed commit."""
        if (error is not None) == self._failing:
            return
        self._failing = error is not None
        if error is not None:
            logger.error("commits to %s fail: %s", self._env.path, error)
        else:
            logger.warning("commits to %s work again", self._env.path)
