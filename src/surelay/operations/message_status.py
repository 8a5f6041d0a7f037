"""`rt.status`: what became of one message, from the data directory (any process on it,
after restarts), for `dedup_ttl` after it ended.

A message is in exactly one place at any time, each move one transaction: scheduled
(`surelay.storage.scheduled`), in the outbox (pending, or in flight in the process that
holds it), or ended (`surelay.storage.ended`: delivered, duplicate, or dead-lettered, the
dead letter then telling whether it was replayed since). One read transaction sees one
of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from surelay.storage.records import OutboxEntry
    from surelay.storage.store import Store

__all__ = ["MESSAGE_STATES", "MessageState", "MessageStatus", "message_status"]

MessageState = Literal[
    "scheduled", "pending", "in_flight", "delivered", "duplicate", "dead", "replayed"
]
MESSAGE_STATES: tuple[MessageState, ...] = get_args(MessageState)


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """One message's state and history so far.

    `state`: `scheduled` (sent with a delay, not due yet), `pending` (in the outbox,
    waiting for its first or next attempt), `in_flight` (a call of it is running in
    the asking process; another process sees its messages in flight as `pending`),
    `delivered`, `duplicate` (ended without a call: its idempotency key was delivered
    already), `dead` (dead-lettered, or archived since), `replayed` (dead-lettered,
    then delivered by a replay). `attempts`: transport calls made (for `delivered`, the
    one that succeeded included). `next_attempt_at`: when it is due next (epoch
    seconds; None once ended). `last_error`: why the last attempt failed (a dead
    letter's reason). `updated_at`: when its state last changed.
    """

    message_id: str
    transport: str
    key: str | None
    state: MessageState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    updated_at: float


def message_status(
    store: Store,
    message_id: str | None,
    idempotency_key: str | None,
    *,
    now: float,
    in_flight: Callable[[str], bool],
) -> MessageStatus | None:
    """The status of `message_id`, or of the latest message sent with `idempotency_key`
    (given instead); None if the directory knows of no such message (never sent, or
    ended longer than `dedup_ttl` ago)."""
    if (message_id is None) == (idempotency_key is None):
        raise ValueError("give a message_id or an idempotency_key (one of them)")
    for name, value in (("message_id", message_id), ("idempotency_key", idempotency_key)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    with store.read() as txn:
        if message_id is None:
            assert idempotency_key is not None
            found = store.ended.message_of(txn, idempotency_key)
            message_id = found if found is not None else idempotency_key  # (its default)
        entry = store.scheduled.get(txn, message_id)
        if entry is not None:
            return _waiting(entry, "scheduled")
        entry = store.outbox.get(txn, message_id)
        if entry is not None:
            return _waiting(entry, "in_flight" if in_flight(message_id) else "pending")
        ended = store.ended.get(txn, message_id, now=now)
        if ended is None:
            return None
        state: MessageState = ended.state
        updated_at = ended.ended_at
        if ended.dead_letter_id is not None:
            record = store.dead_letters.get(txn, ended.dead_letter_id)
            if record is not None and record.status == "replayed":
                state = "replayed"  # (by a replay that found it delivered already)
    return MessageStatus(
        message_id=message_id,
        transport=ended.transport,
        key=ended.key,
        state=state,
        attempts=ended.attempts,
        next_attempt_at=None,
        last_error=ended.last_error,
        updated_at=updated_at,
    )


def _waiting(entry: OutboxEntry, state: MessageState) -> MessageStatus:
    envelope = entry.envelope
    return MessageStatus(
        message_id=envelope.message_id,
        transport=envelope.transport,
        key=envelope.key,
        state=state,
        attempts=envelope.attempt - 1,
        next_attempt_at=entry.due_at,
        last_error=entry.last_error,
        updated_at=entry.failed_at if entry.failed_at is not None else envelope.created_at,
    )
