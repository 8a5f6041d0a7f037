"""Rows as a relay takes them: checked one by one into entries for the senders (pure).

Anything may be in a table (another program, a hand-written INSERT, a damaged row):
`entry_of` never raises, it says what makes a row unusable, and the relay dead-letters
that row `invalid` instead of stalling on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from surelay.config import RuntimeConfig
from surelay.errors import InvalidMessage
from surelay.routing import home
from surelay.sql.rows import envelope_of, headers_of
from surelay.storage.records import OutboxEntry, outbox_entry

__all__ = ["bucket_of", "entry_of", "fitting"]


def bucket_of(value: object) -> int:
    """A row's bucket (0 for anything that is not one: still relayed, in order)."""
    return value if isinstance(value, int) and value >= 0 else 0


def fitting(rows: list[tuple[Any, ...]], room: int) -> list[tuple[Any, ...]]:
    """The first rows whose payloads fit in `room` bytes (at least one: a row larger
    than the room still goes, alone)."""
    total = 0
    for index, row in enumerate(rows):
        payload = row[4]
        total += len(payload) if isinstance(payload, bytes | bytearray | memoryview) else 0
        if total > room and index:
            return rows[:index]
    return rows


def entry_of(
    row: tuple[Any, ...], transports: Mapping[str, object], config: RuntimeConfig, now: float
) -> tuple[OutboxEntry, str | None]:
    """A row's entry for the runtime of `transports` and `config` (not on disk: no
    sequence number), and what makes it unusable (None if nothing)."""
    row_id, message_id, part, transport, payload, key, idem, priority, raw, created = row[:10]
    not_before, kind = row[10:12] if len(row) >= 12 else (None, None)
    problems = []
    if not isinstance(message_id, str) or not message_id:
        problems.append("no message id")
        message_id = f"row-{row_id}"
    if isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
    else:
        problems.append(f"payload is {type(payload).__name__}, not bytes")
        data = b""
    try:
        headers = headers_of(raw if isinstance(raw, str) or raw is None else repr(raw))
    except (InvalidMessage, ValueError, TypeError, RecursionError) as error:
        problems.append(f"unreadable headers ({str(error)[:200]})")
        headers = headers_of(None)
    if not isinstance(transport, str) or transport not in transports:
        known = ", ".join(sorted(transports)) or "none"
        problems.append(f"unknown transport {transport!r}; this runtime has: {known}")
        transport = transport if isinstance(transport, str) else repr(transport)
    if len(data) > config.max_payload_bytes:
        problems.append(
            f"payload of {len(data)} bytes is over max_payload_bytes={config.max_payload_bytes}"
        )
    if key is not None and not (isinstance(key, str) and key):
        problems.append(f"key is {key!r}, not a non-empty str")
        key = None
    if idem is not None and not (isinstance(idem, str) and idem):
        idem = None
    created_at = float(created) if isinstance(created, int | float) else now
    rank = priority if isinstance(priority, int) else 1
    if kind is not None and not (isinstance(kind, str) and kind):
        problems.append(f"msg_type is {kind!r}, not a non-empty str")
        kind = None
    due = now
    if not_before is not None:
        if isinstance(not_before, int | float) and not isinstance(not_before, bool):
            due = max(now, float(not_before))  # (its sender holds it until then)
        else:
            problems.append(f"not_before is {not_before!r}, not epoch seconds")
    envelope = envelope_of(message_id, transport, data, key, idem, rank, headers, created_at, kind)
    partitions = config.partitions
    partition = home(key, partitions, bucket_of(part))
    return outbox_entry(0, envelope, due, partition), "; ".join(problems) or None
