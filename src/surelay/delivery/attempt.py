"""What an engine runs (`Call`: anything with the `Envelope` to deliver), what it hands
back for each call (`Attempt`, carrying the call it was given), and where it leaves them
(`ResultBox`) for the actor that asked."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import pykka

from surelay.envelope import Envelope
from surelay.policy.verdict import Failure, Kind

__all__ = [
    "CRASH",
    "FAILED",
    "HELD",
    "LOST",
    "OK",
    "SKIPPED",
    "THROTTLED",
    "TIMEOUT",
    "Attempt",
    "Call",
    "Kind",
    "ResultBox",
    "Run",
    "Sink",
]

logger = logging.getLogger("surelay.delivery")

OK: Final = "ok"
"""The transport returned."""
FAILED: Final = "failed"
"""The transport raised an `Exception` (`Attempt.failure` says which kind)."""
HELD: Final = "held"
"""The breaker refused the call, or its rate made it wait for its turn (reserved); nothing
was called (`Attempt.wait`: look again then)."""
THROTTLED: Final = "throttled"
"""Its rate made the call wait longer than a turn can be reserved ahead; nothing was
called (`Attempt.wait`: ask again then). Its message may wait on disk meanwhile."""
TIMEOUT: Final = "timeout"
"""The call outlived its ack timeout: a coroutine was cancelled, a thread abandoned."""
CRASH: Final = "crash"
"""The transport raised a `BaseException` that is not an `Exception`: the actor that
settles it crashes, as the call would have crashed it had it run there."""
LOST: Final = "lost"
"""The call's result is unknown (the event loop died under it, or its thread failed
around it): retried as a crash, without crashing the actor that settles it."""
SKIPPED: Final = "skipped"
"""Not called: an earlier message of its run was not delivered, and a key's messages go
in order."""


class Call(Protocol):
    """One message for an engine to deliver: its envelope. The actor's own record of it
    (a Sender's outbox entry, a ReplayWorker's replay) is what it submits, and comes
    back as `Attempt.call`; the engine reads nothing else of it."""

    @property
    def envelope(self) -> Envelope: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one call of one message ended."""

    call: Call
    kind: Kind
    error: BaseException | None = None
    failure: Failure | None = None
    """For FAILED and TIMEOUT: `transient`, `permanent` or `invalid` (classified once)."""
    wait: float = 0.0


Sink = Callable[[Attempt], None]
"""Where an engine leaves an attempt; called on the engine's thread."""

Run = tuple[Call, ...]
"""Messages of one key, called one after another in one slot: the run stops at the first
that is not delivered, and the rest come back SKIPPED. A run spares the actor a round
trip per message of a busy key; it is still one call in flight per key."""


class ResultBox:
    """The attempts an engine finished for one actor, kept until the actor has settled
    them.

    `put` (an engine's thread) tells the actor (through `notify`) only when the box goes
    from empty to not empty, so a burst of fast calls costs the actor one message, not
    one per call. The actor settles them with `settle`. The box is owned by the actor's
    state, so a crash loses none of them: after it, `blamed` gives the attempt whose
    settling crashed the actor, and the rest wait for the next incarnation.
    """

    def __init__(self) -> None:
        self._items: list[Attempt] = []
        self._lock = threading.Lock()
        self._settling: deque[Attempt] = deque()
        self._current: Attempt | None = None
        self.notify: Callable[[], None] | None = None

    def put(self, attempt: Attempt) -> None:
        with self._lock:
            self._items.append(attempt)
            first = len(self._items) == 1
        notify = self.notify
        if first and notify is not None:
            try:
                notify()
            except pykka.ActorDeadError:  # the runtime closed; the outbox still has it
                logger.debug(
                    "result of %s after its actor stopped", attempt.call.envelope.message_id
                )

    def take(self) -> list[Attempt]:
        """Every attempt put since the last look, oldest first."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def settle(self) -> Iterator[Attempt]:
        """The attempts to settle, oldest first (the actor's thread only). Each leaves
        the box once the loop body that got it has finished; if that body raises, the
        attempt stays, for `blamed`."""
        self._settling.extend(self.take())
        while self._settling:
            self._current = self._settling[0]
            yield self._current
            self._settling.popleft()
            self._current = None

    def blamed(self) -> Attempt | None:
        """After a crash: the attempt whose settling crashed the actor, out of the box
        (None if the crash came elsewhere)."""
        current, self._current = self._current, None
        if current is not None and self._settling and self._settling[0] is current:
            self._settling.popleft()
            return current
        return None

    def __len__(self) -> int:
        """Attempts not yet settled."""
        return len(self._items) + len(self._settling)
