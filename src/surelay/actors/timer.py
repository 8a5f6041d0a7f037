"""The Timer: moves scheduled messages into the outbox when their time comes.

Messages sent with a `delay` or `not_before` wait on disk in the `scheduled` table
(`surelay.storage.scheduled`), never in memory. The timer knows one thing: when this
slot's earliest one is due (read from the table, so it needs no state a crash could
lose). Its alarm rings `AHEAD` of then; it moves what is due by then into the outbox (each
held by its sender until its own time), in chunks of `CHUNK`,
each one transaction (so each message fires once), and hands the moved messages to the
senders like newly accepted ones. A send or an adoption that schedules an earlier
message tells it (`Check`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from surelay.actors.alarm import AlarmOwner
from surelay.actors.window import deliver
from surelay.supervision import CrashReport

if TYPE_CHECKING:
    from surelay.peers import Peers
    from surelay.receipts import Tracker
    from surelay.storage.environment import Txn
    from surelay.storage.records import OutboxEntry
    from surelay.storage.store import Store

__all__ = ["AHEAD", "CHUNK", "WAITING", "Check", "Timer", "TimerEndpoint"]

logger = logging.getLogger("surelay.actors")

CHUNK = 1000
"""Scheduled messages moved per transaction (then the timer reads its mailbox again)."""

NOT_YET = 0.05
"""Seconds before a look that came while the tree was still starting is made again."""

WAITING = "scheduled"
"""The tracker hold kept while this slot has scheduled messages: `flush()` waits for
them too (they are accepted, and waiting for delivery)."""

AHEAD = 0.25
"""Seconds before their due time scheduled messages move into the outbox: their senders
hold them until that time (the retry scheduler's alarm), so the move's commit is not on
the way between a due time and the call. They are in memory for this long at most."""

RETRY_AFTER_FAILURE = 1.0
"""Seconds before a move that failed (the store full, say) is tried again."""


@dataclass(frozen=True, slots=True)
class Check:
    """A message due at `at` (epoch seconds on the runtime's clock) may have been
    scheduled, or adopted (None: look at the table)."""

    at: float | None = None


@dataclass(frozen=True, slots=True)
class TimerEndpoint:
    """What the Timer works with: the store whose scheduled messages it moves, the
    runtime's clock, how a moved message finds its partition now, the tracker (a moved
    message is pending again) and the senders it hands them to."""

    store: Store
    clock: Callable[[], float]
    route: Callable[[OutboxEntry], int]
    tracker: Tracker
    peers: Peers


class Timer(AlarmOwner):
    def __init__(self, endpoint: TimerEndpoint) -> None:
        super().__init__()
        self._at = endpoint
        self._armed: float | None = None

    def on_start(self) -> None:
        self.start_alarm(Check(), self._at.clock, name="surelay-timer", at=None)
        self._arm_next()

    def on_restart(self, crash: CrashReport) -> None:
        logger.warning("the timer restarted after %r; it reads its table again", crash.error)

    def on_receive(self, message: Any) -> None:
        if not isinstance(message, Check):
            return
        at = None if message.at is None else message.at - AHEAD
        if at is not None and self._armed is not None and at >= self._armed:
            return  # rings by then already
        if at is not None and at > self._at.clock():
            self._arm(at)
            return
        self._fire()

    def _fire(self) -> None:
        """Move one chunk of what is due; queue another look if more may be due, else
        arm the alarm for the next due time."""
        at = self._at
        store = at.store
        if store.env.closed:
            return
        now = at.clock()
        if not at.peers.attached:  # the tree is still starting: nobody to hand them to
            self._arm(now + NOT_YET)
            return
        until = now + AHEAD
        tracker = at.tracker
        taken: list[str] = []

        def op(txn: Txn) -> list[OutboxEntry]:
            moved = store.scheduled.fire(txn, until, limit=CHUNK, route=at.route, now=now)
            # pending before the commit: a sender scanning its outbox may take them in
            # (and end them) as soon as it is visible
            taken.extend(e.envelope.message_id for e in moved)
            tracker.add(taken, receipts=False)
            return moved

        def handed(written: Future[list[OutboxEntry]]) -> None:
            # on the writer's thread, in commit order: before any later send of their
            # keys (accepted once their keys' holds went with this commit) is handed over
            if written.exception() is not None:
                tracker.forget(taken)
                return
            with contextlib.suppress(pykka.ActorDeadError):  # closing: they wait on disk
                deliver(at.peers.senders, written.result())

        try:
            moved = store.write(op, then=handed).result()
        except Exception as error:  # (the store closing, a damaged row): said, retried
            logger.error(
                "could not move due scheduled messages into the outbox (%s); they stay "
                "scheduled and are tried again in %.0fs",
                error,
                RETRY_AFTER_FAILURE,
            )
            self._arm(now + RETRY_AFTER_FAILURE)
            return
        if len(moved) >= CHUNK and self.ref is not None:
            self._armed = None
            self.ref.tell(Check())  # more may be due: behind newer mail
            return
        self._arm_next()

    def _arm_next(self) -> None:
        """Arm for the next due time; with none left, `flush()` no longer waits for any
        (unless a message was scheduled since this look began: see `Tracker.release`)."""
        tracker = self._at.tracker
        generation = tracker.generation(WAITING)
        following = self._next_due()
        if following is None:
            tracker.release(WAITING, if_generation=generation)
            self._arm(None)
        else:
            tracker.hold(WAITING)
            self._arm(following - AHEAD)

    def _next_due(self) -> float | None:
        store = self._at.store
        if store.env.closed:
            return None
        with store.read() as txn:
            return store.scheduled.next_due(txn)

    def _arm(self, at: float | None) -> None:
        self._armed = at
        if self._alarm is not None:
            self._alarm.set(at)
