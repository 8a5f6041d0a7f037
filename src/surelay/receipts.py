"""What `send` returns (`Receipt`), how a message ended (`Outcome`), and the `Tracker`
that knows which accepted messages have not ended yet (what `flush` waits for)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable
from typing import Any

__all__ = ["Outcome", "OverLimit", "Receipt", "Tracker"]


class OverLimit(Exception):  # a signal between modules, never shown to users
    """`Tracker.add` would pass its limit; `pending` messages are tracked now."""

    def __init__(self, pending: int) -> None:
        super().__init__(pending)
        self.pending = pending


class Outcome(enum.Enum):
    """How an accepted message ended."""

    DELIVERED = "delivered"
    """The transport returned."""
    DEAD_LETTERED = "dead_lettered"
    """Stored as a dead letter (see `rt.dead_letters`)."""
    DUPLICATE = "duplicate"
    """Its idempotency key was delivered within `dedup_ttl`; the transport was not called."""


class Receipt:
    """The handle `send` returns for one accepted message."""

    __slots__ = ("__weakref__", "_callbacks", "_outcome", "_tracker", "message_id")

    def __init__(self, message_id: str, tracker: Tracker) -> None:
        self.message_id = message_id
        self._outcome: Outcome | None = None
        self._tracker = tracker
        self._callbacks: list[Callable[[Outcome], object]] | None = None

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Block until the message ends and return how, or None after `timeout` seconds.

        An outcome is final: DELIVERED and DUPLICATE once the delivery is recorded
        durably, DEAD_LETTERED once the dead letter is. A message still pending when the
        runtime closes stays in the outbox; its receipt then times out here.

        `timeout`: seconds >= 0 (`inf` waits as None does); anything else (NaN, a
        negative number, not a number) is a `ValueError`.
        """
        timeout = _checked_timeout(timeout)
        if self._outcome is not None:
            return self._outcome
        return self._tracker.wait(self, timeout)

    def __await__(self) -> Generator[Any, None, Outcome]:
        """`await receipt`: the outcome, without blocking the event loop (bound it with
        `asyncio.timeout`). Cancelling the wait leaves the message accepted."""
        outcome = self._outcome
        if outcome is not None:
            return outcome
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def resolve(outcome: Outcome) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future, outcome)

        forget = self._tracker.when_done(self, resolve)
        try:
            return (yield from future.__await__())
        finally:
            forget()  # a waiter that gave up leaves nothing behind

    @property
    def outcome(self) -> Outcome | None:
        """The outcome if the message has ended, else None (never blocks)."""
        return self._outcome

    def __repr__(self) -> str:
        state = self._outcome.name if self._outcome else "pending"
        return f"Receipt({self.message_id!r}, {state})"


class Tracker:
    """Accepted messages that have not ended, with their receipts.

    Thread-safe. A message is added before it is dispatched and completed once its
    outcome is durable. `pending` counts the messages held in memory: a message whose
    partition's window is full waits on disk only (`spill`), its receipt kept weakly
    (so a host that drops its receipts keeps nothing of a backlog in memory), and the
    partition's hold keeps the tracker from being empty until it is streamed back in.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, Receipt | None] = {}
        self._spilled: weakref.WeakValueDictionary[str, Receipt] = weakref.WeakValueDictionary()
        """Receipts of messages waiting on disk only, while their host keeps them."""
        self._holds: set[str] = set()
        self._generations: dict[str, int] = {}
        """Work that is not a tracked message but keeps the tracker from being empty:
        a partition whose backlog is still on disk, not yet streamed into memory."""
        self._empty_waiters: list[Callable[[], object]] = []
        self._listeners: tuple[Callable[[list[str]], object], ...] = ()
        """Told the ids of the messages each `complete` ends (a relay deletes their rows)."""

    def add(
        self, message_ids: Iterable[str], *, receipts: bool = True, limit: int | None = None
    ) -> list[Receipt]:
        """Track messages; returns their receipts (none for `receipts=False`, used for
        messages recovered from the outbox, whose senders are gone). With `limit`, all or
        none: `OverLimit` if tracking them would make more than `limit` pending."""
        ids = list(message_ids)
        made = [Receipt(m, self) for m in ids] if receipts else []
        with self._cond:
            if limit is not None and len(self._pending) + len(made) > limit:
                raise OverLimit(len(self._pending))
            if receipts:
                self._pending.update(zip(ids, made, strict=True))
            else:
                spilled = self._spilled
                for message_id in ids:  # back from disk: its receipt, if still held
                    if message_id not in self._pending:
                        self._pending[message_id] = spilled.pop(message_id, None)
        return made

    def spill(self, message_ids: Iterable[str]) -> None:
        """These messages wait on disk only, no longer in memory: keep their receipts
        weakly (a partition hold keeps the tracker from being empty meanwhile)."""
        with self._cond:
            for message_id in message_ids:
                if message_id in self._pending:
                    receipt = self._pending.pop(message_id)
                    if receipt is not None:
                        self._spilled[message_id] = receipt

    def still_pending(self, message_ids: Iterable[str]) -> list[str]:
        """Those of `message_ids` that are still held in memory, not ended."""
        with self._cond:
            pending = self._pending
            return [m for m in message_ids if m in pending]

    def complete(self, message_ids: Iterable[str], outcome: Outcome) -> int:
        """Record how messages ended; returns how many were still pending (a message
        ends once: a second outcome for it is ignored)."""
        ended = 0
        called: list[Callable[[Outcome], object]] = []
        listeners = self._listeners
        ids: list[str] = []
        with self._cond:
            for message_id in message_ids:
                if message_id in self._pending:
                    receipt = self._pending.pop(message_id)
                    ended += 1
                    if listeners:
                        ids.append(message_id)
                    if receipt is not None:
                        receipt._outcome = outcome
                        if receipt._callbacks:
                            called += receipt._callbacks
                            receipt._callbacks = None
            empty = self._take_empty_waiters() if ended else []
            if ended:
                self._cond.notify_all()
        for callback in called:
            callback(outcome)
        for listener in listeners if ids else ():
            listener(ids)
        for waiter in empty:
            waiter()
        return ended

    def listen(self, listener: Callable[[list[str]], object]) -> Callable[[], None]:
        """Tell `listener` the ids of the messages that end from now on (on the thread
        that ends them; it must be quick and must not raise); returns what stops it."""
        with self._cond:
            self._listeners = (*self._listeners, listener)

        def stop() -> None:
            with self._cond:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return stop

    def forget(self, message_ids: Iterable[str]) -> None:
        """Stop tracking messages that were never accepted (a failed outbox write), or
        relayed messages whose outcome could not be recorded (their rows are relayed
        again); their listeners are not told (nothing ended)."""
        with self._cond:
            for message_id in message_ids:
                self._pending.pop(message_id, None)
            self._cond.notify_all()
            empty = self._take_empty_waiters()
        for waiter in empty:
            waiter()

    def when_done(
        self, receipt: Receipt, callback: Callable[[Outcome], object]
    ) -> Callable[[], None]:
        """Call `callback(outcome)` once `receipt`'s message has ended (at once if it
        has), on the thread that ends it; returns what takes the callback back (for a
        waiter that gives up, so none piles up)."""
        with self._cond:
            outcome = receipt._outcome
            if outcome is None:
                if receipt._callbacks is None:
                    receipt._callbacks = []
                receipt._callbacks.append(callback)
                return lambda: self._drop(receipt._callbacks, callback)
        callback(outcome)
        return _nothing

    def hold(self, name: str) -> None:
        """Keep the tracker from being empty until `release(name)` (idempotent). Each
        hold moves `name`'s generation on (see `release`)."""
        with self._cond:
            self._holds.add(name)
            self._generations[name] = self._generations.get(name, 0) + 1

    def generation(self, name: str) -> int:
        """How many times `name` has been held (a release by a caller that read the
        state it held for before a later hold must not undo that hold)."""
        with self._cond:
            return self._generations.get(name, 0)

    def release(self, name: str, *, if_generation: int | None = None) -> None:
        """Let `name`'s hold go (idempotent); wakes the empty-waiters if that empties it.
        With `if_generation`, only if nobody held it since that generation was read."""
        with self._cond:
            if name not in self._holds:
                return
            if if_generation is not None and self._generations.get(name, 0) != if_generation:
                return
            self._holds.discard(name)
            empty = self._take_empty_waiters()
            self._cond.notify_all()
        for waiter in empty:
            waiter()

    def when_empty(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call `callback()` once nothing is pending (at once if nothing is); returns
        what takes the callback back."""
        with self._cond:
            if self._pending or self._holds:
                self._empty_waiters.append(callback)
                return lambda: self._drop(self._empty_waiters, callback)
        callback()
        return _nothing

    def _drop(self, callbacks: list[Any] | None, callback: object) -> None:
        with self._cond:
            if callbacks is not None and callback in callbacks:
                callbacks.remove(callback)

    def _take_empty_waiters(self) -> list[Callable[[], object]]:
        """(lock held) The empty-waiters to call, if nothing is pending now."""
        if self._pending or self._holds:
            return []
        waiters, self._empty_waiters = self._empty_waiters, []
        return waiters

    def is_pending(self, message_id: str) -> bool:
        return message_id in self._pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    def wait(self, receipt: Receipt, timeout: float | None) -> Outcome | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while receipt._outcome is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return receipt._outcome

    def wait_empty(self, timeout: float | None) -> bool:
        """Block until nothing is pending; False after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._holds:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_change(self, timeout: float) -> None:
        """Block until some message ends, at most `timeout` seconds."""
        with self._cond:
            self._cond.wait(timeout)


def _checked_timeout(timeout: object) -> float | None:
    """`timeout` as `wait` uses it (None: no limit), or `ValueError` naming it."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():  # a waiter cancelled meanwhile
        future.set_result(outcome)


def _nothing() -> None:
    pass
