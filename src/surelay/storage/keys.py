"""How values become LMDB keys: fixed-width big-endian numbers, so byte order is value
order, and bounded-length strings (LMDB keys are at most 511 bytes)."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time

__all__ = [
    "MAX_KEY_TEXT",
    "from_u16",
    "from_u64",
    "index_key",
    "index_prefix",
    "micros",
    "new_id",
    "text_key",
    "time_prefix",
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


def from_u16(b: bytes, offset: int = 0) -> int:
    return int(_U16.unpack_from(b, offset)[0])


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
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
"""The two base-32 digits of every 10-bit value."""
_LOW_BITS = 40
_LOW_MASK = (1 << _LOW_BITS) - 1


def _ulid_prefix(high: int) -> str:
    """The first 18 digits of the ULID whose top 88 bits are `high`."""
    # 18 digits = 90 bits: the 88 behind two zero bits, as the whole ULID's 26 digits
    # are its 128 bits behind two zero bits; nine 10-bit pairs.
    pairs = _PAIRS
    return "".join([pairs[(high >> shift) & 1023] for shift in range(80, -1, -10)])


class _Ulid:
    """Monotonic ULIDs: 48-bit milliseconds, then 80 random bits, incremented (not
    redrawn) within one millisecond so ids made in order sort in order.

    Ids are made for every accepted message, so the text is built from a cached
    18-digit prefix (the top 88 bits, which change only when the millisecond does or the
    low 40 bits carry) and four table lookups for the low 40 bits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0
        self._cached: tuple[int, str] = (-1, "")
        """(top 88 bits, their digits): one attribute, so threads never see a mix."""

    def reseed(self) -> None:
        """In a forked child: ids of two processes differ by their random bits, so the
        child draws anew rather than go on with its parent's millisecond and count (and
        takes a new lock: another thread of the parent may have held it at the fork)."""
        self._lock = threading.Lock()
        self._last_ms = -1

    def __call__(self, at: float | None) -> str:
        return self.many(1, at)[0]

    def many(self, count: int, at: float | None) -> list[str]:
        """`count` ids for records made at `at` (epoch s; now if None), in order."""
        ms = int((time.time() if at is None else at) * 1000)
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                first = self._last_rand + 1
            else:
                # unpredictable (ids are the default idempotency keys), one spare bit
                first = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms, self._last_rand = ms, first + count - 1
        base = ms << 80
        pairs = _PAIRS
        out = []
        for rand in range(first, first + count):
            value = base | rand
            high = value >> _LOW_BITS
            cached_high, prefix = self._cached
            if high != cached_high:
                prefix = _ulid_prefix(high)
                self._cached = (high, prefix)
            low = value & _LOW_MASK
            out.append(
                prefix
                + pairs[low >> 30]
                + pairs[(low >> 20) & 1023]
                + pairs[(low >> 10) & 1023]
                + pairs[low & 1023]
            )
        return out


def time_prefix(at: float) -> str:
    """The first 10 digits of every id made at `at` (epoch s): its millisecond. Pure:
    unlike `new_id`, it moves no clock, so a far-off time is safe to ask about."""
    ms = max(0, min(int(at * 1000), (1 << 48) - 1))
    return "".join(_CROCKFORD[(ms >> shift) & 31] for shift in range(45, -1, -5))


new_id = _Ulid()
"""`new_id(at)`: a 26-character, time-ordered id for a record made at `at` (epoch s);
`new_id.many(n, at)`: n of them, in order."""
os.register_at_fork(after_in_child=new_id.reseed)
