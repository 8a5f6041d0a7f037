"""What a transport receives: the `Envelope`, and message `Priority`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Envelope", "Priority"]


class Priority(enum.Enum):
    """Delivery priority within a partition; `HIGH` is shed last under pressure."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for HIGH, 1 for NORMAL, 2 for LOW: sort ascending to serve HIGH first."""
        return _RANKS[self]


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as the transport sees it.

    `attempt` is 1-based: the transport's n-th try at this message. `idempotency_key`
    defaults to `message_id`, so the receiving side can deduplicate too. `created_at` is
    the acceptance time in epoch seconds.
    """

    message_id: str
    transport: str
    payload: bytes
    key: str | None = None
    idempotency_key: str = ""
    priority: Priority = Priority.NORMAL
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    attempt: int = 1
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            object.__setattr__(self, "idempotency_key", self.message_id)
        if not isinstance(self.headers, MappingProxyType):
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))
