"""Forwarding a dead letter: the message that carries a copy of it to another transport
(a consumer's dead-letter exchange), written in the transaction that stores the dead
letter, so the copy is delivered at least once with surelay's retries, like any message.

The copy keeps the dead letter's payload, key (its key's order), priority, type and
headers (a consumed message's origin among them), with the dead letter's id, reason and
attempts added; its idempotency key is the dead letter's own, so a re-delivered copy is
recognisable downstream.
"""

from __future__ import annotations

from surelay.envelope import Envelope, check_headers
from surelay.errors import InvalidMessage
from surelay.storage.records import DeadLetter

__all__ = [
    "ATTEMPTS",
    "DEAD_LETTER_ID",
    "FAILED_AT",
    "REASON",
    "REASON_CLASS",
    "TRANSPORT",
    "forward_name",
    "forwarded",
]

DEAD_LETTER_ID = "Surelay-Dead-Letter-Id"
REASON_CLASS = "Surelay-Dead-Letter-Reason-Class"
REASON = "Surelay-Dead-Letter-Reason"
ATTEMPTS = "Surelay-Dead-Letter-Attempts"
FAILED_AT = "Surelay-Dead-Letter-Failed-At"
TRANSPORT = "Surelay-Dead-Letter-Transport"
MAX_REASON_CHARS = 1024
"""Longest reason a copy carries (a header value; the dead letter keeps all of it)."""


def forward_name(consumer: str) -> str:
    """The transport that carries the dead letters of consumer `consumer` onwards."""
    return f"{consumer}.dead-letters"


def forwarded(record: DeadLetter, transport: str, message_id: str, now: float) -> Envelope:
    """The message that forwards `record` to `transport` (pure)."""
    reason = " ".join(record.reason.split())[:MAX_REASON_CHARS]  # one line, bounded
    headers = {
        **record.headers,
        DEAD_LETTER_ID: record.id,
        REASON_CLASS: record.reason_class,
        REASON: reason,
        ATTEMPTS: str(record.attempts),
        FAILED_AT: repr(record.failed_at),
        TRANSPORT: record.transport,
    }
    try:
        checked = check_headers(headers)
    except InvalidMessage:  # some of the original's headers were refused: not sent on
        kept = {k: v for k, v in headers.items() if _acceptable(k, v)}
        try:
            checked = check_headers(kept)
        except InvalidMessage:  # too many or too large together: surelay's own only
            checked = check_headers({k: v for k, v in kept.items() if k.startswith("Surelay-")})
    return Envelope(
        message_id=message_id,
        transport=transport,
        payload=record.payload,
        key=record.key,
        idempotency_key=record.id,
        priority=record.priority,
        headers=checked,
        created_at=now,
        type=record.type,
    )


def _acceptable(name: str, value: str) -> bool:
    try:
        check_headers({name: value})
    except InvalidMessage:
        return False
    return True
