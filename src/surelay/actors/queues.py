"""Per-key lines: strict FIFO per key, weighted priorities across keys; one partition's
queue of the Sender (`PartitionQueue`), and the replay worker's lines of records.

Each key has a line of items in acceptance order; only its head is taken (the sender
may carry the entries `behind` a taken head in the same batch, attempted after it in
order, and stops the line at the first one not delivered). A head is
*ready* (waiting for its actor), *taken* (being delivered) or *held* (waiting for a retry
or for its transport's breaker). The key's next item becomes head only when the head
ends, so a message waiting for a retry holds back every later message of its key, and a
key's messages are delivered in acceptance order whatever their priorities.

Ready heads are served by priority with weights `WEIGHTS` (HIGH 6, NORMAL 3, LOW 1): while
all three have ready heads, ten picks take six HIGH, three NORMAL and one LOW, so LOW is
slowed under load but never starved. A message without a key is its own line.

Plain Python, no threads: the actor that owns one is its only user.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from surelay.policy.priority import Picker
from surelay.storage.records import OutboxEntry

__all__ = ["Lines", "PartitionQueue", "line_of"]

T = TypeVar("T")


def line_of(entry: OutboxEntry) -> str:
    """The ordering line of an entry: its key, or (no key) its own message id."""
    key = entry.envelope.key
    return "k" + key if key is not None else "m" + entry.envelope.message_id


class Lines(Generic[T]):
    """Items in per-key lines (see the module docstring): `line` names an item's line,
    `rank` its priority (0 first), `ident` the item itself (a head given back updated
    is the same item)."""

    def __init__(
        self,
        line: Callable[[T], str],
        rank: Callable[[T], int],
        ident: Callable[[T], str],
    ) -> None:
        self._line = line
        self._rank = rank
        self._ident = ident
        self._lines: dict[str, deque[T]] = {}
        self._ready: tuple[deque[T], ...] = (deque(), deque(), deque())
        self._picker = Picker()
        self._size = 0

    def add(self, item: T) -> bool:
        """Append an accepted item to its key's line. True if it is the line's head
        (the caller then makes it ready with `ready` or holds it)."""
        line = self._line(item)
        queue = self._lines.get(line)
        self._size += 1
        if queue is None:
            self._lines[line] = deque((item,))
            return True
        queue.append(item)
        return False

    def ready(self, item: T) -> None:
        """Make a head ready to take (a new head, a due retry, a returned one)."""
        queue = self._lines[self._line(item)]
        queue[0] = item  # the head may come back updated (attempt, due time, lease)
        self._ready[self._rank(item)].append(item)

    def hold(self, item: T) -> None:
        """Keep a head out of the ready queues (it waits for a retry); `item` may be
        the head updated with its next attempt."""
        self._lines[self._line(item)][0] = item

    def take(self, limit: int) -> list[T]:
        """Up to `limit` ready heads in weighted priority order."""
        ready = self._ready
        out: list[T] = []
        while len(out) < limit and (ready[0] or ready[1] or ready[2]):
            out.append(ready[self._picker.pick(ready)].popleft())
        return out

    def behind(self, head: T, limit: int) -> list[T]:
        """Up to `limit` items queued behind `head` in its key's line, in order."""
        return list(itertools.islice(self._lines[self._line(head)], 1, limit + 1))

    def is_head(self, item: T) -> bool:
        """Whether `item` is the head of its key's line."""
        queue = self._lines.get(self._line(item))
        return queue is not None and self._ident(queue[0]) == self._ident(item)

    def finish(self, item: T) -> T | None:
        """The head ended: drop it and return the key's next item, now the head, if
        any."""
        line = self._line(item)
        queue = self._lines[line]
        head = queue.popleft()
        if self._ident(head) != self._ident(item):
            queue.appendleft(head)
            raise ValueError(f"{self._ident(item)} is not the head of its key's line")
        self._size -= 1
        if queue:
            return queue[0]
        del self._lines[line]
        return None

    def __len__(self) -> int:
        """Items in the lines, ready, taken or held."""
        return self._size

    @property
    def ready_count(self) -> int:
        return sum(len(q) for q in self._ready)


def _rank(entry: OutboxEntry) -> int:
    return entry.envelope.priority.rank


def _message_id(entry: OutboxEntry) -> str:
    return entry.envelope.message_id


class PartitionQueue(Lines[OutboxEntry]):
    """One partition's outbox entries, by key (the Sender's)."""

    def __init__(self) -> None:
        super().__init__(line_of, _rank, _message_id)
