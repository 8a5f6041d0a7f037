"""`Gather`: sends from many threads written to the outbox as one group per write.

Coroutines get this from their event loop (one turn's `asend`s are written together);
threads get it here. The first thread to send while no group is open leads: it waits
while `depth` groups are being written (not yet durable), meanwhile every thread that
sends joins its group, then it closes the group and writes it, once. So while the store
commits one group the next ones gather, the writer takes one operation per group
instead of one per thread, and each thread's answer still comes only once its message
is durable.

A thread's sends stay in its own order: it joins the next group only after its answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["Gather"]

T = TypeVar("T")


class Gather(Generic[T]):
    """Groups items from many threads for `write` (see the module docstring).

    `write(group)` starts writing a group and answers each item itself, also when it
    raises (then every item not answered yet gets the error); it returns the futures
    that complete once the group is durable (none if nothing was written). At most
    `depth` groups are written at once: with two, one waits in the store's queue while
    the other commits, so the store never waits for a leader to wake (16 threads:
    2,250 sends/s against 1,500 with one)."""

    def __init__(
        self, write: Callable[[list[T]], Sequence[Future[object]]], depth: int = 2
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._write = write
        self._depth = depth
        self._cond = threading.Condition()
        self._open: list[T] | None = None
        self._writing = 0

    @property
    def gathering(self) -> int:
        """Items in the group open now (waiting for a write before theirs)."""
        group = self._open
        return 0 if group is None else len(group)

    def join(self, item: T) -> None:
        """Add `item` to the open group, or open one and lead it (write it, on this
        thread, once fewer than `depth` groups are being written). A leader interrupted
        while it waits (`KeyboardInterrupt`) still writes its group, then raises: the
        items of others never wait on a leader that is gone."""
        interrupted: BaseException | None = None
        with self._cond:
            group = self._open
            if group is not None:
                group.append(item)
                return
            group = self._open = [item]
            try:
                while self._writing >= self._depth and self._open is group:
                    self._cond.wait()
            except BaseException as error:
                interrupted = error
            flushed = self._open is not group  # written by `flush`, which answers them
            if not flushed:
                self._open = None  # later items open the next group
                self._writing += 1
        if not flushed:
            self._start(group)
        if interrupted is not None:
            raise interrupted

    def flush(self) -> None:
        """Write the open group now, on this thread, whatever the depth (a closing
        runtime does: a send already called is a send under way)."""
        with self._cond:
            group = self._open
            if group is None:
                return
            self._open = None
            self._writing += 1
            self._cond.notify_all()  # its leader stops waiting: the group is written here
        self._start(group)

    def _start(self, group: list[T]) -> None:
        try:
            written = list(self._write(group))
        except BaseException:
            self._written()  # (`write` answered what it could: the next group goes on)
            raise
        if not written:
            self._written()
            return
        left = [len(written)]
        counting = threading.Lock()

        def durable(_: object) -> None:
            with counting:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._written()

        for future in written:
            future.add_done_callback(durable)

    def _written(self) -> None:
        with self._cond:
            self._writing -= 1
            self._cond.notify_all()
