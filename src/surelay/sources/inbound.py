"""What a source hands the runtime: `Inbound` messages, and the `Source` protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Inbound", "Source"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message taken from a source, not yet acknowledged to it.

    `message_id` identifies it at the source (redeliveries carry the same one: the
    inbox key); `headers` are its own (a `traceparent` among them continues the
    producer's trace); `origin` says where it came from, kept with the message (a dead
    letter shows it). `ack` tells the source it is taken for good; `nak` asks for it
    again later (the runtime could not take it now)."""

    message_id: str
    payload: bytes
    headers: Mapping[str, str]
    origin: Mapping[str, str]
    ack: Callable[[], Awaitable[None]]
    nak: Callable[[], Awaitable[None]]


class Source(Protocol):
    """A place inbound messages come from (see `surelay.sources`)."""

    description: str
    """For logs and errors: what is consumed, from where."""

    async def open(self) -> None: ...

    async def fetch(self, count: int, timeout: float) -> list[Inbound]:
        """Up to `count` messages, waiting at most about `timeout` seconds for the first
        (none: an empty list)."""
        ...

    async def close(self) -> None: ...
