"""The records surelay persists, as frozen dataclasses (encoded by `codec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from surelay.envelope import Envelope, Priority

__all__ = [
    "DEAD_LETTER_STATUSES",
    "REASON_CLASSES",
    "REQUEST_STATUSES",
    "DeadLetter",
    "DeadLetterStatus",
    "DedupRecord",
    "OutboxEntry",
    "QuarantinedRecord",
    "ReasonClass",
    "ReplayRequest",
    "RequestStatus",
    "outbox_entry",
]

DeadLetterStatus = Literal["dead", "replaying", "replayed", "archived"]
ReasonClass = Literal["exhausted", "permanent", "invalid", "expired", "crash"]

RequestStatus = Literal["pending", "running", "done", "failed", "cancelled"]
DEAD_LETTER_STATUSES: tuple[DeadLetterStatus, ...] = get_args(DeadLetterStatus)
REQUEST_STATUSES: tuple[RequestStatus, ...] = get_args(RequestStatus)
REASON_CLASSES: tuple[ReasonClass, ...] = get_args(ReasonClass)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An accepted message not yet delivered or dead-lettered.

    `seq` orders acceptance; `envelope.attempt` is the attempt to make next, at `due_at`
    (epoch seconds); `partition` is the sender partition it was accepted for;
    `last_error` why the attempt before failed, at `failed_at` (None before a retry).
    """

    seq: int
    envelope: Envelope
    due_at: float
    partition: int
    last_error: str | None = None
    failed_at: float | None = None


_set_seq, _set_envelope, _set_due_at, _set_partition, _set_last_error, _set_failed_at = (
    OutboxEntry.__dict__[name].__set__ for name in OutboxEntry.__match_args__
)


def outbox_entry(seq: int, envelope: Envelope, due_at: float, partition: int) -> OutboxEntry:
    """`OutboxEntry(...)` at half the cost: each slot set directly, not through the frozen
    class's `object.__setattr__`. One is made for every accepted message."""
    entry = object.__new__(OutboxEntry)
    _set_seq(entry, seq)
    _set_envelope(entry, envelope)
    _set_due_at(entry, due_at)
    _set_partition(entry, partition)
    _set_last_error(entry, None)
    _set_failed_at(entry, None)
    return entry


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be delivered, with why and what happened to it since.

    `status`: `dead` (waiting for an operator), `replaying` (leased by a replay worker
    until `lease_until`), `replayed`, or `archived`. `type`: the message type given to
    `send`, if any.
    """

    id: str
    message_id: str
    key: str | None
    transport: str
    payload: bytes
    headers: Mapping[str, str]
    idempotency_key: str
    priority: Priority
    trace_id: str | None
    reason_class: ReasonClass
    reason: str
    error_type: str | None
    attempts: int
    first_attempt_at: float
    failed_at: float
    status: DeadLetterStatus = "dead"
    replay_count: int = 0
    lease_until: float | None = None
    type: str | None = None

    def __post_init__(self) -> None:
        if self.reason_class not in REASON_CLASSES:
            raise ValueError(
                f"reason_class must be one of {REASON_CLASSES}, got {self.reason_class!r}"
            )
        if self.status not in DEAD_LETTER_STATUSES:
            raise ValueError(f"status must be one of {DEAD_LETTER_STATUSES}, got {self.status!r}")
        if not isinstance(self.headers, MappingProxyType):
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


@dataclass(frozen=True, slots=True)
class DedupRecord:
    """An idempotency key that was delivered; it suppresses duplicates until `expires_at`."""

    key: str
    delivered_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A replay asked for by an operator (often from another process, via the CLI).

    Either `ids` or the filters select the records. `status`: `pending` until a runtime
    on the directory takes it, then `running` (by the runtime holding slot `owner`), then
    `done` (`error` saying why records were refused, if a transport was not offered) or
    `failed` with `error`; a pending one may end `cancelled` instead. `progress` holds
    the report's counters as they grow.
    """

    id: str
    created_at: float
    ids: tuple[str, ...] | None = None
    filters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    rate: float | None = None
    status: RequestStatus = "pending"
    progress: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    updated_at: float = 0.0
    error: str | None = None
    owner: int | None = None


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """A stored record that could not be decoded, kept with the reason instead of lost."""

    table: str
    key: bytes
    raw: bytes
    error: str
    at: float


def as_dict(record: Any) -> dict[str, Any]:
    """A record's fields as a plain dict (for JSON output)."""
    return {name: getattr(record, name) for name in record.__dataclass_fields__}
