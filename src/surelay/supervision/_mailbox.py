"""The mailbox of a supervised child: it outlives every incarnation of the actor.

pykka gives each actor its own inbox and, when the actor stops, drains it and fails every
pending ask. A supervised child instead owns a `Mailbox` for as long as its spec exists:
each incarnation takes messages from it while it holds the *lease* (its generation
number), and a crash leaves whatever is queued for the next incarnation.

Guarantees:
- `put` and `close` are atomic with respect to each other (one lock), so a message is
  either accepted before the close (and then failed or counted by `close`) or refused
  with `ActorDeadError`. pykka's check-then-put race cannot lose an ask here.
- Messages are taken strictly in the order they were put.
- Revoking the lease wakes the holder at once; it finishes the message it is handling
  and takes no other.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from typing import Any

from pykka import ActorDeadError
from pykka._envelope import Envelope

__all__ = ["Mailbox", "quiet_when_dropped"]

logger = logging.getLogger("surelay.supervision")

_QUIET: set[type] = set()
"""Kinds of message that are nudges (a timer's tick): one queued when its actor stops for
good is dropped without a warning (the actor's work went with it)."""


def quiet_when_dropped(kind: type) -> None:
    """Drop messages of `kind` queued at a final stop without a warning."""
    _QUIET.add(kind)


class Mailbox:
    """FIFO of pykka envelopes, leased to one incarnation at a time."""

    __slots__ = ("_closed", "_cond", "_items", "_lock", "_name", "_owner")

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._items: deque[Envelope[Any]] = deque()
        self._closed = False
        self._owner = 0  # generation allowed to take messages; 0 = nobody

    @property
    def closed(self) -> bool:
        """True once the child is stopped for good (until `reopen`)."""
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, envelope: Envelope[Any]) -> None:
        """Queue a message; raises `ActorDeadError` if the mailbox is closed."""
        with self._lock:
            if self._closed:
                raise ActorDeadError(f"{self._name} is stopped")
            self._items.append(envelope)
            self._cond.notify()

    def get(self, generation: int) -> Envelope[Any] | None:
        """Block until a message is available to `generation`, or return None once its
        lease is revoked (the incarnation must then stop)."""
        with self._lock:
            while True:
                if self._owner != generation:
                    return None
                if self._items:
                    return self._items.popleft()
                self._cond.wait()

    def lease(self, generation: int) -> None:
        """Hand the mailbox to a new incarnation."""
        with self._lock:
            self._owner = generation
            self._cond.notify_all()

    def revoke(self) -> None:
        """Take the lease away from whoever holds it; queued messages stay."""
        with self._lock:
            self._owner = 0
            self._cond.notify_all()

    def close(self) -> int:
        """Stop for good: refuse new messages, fail queued asks with `ActorDeadError`,
        drop queued tells. Returns how many tells were dropped. Idempotent."""
        with self._lock:
            self._closed = True
            self._owner = 0
            pending = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        dropped = 0
        for envelope in pending:
            if envelope.reply_to is None:
                dropped += type(envelope.message) not in _QUIET
                continue
            error = ActorDeadError(f"{self._name} stopped before handling the message")
            with contextlib.suppress(queue.Full):  # a future is answered once
                envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))
        if dropped:
            logger.warning("%s stopped for good; %d queued tell(s) dropped", self._name, dropped)
        return dropped

    def reopen(self) -> None:
        """Accept messages again (a stopped child was restarted by an operator)."""
        with self._lock:
            self._closed = False


class InboxView:
    """The pykka `ActorInbox` protocol over a `Mailbox`, for one incarnation.

    pykka's own `ActorRef` (an incarnation's `actor_ref`) puts through this view, so
    it lands in the shared mailbox too.
    """

    __slots__ = ("_generation", "_mailbox")

    def __init__(self, mailbox: Mailbox, generation: int) -> None:
        self._mailbox = mailbox
        self._generation = generation

    def put(self, envelope: Envelope[Any], /) -> None:
        self._mailbox.put(envelope)

    def get(self) -> Envelope[Any]:  # pragma: no cover - surelay's loop calls Mailbox.get
        envelope = self._mailbox.get(self._generation)
        if envelope is None:
            raise ActorDeadError("mailbox lease revoked")
        return envelope

    def empty(self) -> bool:
        return len(self._mailbox) == 0
