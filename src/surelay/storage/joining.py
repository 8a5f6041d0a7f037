"""`Joining`: the writes of many callers made one writer operation, closed when the
writer runs it (or ends it without running it).

A thread's `send` writes one message. Sixteen threads sending at once would be sixteen
operations in one commit, each answered on its own; a leader thread gathering them
would close its group when it decides to, and the others would wait for it to wake.
Here the first call while no group is open submits one operation, and every call until
the writer runs that operation joins it: the group closes when the writer takes it. So
a commit holds every write that came while the previous one was being made durable, no
caller waits for another thread to be scheduled, and what follows the write is done
once per group (`ended`) rather than once per caller.

The operation may run more than once (see `surelay.storage.writer`): it closes its
group on its first run and writes the same items on every run. The items of one group
commit, or fail, together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from surelay.errors import StorageError
from surelay.storage.environment import Txn

__all__ = ["Joining"]

logger = logging.getLogger("surelay.storage")

I = TypeVar("I")  # noqa: E741  # an item written
R = TypeVar("R")  # what writing a group gives back

Submit = Callable[[Callable[[Txn], Any]], "Future[Any]"]


class Joining(Generic[I, R]):
    """Items `join`ed from any thread, written as a group by `run(txn, items)` in one
    operation given to `submit`; `ended(items, result, error)` is called once per group
    when its write has ended (durable, or failed with `error`): on the thread that
    completes the operation's future (the writer's), or on the joining thread if the
    store refused the operation at once or it ended before `join` returned."""

    def __init__(
        self,
        submit: Submit,
        run: Callable[[Txn, list[I]], R],
        ended: Callable[[list[I], R | None, BaseException | None], None],
    ) -> None:
        self._submit = submit
        self._run = run
        self._ended = ended
        self._lock = threading.Lock()
        self._open: list[I] | None = None

    @property
    def gathering(self) -> int:
        """Items in the group open now (its operation not yet run by the writer)."""
        group = self._open
        return 0 if group is None else len(group)

    def join(self, item: I) -> None:
        """Write `item` with the other items of the open group (or open one)."""
        with self._lock:
            group = self._open
            if group is not None:
                group.append(item)
                return
            group = self._open = [item]
        done: Future[R] | None = None
        try:
            done = self._submit(lambda txn: self._write(group, txn))
        except Exception as error:  # the store is closed: nothing of the group written
            self._answer(group, None, error)
        finally:  # (an interrupt once `done` is set still leaves the group to its end)
            if done is not None:
                done.add_done_callback(lambda written: self._answer(group, None, None, written))

    def _close(self, group: list[I]) -> None:
        with self._lock:
            if self._open is group:
                self._open = None  # later items open the next group

    def _write(self, group: list[I], txn: Txn) -> R:
        self._close(group)  # (no item joins it from here on: the same items every run)
        return self._run(txn, group)

    def _answer(
        self,
        group: list[I],
        result: R | None,
        error: BaseException | None,
        written: Future[R] | None = None,
    ) -> None:
        # Closed here too: the writer may end an operation without running it (a store
        # that fails as a transaction begins, a close), and a group left open would take
        # every later item with no operation to write it.
        self._close(group)
        if written is not None:
            if written.cancelled():
                error = StorageError("the outbox write was cancelled")
            elif (error := written.exception()) is None:
                result = written.result()
        try:
            self._ended(group, result, error)
        except Exception:  # `ended` answers its callers itself; a bug there is logged
            logger.exception("ending a joined write failed")
