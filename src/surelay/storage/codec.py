"""msgpack encodings of every stored record; never pickle.

Each record is a msgpack array whose first element is its record version. Decoding a
record of an unknown version, or one that is not a well-formed array, raises
`DecodeError`: scans quarantine such records instead of crashing.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar, cast

import msgpack

from surelay.envelope import Envelope, Priority, checked_envelope
from surelay.storage.records import (
    DeadLetter,
    OutboxEntry,
    QuarantinedRecord,
    ReplayRequest,
    outbox_entry,
)

__all__ = [
    "DecodeError",
    "Report",
    "decode",
    "decode_dedup",
    "decode_or_report",
    "encode",
    "encode_dead_letter",
    "encode_dedup",
    "encode_generic",
    "encode_outbox",
]

T = TypeVar("T")
V1 = 1


class DecodeError(ValueError):
    """A stored record could not be decoded; the text says why."""


_PACKERS = threading.local()
_PACKER_BUFFER = 16 * 1024
"""A thread's kept Packer starts with this buffer; one that grew past it for a large
record is dropped after packing it, so no thread holds on to a large buffer."""


def _pack(items: list[Any]) -> bytes:
    # One Packer per thread: making one per call (as msgpack.packb does) costs more
    # than packing a small record.
    packer = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True, buf_size=_PACKER_BUFFER)
    packed: bytes = packer.pack(items)
    if len(packed) > _PACKER_BUFFER:
        _PACKERS.packer = None
    return packed


def _unpack(raw: bytes, kind: str, width: int, fewest: int | None = None) -> list[Any]:
    try:
        items = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as error:
        raise DecodeError(f"{kind}: not msgpack ({error})") from error
    if not isinstance(items, list) or not items:
        raise DecodeError(f"{kind}: expected a versioned array, got {type(items).__name__}")
    if items[0] != V1:
        raise DecodeError(f"{kind}: unknown record version {items[0]!r}")
    if not (width if fewest is None else fewest) <= len(items) <= width:
        raise DecodeError(f"{kind}: expected {width} fields, got {len(items)}")
    return items


# The wire order of each record's fields. Explicit, not dataclass order, so that
# reordering a dataclass can never change the stored format.
_WIRE: dict[type[Any], tuple[str, ...]] = {
    Envelope: (
        "message_id",
        "transport",
        "payload",
        "key",
        "idempotency_key",
        "priority",
        "headers",
        "attempt",
        "created_at",
        "type",
    ),
    OutboxEntry: ("seq", "envelope", "due_at", "partition", "last_error", "failed_at"),
    DeadLetter: (
        "id",
        "message_id",
        "key",
        "transport",
        "payload",
        "headers",
        "idempotency_key",
        "priority",
        "trace_id",
        "reason_class",
        "reason",
        "error_type",
        "attempts",
        "first_attempt_at",
        "failed_at",
        "status",
        "replay_count",
        "lease_until",
        "type",
    ),
    ReplayRequest: (
        "id",
        "created_at",
        "ids",
        "filters",
        "rate",
        "status",
        "progress",
        "updated_at",
        "error",
        "owner",
    ),
    QuarantinedRecord: ("table", "key", "raw", "error", "at"),
}

_FEWEST: dict[type[Any], int] = {
    ReplayRequest: 9,
    Envelope: 9,
    OutboxEntry: 4,
    DeadLetter: 18,
}
"""Records written before trailing fields were added have only this many; the missing
fields take their defaults. (Adding a field at the end with a default is how a record
grows without a new version.)"""


def _to_wire(value: Any) -> Any:
    if isinstance(value, Priority):
        return value.value
    if isinstance(value, Envelope):
        return [_to_wire(getattr(value, name)) for name in _WIRE[Envelope]]
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _from_wire(name: str, value: Any) -> Any:
    if name == "priority":
        return Priority(value)
    if name == "envelope":
        return _build(Envelope, value)
    if name == "ids" and value is not None:
        return tuple(value)
    return value


def _build(kind: type[T], items: list[Any]) -> T:
    names = _WIRE[kind]
    if not isinstance(items, list) or not _FEWEST.get(kind, len(names)) <= len(items) <= len(names):
        raise DecodeError(f"{kind.__name__}: expected {len(names)} fields")
    return kind(**{name: _from_wire(name, v) for name, v in zip(names, items, strict=False)})


def encode(record: Any) -> bytes:
    """The stored bytes of a record: its version, then its fields in wire order."""
    if type(record) is OutboxEntry:
        return encode_outbox(record)
    if type(record) is DeadLetter:
        return encode_dead_letter(record)
    return encode_generic(record)


def encode_generic(record: Any) -> bytes:
    """`encode` by reflection over `_WIRE` (the definition the fast paths must match)."""
    names = _WIRE.get(type(record))
    if names is None or isinstance(record, Envelope):
        raise TypeError(f"no stored encoding for {type(record).__name__}")
    return _pack([V1, *(_to_wire(getattr(record, name)) for name in names)])


def decode(kind: type[T], raw: bytes) -> T:
    """Decode `raw` as a `kind` record; `DecodeError` if it is not one."""
    fewest = _FEWEST.get(kind)
    items = _unpack(
        bytes(raw), kind.__name__, len(_WIRE[kind]) + 1, None if fewest is None else fewest + 1
    )
    try:
        if kind is OutboxEntry:
            return cast(T, _decode_outbox(items))
        if kind is DeadLetter:
            return cast(T, _decode_dead_letter(items))
        return _build(kind, items[1:])
    except (TypeError, ValueError, KeyError) as error:
        if isinstance(error, DecodeError):
            raise
        raise DecodeError(f"{kind.__name__}: {error}") from error


# The outbox is written and read for every message, and a dead letter twice per replay,
# so their records have hand-written encoders (reflection over `_WIRE` costs several
# times more). They produce exactly the bytes of `encode_generic` and the records of
# `_build`; tests/storage/test_codec.py checks that they agree.


def encode_outbox(entry: OutboxEntry) -> bytes:
    """`encode` of an `OutboxEntry`, without the dispatch on type."""
    e = entry.envelope
    envelope = [
        e.message_id,
        e.transport,
        e.payload,
        e.key,
        e.idempotency_key,
        e.priority.value,
        dict(e.headers) if e.headers else {},
        e.attempt,
        e.created_at,
        e.type,
    ]
    return _pack(
        [
            V1,
            entry.seq,
            envelope,
            entry.due_at,
            entry.partition,
            entry.last_error,
            entry.failed_at,
        ]
    )


def _decode_outbox(items: list[Any]) -> OutboxEntry:
    seq, envelope, due_at, partition = items[1:5]
    if not isinstance(envelope, list) or not 9 <= len(envelope) <= len(_WIRE[Envelope]):
        raise DecodeError(f"Envelope: expected {len(_WIRE[Envelope])} fields")
    message_id, transport, payload, key, idempotency_key, priority, headers, attempt, created = (
        envelope[:9]
    )
    if not isinstance(headers, dict):
        raise DecodeError(f"Envelope: headers must be a map, got {type(headers).__name__}")
    # the fast constructors: every entry of a backlog streamed in is decoded here
    entry = outbox_entry(
        seq,
        checked_envelope(
            message_id,
            transport,
            payload,
            key,
            idempotency_key or message_id,
            Priority(priority),
            MappingProxyType(headers),
            attempt,
            created,
            envelope[9] if len(envelope) > 9 else None,
        ),
        due_at,
        partition,
    )
    if len(items) > 5 and (items[5] is not None or (len(items) > 6 and items[6] is not None)):
        entry = replace(entry, last_error=items[5], failed_at=items[6] if len(items) > 6 else None)
    return entry


def encode_dead_letter(r: DeadLetter) -> bytes:
    """`encode` of a `DeadLetter`, without the dispatch on type."""
    return _pack(
        [
            V1,
            r.id,
            r.message_id,
            r.key,
            r.transport,
            r.payload,
            dict(r.headers),
            r.idempotency_key,
            r.priority.value,
            r.trace_id,
            r.reason_class,
            r.reason,
            r.error_type,
            r.attempts,
            r.first_attempt_at,
            r.failed_at,
            r.status,
            r.replay_count,
            r.lease_until,
            r.type,
        ]
    )


def _decode_dead_letter(items: list[Any]) -> DeadLetter:
    (
        _,
        dead_letter_id,
        message_id,
        key,
        transport,
        payload,
        headers,
        idempotency_key,
        priority,
        trace_id,
        reason_class,
        reason,
        error_type,
        attempts,
        first_attempt_at,
        failed_at,
        status,
        replay_count,
        lease_until,
    ) = items[:19]
    return DeadLetter(
        id=dead_letter_id,
        message_id=message_id,
        key=key,
        transport=transport,
        payload=payload,
        headers=headers,
        idempotency_key=idempotency_key,
        priority=Priority(priority),
        trace_id=trace_id,
        reason_class=reason_class,
        reason=reason,
        error_type=error_type,
        attempts=attempts,
        first_attempt_at=first_attempt_at,
        failed_at=failed_at,
        status=status,
        replay_count=replay_count,
        lease_until=lease_until,
        type=items[19] if len(items) > 19 else None,
    )


Report = Callable[[str, bytes, bytes, Exception], None]
"""Told (table, key, raw bytes, error) about a record that failed to decode."""


def decode_or_report(kind: type[T], table: str, key: bytes, raw: bytes, report: Report) -> T | None:
    """Decode a stored record, or report it (for quarantine) and return None, so that
    one bad record never stops a scan."""
    try:
        return decode(kind, raw)
    except DecodeError as error:
        report(table, bytes(key), bytes(raw), error)
        return None


# Dedup records are read on every send, so they are a fixed-width struct rather than
# msgpack: a version byte, then delivered_at and expires_at as big-endian doubles.
_DEDUP = struct.Struct(">Bdd")


def encode_dedup(delivered_at: float, expires_at: float) -> bytes:
    return _DEDUP.pack(V1, delivered_at, expires_at)


def decode_dedup(raw: bytes) -> tuple[float, float]:
    """(delivered_at, expires_at); `DecodeError` if `raw` is not a v1 dedup value."""
    if len(raw) != _DEDUP.size or raw[0] != V1:
        raise DecodeError(f"DedupRecord: expected {_DEDUP.size} bytes of version {V1}")
    _, delivered_at, expires_at = _DEDUP.unpack(raw)
    return delivered_at, expires_at
