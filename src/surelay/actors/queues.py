"""One partition's queue: strict FIFO per key, weighted priorities across keys.

Each key has a line of entries in acceptance order; only its head is taken (the sender
may carry the entries `behind` a taken head in the same batch, attempted after it in
order, and stops the line at the first one not delivered). A head is
*ready* (waiting for the sender), *taken* (being delivered) or *held* (waiting for a retry
or for its transport's breaker). The key's next entry becomes head only when the head
ends, so a message waiting for a retry holds back every later message of its key, and a
key's messages are delivered in acceptance order whatever their priorities.

Ready heads are served by priority with weights `WEIGHTS` (HIGH 6, NORMAL 3, LOW 1): while
all three have ready heads, ten picks take six HIGH, three NORMAL and one LOW, so LOW is
slowed under load but never starved. A message without a key is its own line.

Plain Python, no threads: the Sender actor owns one and is its only user.
"""

from __future__ import annotations

import itertools
from collections import deque

from surelay.policy.priority import Picker
from surelay.storage.records import OutboxEntry

__all__ = ["PartitionQueue", "line_of"]


def line_of(entry: OutboxEntry) -> str:
    """The ordering line of an entry: its key, or (no key) its own message id."""
    key = entry.envelope.key
    return "k" + key if key is not None else "m" + entry.envelope.message_id


class PartitionQueue:
    def __init__(self) -> None:
        self._lines: dict[str, deque[OutboxEntry]] = {}
        self._ready: tuple[deque[OutboxEntry], ...] = (deque(), deque(), deque())
        self._picker = Picker()
        self._size = 0

    def add(self, entry: OutboxEntry) -> bool:
        """Append an accepted entry to its key's line. True if it is the line's head
        (the caller then makes it ready with `ready` or holds it)."""
        line = line_of(entry)
        queue = self._lines.get(line)
        self._size += 1
        if queue is None:
            self._lines[line] = deque((entry,))
            return True
        queue.append(entry)
        return False

    def ready(self, entry: OutboxEntry) -> None:
        """Make a head ready to send (a new head, a due retry, a returned one)."""
        queue = self._lines[line_of(entry)]
        queue[0] = entry  # the head may come back updated (attempt, due time)
        self._ready[entry.envelope.priority.rank].append(entry)

    def hold(self, entry: OutboxEntry) -> None:
        """Keep a head out of the ready queues (it waits for a retry); `entry` may be
        the head updated with its next attempt."""
        self._lines[line_of(entry)][0] = entry

    def take(self, limit: int) -> list[OutboxEntry]:
        """Up to `limit` ready heads in weighted priority order."""
        ready = self._ready
        out: list[OutboxEntry] = []
        while len(out) < limit and (ready[0] or ready[1] or ready[2]):
            out.append(ready[self._picker.pick(ready)].popleft())
        return out

    def behind(self, head: OutboxEntry, limit: int) -> list[OutboxEntry]:
        """Up to `limit` entries queued behind `head` in its key's line, in order."""
        return list(itertools.islice(self._lines[line_of(head)], 1, limit + 1))

    def is_head(self, entry: OutboxEntry) -> bool:
        """Whether `entry` is the head of its key's line."""
        queue = self._lines.get(line_of(entry))
        return queue is not None and queue[0].envelope.message_id == entry.envelope.message_id

    def finish(self, entry: OutboxEntry) -> OutboxEntry | None:
        """The head ended (delivered, duplicate or dead-lettered): drop it and return
        the key's next entry, now the head, if any."""
        line = line_of(entry)
        queue = self._lines[line]
        head = queue.popleft()
        if head.envelope.message_id != entry.envelope.message_id:
            queue.appendleft(head)
            raise ValueError(f"{entry.envelope.message_id} is not the head of its key's line")
        self._size -= 1
        if queue:
            return queue[0]
        del self._lines[line]
        return None

    def __len__(self) -> int:
        """Entries in the queue, ready, taken or held."""
        return self._size

    @property
    def ready_count(self) -> int:
        return sum(len(q) for q in self._ready)
