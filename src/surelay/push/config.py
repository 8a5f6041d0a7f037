"""`PushConfig`: the settings of push to clients, validated on construction.

Every bad value raises `ValueError` naming the field, as `RuntimeConfig` does.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

from surelay.config import Rate

__all__ = ["MIN_SECRET_BYTES", "PushConfig"]

MIN_SECRET_BYTES = 16
"""A shorter HMAC key could be guessed; 32 random bytes is what we recommend."""


def _seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"PushConfig.{name} must be finite seconds > 0, got {value!r}")


def _count(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"PushConfig.{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class PushConfig:
    """Push to clients. `secret` signs the connection tokens (`gw.issue_token`);
    `retention` is how long a message waits for a device's ack before it fails;
    `max_pending` bounds a recipient's unacked messages (`MailboxFull` past it);
    `rate_per_recipient` bounds what a recipient is sent (`Rate(100, 60.0)`: 100 a
    minute; `Overloaded` past it); `window` bounds the unacked frames on one
    connection; a frame unacked for `ack_timeout` is sent again, at most
    `max_deliveries` times without progress; `heartbeat` is the ping interval."""

    secret: str | bytes
    _: KW_ONLY
    retention: float = 7 * 86400
    max_pending: int = 1000
    rate_per_recipient: Rate | None = None
    window: int = 64
    ack_timeout: float = 10.0
    max_deliveries: int = 10
    heartbeat: float = 25.0

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str | bytes):
            raise ValueError(
                f"PushConfig.secret must be str or bytes, got {type(self.secret).__name__}"
            )
        if len(self.key) < MIN_SECRET_BYTES:
            raise ValueError(
                f"PushConfig.secret must be at least {MIN_SECRET_BYTES} bytes "
                f"(32 random bytes recommended), got {len(self.key)}"
            )
        _seconds("retention", self.retention)
        _count("max_pending", self.max_pending)
        if self.rate_per_recipient is not None:
            if not isinstance(self.rate_per_recipient, Rate):
                raise ValueError(
                    "PushConfig.rate_per_recipient must be a Rate (Rate(100, 60.0): 100 a "
                    f"minute) or None, got {self.rate_per_recipient!r}"
                )
            if self.rate_per_recipient.by is not None:
                raise ValueError(
                    "PushConfig.rate_per_recipient is per recipient already: leave its `by` unset"
                )
        _count("window", self.window)
        _seconds("ack_timeout", self.ack_timeout)
        _count("max_deliveries", self.max_deliveries)
        _seconds("heartbeat", self.heartbeat)

    @property
    def key(self) -> bytes:
        """The HMAC key: `secret` as bytes (UTF-8 when given as str)."""
        return self.secret.encode() if isinstance(self.secret, str) else self.secret

    def __repr__(self) -> str:  # the secret never reaches a log
        return (
            f"PushConfig(secret=<{len(self.key)} bytes>, retention={self.retention!r}, "
            f"max_pending={self.max_pending!r}, rate_per_recipient={self.rate_per_recipient!r}, "
            f"window={self.window!r}, ack_timeout={self.ack_timeout!r}, "
            f"max_deliveries={self.max_deliveries!r}, heartbeat={self.heartbeat!r})"
        )
