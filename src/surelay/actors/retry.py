"""The RetryScheduler: hands messages held for a retry back to their senders when due.

The timer heap itself is a `RetryBacklog` the runtime owns (so a crash loses no entry);
this actor is the thin shell that owns the alarm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import Alarm
from surelay.backlog import Due, Schedule
from surelay.supervision import Actor, CrashReport

if TYPE_CHECKING:
    from surelay.backlog import RetryBacklog
    from surelay.peers import Peers

__all__ = ["RetryEndpoint", "RetryScheduler"]


@dataclass(frozen=True, slots=True)
class RetryEndpoint:
    """What the RetryScheduler works with: the heap it owns the alarm of (the runtime
    keeps it, so a crash loses no entry), the clock, and the senders it hands back to."""

    backlog: RetryBacklog
    clock: Callable[[], float]
    peers: Peers


@dataclass(frozen=True, slots=True)
class _Tick:
    """The alarm rang: hand back whatever is due."""


class RetryScheduler(Actor):
    """Owns the retry timer heap: senders `Schedule` held messages; when one is due it
    goes back to its partition's sender as `Due`. Due times are also persisted in the
    outbox (by the sender), so retries survive a restart of the whole process."""

    def __init__(self, endpoint: RetryEndpoint) -> None:
        super().__init__()
        self._at = endpoint
        self._alarm: Alarm | None = None

    def on_start(self) -> None:
        ref = self.ref if self.ref is not None else self.actor_ref
        self._alarm = Alarm(lambda: ref.tell(_Tick()), self._at.clock, name="surelay-retry")
        self._alarm.set(self._at.backlog.next_at())

    def on_stop(self) -> None:
        self._stop_alarm()

    def on_failure(self, *_exc_info: Any) -> None:
        self._stop_alarm()

    def on_restart(self, crash: CrashReport) -> None:
        if isinstance(crash.message, Schedule):  # the one message the crash took
            self._at.backlog.push(crash.message)
            self._rearm()

    def on_receive(self, message: Any) -> None:
        at = self._at
        if isinstance(message, Schedule):
            at.backlog.push(message)
        elif isinstance(message, _Tick):
            for item in at.backlog.pop_due(at.clock()):
                at.peers.senders[item.partition].tell(Due(item.entry))
        self._rearm()

    def _rearm(self) -> None:
        if self._alarm is not None:
            self._alarm.set(self._at.backlog.next_at())

    def _stop_alarm(self) -> None:
        if self._alarm is not None:
            self._alarm.stop()
            self._alarm = None
