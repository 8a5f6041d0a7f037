"""msgpack encodings of every stored record; never pickle.

Each record is a msgpack array whose first element is its record version. Decoding a
record of an unknown version, or one that is not a well-formed array, raises
`DecodeError`: scans quarantine such records instead of crashing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from surelay.envelope import Envelope, Priority
from surelay.storage.records import (
    DeadLetter,
    OutboxEntry,
    QuarantinedRecord,
    ReplayRequest,
)

__all__ = ["DecodeError", "decode", "decode_dedup", "encode", "encode_dedup"]

T = TypeVar("T")
V1 = 1


class DecodeError(ValueError):
    """A stored record could not be decoded; the text says why."""


def _pack(items: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


def _unpack(raw: bytes, kind: str, width: int) -> list[Any]:
    try:
        items = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as error:
        raise DecodeError(f"{kind}: not msgpack ({error})") from error
    if not isinstance(items, list) or not items:
        raise DecodeError(f"{kind}: expected a versioned array, got {type(items).__name__}")
    if items[0] != V1:
        raise DecodeError(f"{kind}: unknown record version {items[0]!r}")
    if len(items) != width:
        raise DecodeError(f"{kind}: expected {width} fields, got {len(items)}")
    return items


def _envelope(items: list[Any]) -> Envelope:
    return Envelope(
        message_id=items[0],
        transport=items[1],
        payload=items[2],
        key=items[3],
        idempotency_key=items[4],
        priority=Priority(items[5]),
        headers=items[6],
        attempt=items[7],
        created_at=items[8],
    )


def _envelope_items(e: Envelope) -> list[Any]:
    return [
        e.message_id,
        e.transport,
        e.payload,
        e.key,
        e.idempotency_key,
        e.priority.value,
        dict(e.headers),
        e.attempt,
        e.created_at,
    ]


def _encode(record: Any) -> list[Any]:
    if isinstance(record, OutboxEntry):
        return [V1, record.seq, *_envelope_items(record.envelope), record.due_at, record.partition]
    if isinstance(record, DeadLetter):
        return [
            V1,
            record.id,
            record.message_id,
            record.key,
            record.transport,
            record.payload,
            dict(record.headers),
            record.idempotency_key,
            record.priority.value,
            record.trace_id,
            record.reason_class,
            record.reason,
            record.error_type,
            record.attempts,
            record.first_attempt_at,
            record.failed_at,
            record.status,
            record.replay_count,
            record.lease_until,
        ]
    if isinstance(record, ReplayRequest):
        return [
            V1,
            record.id,
            record.created_at,
            list(record.ids) if record.ids is not None else None,
            dict(record.filters),
            record.rate,
            record.status,
            dict(record.progress),
            record.updated_at,
            record.error,
        ]
    if isinstance(record, QuarantinedRecord):
        return [V1, record.table, record.key, record.raw, record.error, record.at]
    raise TypeError(f"no encoding for {type(record).__name__}")


def encode(record: Any) -> bytes:
    """The stored bytes of a record."""
    return _pack(_encode(record))


def _outbox(i: list[Any]) -> OutboxEntry:
    return OutboxEntry(seq=i[1], envelope=_envelope(i[2:11]), due_at=i[11], partition=i[12])


def _dead_letter(i: list[Any]) -> DeadLetter:
    return DeadLetter(
        id=i[1],
        message_id=i[2],
        key=i[3],
        transport=i[4],
        payload=i[5],
        headers=i[6],
        idempotency_key=i[7],
        priority=Priority(i[8]),
        trace_id=i[9],
        reason_class=i[10],
        reason=i[11],
        error_type=i[12],
        attempts=i[13],
        first_attempt_at=i[14],
        failed_at=i[15],
        status=i[16],
        replay_count=i[17],
        lease_until=i[18],
    )


def _replay_request(i: list[Any]) -> ReplayRequest:
    return ReplayRequest(
        id=i[1],
        created_at=i[2],
        ids=tuple(i[3]) if i[3] is not None else None,
        filters=i[4],
        rate=i[5],
        status=i[6],
        progress=i[7],
        updated_at=i[8],
        error=i[9],
    )


_DECODERS: dict[type[Any], tuple[int, Callable[[list[Any]], Any]]] = {
    OutboxEntry: (13, _outbox),
    DeadLetter: (19, _dead_letter),
    ReplayRequest: (10, _replay_request),
    QuarantinedRecord: (6, lambda i: QuarantinedRecord(i[1], i[2], i[3], i[4], i[5])),
}


def decode(kind: type[T], raw: bytes) -> T:
    """Decode `raw` as a `kind` record; `DecodeError` if it is not one."""
    width, build = _DECODERS[kind]
    items = _unpack(bytes(raw), kind.__name__, width)
    try:
        record = build(items)
    except (TypeError, ValueError, KeyError) as error:
        raise DecodeError(f"{kind.__name__}: {error}") from error
    if not isinstance(record, kind):  # pragma: no cover - the table above is typed by hand
        raise DecodeError(f"{kind.__name__}: decoded a {type(record).__name__}")
    return record


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
