"""The delivery window of one connection: which frames to send, when to send the unacked
ones again, and when to give up on the oldest. Pure: the connection owns the clock and
the socket, this holds the numbers.

At most `size` messages are unacked at once. With no progress (no ack moving the
cursor) for `ack_timeout * 2**(tries - 1)` seconds after the `tries`-th sending, every
unacked frame goes again; after `max_deliveries` sendings without progress the oldest
unacked message is poison: the connection fails it (a gap for the device, a dead letter
for the operator) and the stream goes on after it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Window"]


@dataclass(slots=True)
class Window:
    acked: int
    """Every message up to here is acked by this device (its cursor)."""
    size: int
    ack_timeout: float
    max_deliveries: int
    sent: int = 0
    """The last sequence number sent on this connection (at least `acked`)."""
    tries: int = 0
    """How many times the unacked frames went without progress."""
    since: float = 0.0
    """When they last went (or the cursor last moved)."""

    def __post_init__(self) -> None:
        self.sent = max(self.sent, self.acked)

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def room(self) -> int:
        """How many more messages may be sent now."""
        return max(0, self.size - self.unacked)

    def sent_up_to(self, seq: int, now: float) -> None:
        """Frames up to `seq` went (new ones: the window fills)."""
        if self.unacked == 0:
            self.tries, self.since = 1, now
        self.sent = max(self.sent, seq)

    def ack(self, upto: int, now: float) -> bool:
        """The device acked up to `upto` (clamped to what was sent); True when the
        cursor moved (progress: the resend clock starts again)."""
        upto = min(upto, self.sent)
        if upto <= self.acked:
            return False
        self.acked = upto
        self.tries, self.since = (1 if self.unacked else 0), now
        return True

    def resend_at(self) -> float | None:
        """When the unacked frames go again (None: nothing unacked)."""
        if self.unacked == 0:
            return None
        return self.since + self.ack_timeout * float(2 ** max(self.tries - 1, 0))

    def due(self, now: float) -> str | None:
        """At `now`: None (wait), `"resend"` (send every unacked frame again) or
        `"poison"` (fail the oldest unacked message, then go on after it)."""
        at = self.resend_at()
        if at is None or now < at:
            return None
        return "poison" if self.tries >= self.max_deliveries else "resend"

    def resent(self, now: float) -> None:
        self.tries, self.since = self.tries + 1, now

    def skip(self, seq: int, now: float) -> None:
        """Message `seq` (the oldest unacked) was failed: the device will not ack it,
        so the window treats it as done (the gap frame tells the device)."""
        self.acked = max(self.acked, seq)
        self.sent = max(self.sent, seq)
        self.tries, self.since = (1 if self.unacked else 0), now
