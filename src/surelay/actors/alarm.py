"""`Alarm`: one thread that tells an actor when a deadline on the runtime's clock passes.

Actors wait on their mailbox, not on time; an actor that owns timed work (the retry heap,
the sweeps) owns an Alarm, sets it to its next deadline, and receives the alarm's message
when that deadline passes. The clock is the runtime's (injectable): the alarm re-reads it
at least every `poll` seconds, so a test that moves an injected clock forward is answered
within `poll` without any real waiting for the simulated time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from surelay.supervision import Actor
from surelay.supervision._mailbox import quiet_when_dropped

__all__ = ["Alarm", "AlarmOwner"]

logger = logging.getLogger("surelay.actors")


class Alarm:
    """Calls `fire()` once the clock reaches the deadline set last; owned by one actor,
    started in its `on_start` and stopped when it stops or crashes."""

    def __init__(
        self, fire: Callable[[], Any], clock: Callable[[], float], *, name: str, poll: float = 0.05
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._poll = poll
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def set(self, deadline: float | None) -> None:
        """Fire at `deadline` (clock seconds); None disarms."""
        with self._cond:
            if deadline != self._deadline:
                self._deadline = deadline
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - self._clock()
                if remaining > 0:
                    self._cond.wait(min(remaining, self._poll))
                    continue
                self._deadline = None
                try:
                    self._fire()
                except Exception:  # the owner is gone (stopped for good): nothing to tell
                    logger.debug("alarm target gone; alarm stops", exc_info=True)
                    return


class AlarmOwner(Actor):
    """An actor with one `Alarm` per incarnation: made by `start_alarm` (in `on_start`),
    stopped when the incarnation stops or crashes, so no alarm thread outlives it."""

    _alarm: Alarm | None = None

    def start_alarm(
        self,
        message: Any,
        clock: Callable[[], float],
        *,
        name: str,
        at: float | None,
        poll: float = 0.05,
    ) -> Alarm:
        """An alarm that tells this actor `message` when it fires; armed for `at`."""
        ref = self.ref if self.ref is not None else self.actor_ref
        quiet_when_dropped(type(message))  # a tick left at the final stop is no loss
        self._alarm = Alarm(lambda: ref.tell(message), clock, name=name, poll=poll)
        self._alarm.set(at)
        return self._alarm

    def on_stop(self) -> None:
        self._stop_alarm()

    def on_failure(self, *_exc_info: Any) -> None:
        self._stop_alarm()

    def _stop_alarm(self) -> None:
        if self._alarm is not None:
            self._alarm.stop()
            self._alarm = None
