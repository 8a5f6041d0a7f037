"""Outbox rows: a send's arguments checked into a row, and a row back into an envelope.

Pure functions. A row is what `SqlOutbox.send` inserts on the host's connection; the
relay reads it back. Checks are `rt.send`'s (same errors, same words), except that the
transport's name is checked against the relaying runtime's transports when relayed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from surelay.envelope import (
    SEND_ARGS,
    Envelope,
    Priority,
    check_headers,
    check_send,
    checked_envelope,
)
from surelay.errors import InvalidMessage
from surelay.routing import partition_for

__all__ = [
    "BUCKETS",
    "PRIORITY_OF_RANK",
    "SEND_ARGS",
    "Row",
    "check_send",
    "envelope_of",
    "headers_of",
]


PRIORITY_OF_RANK = {p.rank: p for p in Priority}

BUCKETS = 1 << 16
"""Keys are hashed into this many buckets (the `part` column); relays group buckets
into their partitions (`part % partitions`), any number of them up to `BUCKETS`."""


class Row(NamedTuple):
    """One message as stored: the columns of `surelay.sql.dialect.COLUMNS`, in order
    (a tuple, so it is the INSERT's values as it is)."""

    message_id: str
    part: int
    transport: str
    payload: bytes
    msg_key: str | None
    idempotency_key: str | None
    priority: int
    headers: str | None
    created_at: float
    not_before: float | None
    msg_type: str | None


def make_row(  # noqa: PLR0917
    message_id: str,
    transport: str,
    payload: bytes,
    key: str | None,
    idempotency_key: str | None,
    priority: Priority,
    headers: Mapping[str, str],
    due: float | None = None,
    kind: str | None = None,
    *,
    spread: int,
    now: float,
) -> Row:
    """The row of a checked send. Its `part` is its key's bucket among `BUCKETS` (one
    without a key: `spread`'s, no order to keep); a relay's partition is `part %
    partitions`, so a key's rows share a partition whatever number of partitions the
    relays use, and senders need not know it."""
    part = partition_for(key, BUCKETS) if key is not None else spread % BUCKETS
    return Row(
        message_id,
        part,
        transport,
        payload,
        key,
        idempotency_key,
        priority.rank,
        json.dumps(dict(headers), separators=(",", ":")) if headers else None,
        now,
        due,
        kind,
    )


def headers_of(text: str | None) -> MappingProxyType[str, str]:
    """A row's headers, checked again (the table may have been written by anyone):
    `InvalidMessage` if they are not a JSON object of valid headers."""
    if text is None or text == "":
        return check_headers(None)
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidMessage(f"headers are not JSON ({error})") from None
    return check_headers(value)


def envelope_of(  # noqa: PLR0917  # a row's columns
    message_id: str,
    transport: str,
    payload: bytes,
    key: str | None,
    idempotency_key: str | None,
    priority: int,
    headers: MappingProxyType[str, str],
    created_at: float,
    kind: str | None = None,
) -> Envelope:
    """The envelope a relayed row becomes (attempt 1; `idempotency_key` defaults to the
    message id, as with `rt.send`)."""
    return checked_envelope(  # (every value checked above or by `headers_of`)
        message_id,
        transport,
        payload,
        key,
        idempotency_key or message_id,
        PRIORITY_OF_RANK.get(priority, Priority.NORMAL),
        headers,
        1,
        created_at,
        kind,
    )
