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
  maximum, the batch is committed one operation at a time so that those that fit land,
  and the others fail with `StorageFull`; the store stays usable.
- With `durability="async"`, commits skip the fsync and the writer flushes every
  `flush_interval` seconds (and on close): a process crash (even kill -9) loses nothing,
  since the OS holds the pages; an OS crash or power loss can lose the commits of the
  last interval. LMDB documents that this keeps the file consistent only on a
  filesystem that preserves write order (ext4's default `data=ordered` does); on
  others an OS crash may corrupt it. Use `"sync"` where that matters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from surelay.errors import StorageError, StorageFull
from surelay.storage.environment import Environment, Txn

__all__ = ["GroupCommitWriter"]

logger = logging.getLogger("surelay.storage")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Request:
    op: Callable[[Txn], Any]
    future: Future[Any]


class _OpFailed(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        self.index = index
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
        self._max_batch = max_batch
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._closing = False
        self._unsynced = False
        self.commits = 0
        """Transactions committed (each may hold many operations)."""
        self.operations = 0
        """Operations committed."""
        self._thread = threading.Thread(target=self._run, name="surelay-storage-writer")
        self._thread.daemon = True  # LMDB is crash-safe; never hold the interpreter open
        self._thread.start()

    def submit(self, op: Callable[[Txn], T]) -> Future[T]:
        """Queue `op`; its future completes once the commit holding it is durable."""
        future: Future[T] = Future()
        with self._lock:
            if self._closing:
                raise StorageError(f"the store at {self._env.path} is closed")
            self._queue.append(_Request(op, future))
            self._wake.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop. Idempotent."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the storage writer did not finish within %ss", timeout)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        asynchronous = self._env.durability == "async"
        last_batch = 0
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    if asynchronous and self._unsynced:
                        if not self._wake.wait(self._flush_interval):
                            break  # idle for a whole interval: flush below
                    else:
                        self._wake.wait()
                if not self._queue and self._closing:
                    break
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
            elif self._unsynced:
                self._flush()
        if self._unsynced:
            self._flush()

    def _flush(self) -> None:
        try:
            self._env.sync()
        except lmdb.Error:
            logger.exception("flushing %s failed", self._env.path)
        self._unsynced = False

    def _commit(self, batch: list[_Request]) -> None:
        self._commit_running([r for r in batch if r.future.set_running_or_notify_cancel()])

    def _commit_running(self, pending: list[_Request]) -> None:
        while pending:
            try:
                results = self._run_batch(pending)
            except _OpFailed as failed:
                pending.pop(failed.index).future.set_exception(failed.error)
                continue
            except lmdb.MapFullError:
                try:
                    self._env.grow()
                except StorageFull as full:
                    if len(pending) == 1:
                        pending[0].future.set_exception(full)
                    else:
                        for request in pending:  # let those that fit land
                            self._commit_running([request])
                    return
                continue
            except Exception as error:  # LMDB itself failed: nothing in the batch landed
                logger.exception("commit to %s failed", self._env.path)
                wrapped = StorageError(f"commit to {self._env.path} failed: {error!r}")
                for request in pending:
                    request.future.set_exception(wrapped)
                return
            self.commits += 1
            self.operations += len(pending)
            for request, result in zip(pending, results, strict=True):
                request.future.set_result(result)
            return

    def _run_batch(self, pending: list[_Request]) -> list[Any]:
        results = []
        with self._env.write() as txn:
            for index, request in enumerate(pending):
                try:
                    results.append(request.op(txn))
                except lmdb.MapFullError:
                    raise
                except Exception as error:
                    raise _OpFailed(index, error) from error
        return results
