"""The public exceptions. Every surelay error is a `SurelayError`."""

from __future__ import annotations

__all__ = [
    "InvalidMessage",
    "MailboxFull",
    "Overloaded",
    "PermanentError",
    "RetryTransaction",
    "RuntimeClosed",
    "SchemaMismatch",
    "StorageError",
    "StorageFull",
    "SurelayError",
    "TransientError",
    "UnknownTransport",
]


class SurelayError(Exception):
    """Base class of everything surelay raises on purpose."""


class InvalidMessage(SurelayError, ValueError):
    """A message was refused before acceptance; the text names the bad argument."""


class UnknownTransport(SurelayError, KeyError):
    """`send` named a transport the runtime was not given."""


class Overloaded(SurelayError):
    """Refused by pressure before acceptance; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MailboxFull(SurelayError):
    """A push recipient already holds `max_pending` undelivered messages: nothing was
    accepted (deliver or expire some first)."""


class RuntimeClosed(SurelayError):
    """The runtime is closed (or closing) and admits nothing."""


class TransientError(SurelayError):
    """Raised by a transport: try again later, by the retry policy.

    `retry_after` (seconds), when the receiver said how long to wait (HTTP
    `Retry-After`), asks for at least that delay before the next attempt.
    """

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SurelayError):
    """Raised by a transport: this message can never be delivered; dead-letter it."""


class StorageError(SurelayError):
    """The store cannot do what was asked; the text says why and what to do."""


class StorageFull(StorageError):
    """The store has no room for this write (its map is at `max_map_size` less the
    reserve kept for recording deliveries, or its disk is full); nothing was written.
    Accepted messages still drain: try again once the outbox has shrunk."""


class RetryTransaction(StorageError):
    """A host transaction hit a full map; the map was grown: run the transaction again."""


class SchemaMismatch(StorageError):
    """The data directory was written by an incompatible schema version."""
