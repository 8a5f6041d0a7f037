"""How values become LMDB keys: fixed-width big-endian numbers, so byte order is value
order, and bounded-length strings (LMDB keys are at most 511 bytes)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import threading
import time

__all__ = [
    "MAX_KEY_TEXT",
    "from_u64",
    "index_key",
    "index_prefix",
    "micros",
    "new_id",
    "text_key",
    "u16",
    "u64",
]

_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
MAX_KEY_TEXT = 400
"""Text longer than this many UTF-8 bytes is stored under its SHA-256 instead."""


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b: bytes, offset: int = 0) -> int:
    return int(_U64.unpack_from(b, offset)[0])


def u16(n: int) -> bytes:
    return _U16.pack(n)


def micros(seconds: float) -> bytes:
    """A time (epoch seconds, >= 0) as a sortable 8-byte key, microsecond resolution."""
    return _U64.pack(max(0, round(seconds * 1_000_000)))


def text_key(text: str) -> bytes:
    """A string as a key of bounded length. UTF-8 never holds 0xFF, so a hashed key
    cannot collide with a plain one."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_KEY_TEXT:
        return raw
    return b"\xff" + hashlib.sha256(raw).digest()


def index_prefix(tag: bytes, value: str | None) -> bytes:
    """Prefix of a secondary-index key: tag, then the length-prefixed value (None is
    its own value, distinct from the empty string)."""
    if value is None:
        return tag + b"\xff\xff"
    raw = text_key(value)
    return tag + _U16.pack(len(raw)) + raw


def index_key(tag: bytes, value: str | None, record_id: str) -> bytes:
    return index_prefix(tag, value) + record_id.encode("ascii")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class _Ulid:
    """Monotonic ULIDs: 48-bit milliseconds, then 80 random bits, incremented (not
    redrawn) within one millisecond so ids made in order sort in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self, at: float | None) -> str:
        ms = int((time.time() if at is None else at) * 1000)
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1
            else:
                rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
            self._last_ms, self._last_rand = ms, rand
        value = (ms << 80) | rand
        # 26 base-32 digits = 130 bits: the 128-bit value behind two zero bits. Shifted
        # left by 6 it fills 17 bytes, whose first 26 RFC 4648 digits are those.
        digits = base64.b32encode((value << 6).to_bytes(17, "big"))[:26]
        return digits.translate(_TO_CROCKFORD).decode("ascii")


_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode("ascii"))


new_id = _Ulid()
"""`new_id(at)`: a 26-character, time-ordered id for a record made at `at` (epoch s)."""
