"""Every stored record survives encode/decode; bad bytes raise DecodeError, never more."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.envelope import Envelope
from surelay.storage import DecodeError, OutboxEntry, QuarantinedRecord, ReplayRequest, codec
from surelay.storage.codec import decode, decode_dedup, encode, encode_dedup, encode_generic
from surelay.storage.keys import _Ulid, index_prefix, micros, new_id, text_key
from surelay.storage.records import DeadLetter, outbox_entry

from .builders import dead_letter, dead_letters, envelopes, times


@given(
    seq=st.integers(1, 2**63),
    envelope=envelopes,
    due=times,
    partition=st.integers(0, 65535),
    last_error=st.none() | st.text(max_size=50),
    failed_at=st.none() | times,
)
def test_outbox_entry_round_trip(  # noqa: PLR0917  # the record's fields
    seq: int,
    envelope: object,
    due: float,
    partition: int,
    last_error: str | None,
    failed_at: float | None,
) -> None:
    entry = OutboxEntry(seq, envelope, due, partition, last_error, failed_at)  # type: ignore[arg-type]
    assert decode(OutboxEntry, encode(entry)) == entry


def test_records_written_before_type_and_last_error_still_decode() -> None:
    envelope = ["m1", "sms", b"hi", "k", "m1", "normal", {}, 2, 1.5]  # (no type)
    entry = decode(OutboxEntry, msgpack.packb([1, 7, envelope, 3.0, 2], use_bin_type=True))
    assert entry == OutboxEntry(
        7, Envelope("m1", "sms", b"hi", "k", attempt=2, created_at=1.5), 3.0, 2
    )
    assert entry.envelope.type is None and entry.last_error is None
    record = dead_letter()
    old = msgpack.unpackb(encode(record), raw=False)[:-1]  # (no type)
    assert decode(DeadLetter, msgpack.packb(old, use_bin_type=True)) == record


@given(st.integers(1, 2**63), envelopes, times, st.integers(0, 65535))
def test_the_outbox_fast_path_writes_the_generic_bytes(
    seq: int, envelope: Envelope, due: float, partition: int
) -> None:
    entry = OutboxEntry(seq, envelope, due, partition)
    assert encode(entry) == encode_generic(entry)


@given(st.integers(1, 2**63), envelopes, times, st.integers(0, 65535))
def test_the_fast_outbox_entry_equals_the_dataclass_built_one(
    seq: int, envelope: Envelope, due: float, partition: int
) -> None:
    made = outbox_entry(seq, envelope, due, partition)
    assert type(made) is OutboxEntry
    assert made == OutboxEntry(seq, envelope, due, partition)


def test_a_thread_keeps_no_packer_grown_for_a_large_record() -> None:
    large = OutboxEntry(1, Envelope("m1", "t", b"x" * (1 << 20)), 0.0, 0)
    small = OutboxEntry(2, Envelope("m2", "t", b"y"), 0.0, 0)
    encode(small)
    kept = codec._PACKERS.packer
    assert kept is not None  # small records reuse one packer per thread
    assert decode(OutboxEntry, encode(large)) == large
    assert codec._PACKERS.packer is None  # its 1 MiB buffer is not kept
    assert encode(small) == encode_generic(small)
    assert codec._PACKERS.packer is not None


@given(dead_letters)
def test_dead_letter_round_trip(record: DeadLetter) -> None:
    assert decode(DeadLetter, encode(record)) == record


@given(
    ids=st.none() | st.lists(st.text(max_size=26), max_size=5).map(tuple),
    filters=st.dictionaries(st.sampled_from(["key", "transport", "reason_class"]), st.text()),
    rate=st.none() | st.floats(0.1, 1e6),
    status=st.sampled_from(["pending", "running", "done", "failed"]),
    progress=st.dictionaries(st.text(max_size=10), st.integers(0, 10**9), max_size=5),
    error=st.none() | st.text(),
)
def test_replay_request_round_trip(**fields: object) -> None:
    request = ReplayRequest(id=new_id(None), created_at=1.5, updated_at=2.5, **fields)  # type: ignore[arg-type]
    assert decode(ReplayRequest, encode(request)) == request


@given(st.text(), st.binary(), st.binary(), st.text(), times)
def test_quarantined_record_round_trip(
    table: str, key: bytes, raw: bytes, error: str, at: float
) -> None:
    record = QuarantinedRecord(table, key, raw, error, at)
    assert decode(QuarantinedRecord, encode(record)) == record


@given(times, times)
def test_dedup_value_round_trip(delivered_at: float, expires_at: float) -> None:
    assert decode_dedup(encode_dedup(delivered_at, expires_at)) == (delivered_at, expires_at)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb({"v": 1}), "versioned array"),
        (msgpack.packb([99, 1, 2]), "unknown record version 99"),
        (msgpack.packb([1, 2]), "expected 20 fields"),
    ],
)
def test_bad_bytes_raise_decode_error(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode(DeadLetter, raw)


def test_bad_field_types_raise_decode_error() -> None:
    items = msgpack.unpackb(encode(OutboxEntry(1, _envelope(), 0.0, 0)))
    items[2][5] = "no such priority"  # the envelope's priority
    with pytest.raises(DecodeError, match="OutboxEntry"):
        decode(OutboxEntry, msgpack.packb(items))
    with pytest.raises(DecodeError, match="DedupRecord"):
        decode_dedup(b"\x02" + bytes(16))


def _envelope() -> Envelope:
    return Envelope("m", "t", b"")


@given(st.lists(times, min_size=2, max_size=20))
def test_time_keys_sort_like_times(values: list[float]) -> None:
    assert sorted(values, key=micros) == sorted(values, key=lambda v: round(v * 1e6))


@given(st.lists(times, min_size=1, max_size=50))
def test_ids_made_in_order_sort_in_order(values: list[float]) -> None:
    ids = [new_id(v) for v in sorted(values)]
    assert ids == sorted(ids)
    assert all(len(i) == 26 and i.isascii() for i in ids)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid_value(text: str) -> int:
    value = 0
    for digit in text:
        value = value * 32 + _CROCKFORD.index(digit)
    return value


@given(
    ms=st.integers(0, 2**48 - 1),
    rand=st.one_of(st.integers(1, 2**79), st.integers(2**40 - 3, 2**40 + 3)),
    count=st.integers(1, 6),
)
def test_ids_are_the_ulid_of_time_and_counter(ms: int, rand: int, count: int) -> None:
    """Built from a cached prefix and table lookups, an id is still exactly the ULID
    (Crockford base 32) of its millisecond and random part, across carries too."""
    ids = _Ulid()
    ids._last_ms, ids._last_rand = ms, rand - 1  # the next id of this ms is `rand`
    made = ids.many(count, ms / 1000)
    assert [_ulid_value(i) for i in made] == [(ms << 80) | (rand + i) for i in range(count)]
    assert made == sorted(made)


@given(st.text())
def test_text_keys_are_bounded_and_distinct_from_hashes(value: str) -> None:
    key = text_key(value)
    assert len(key) <= 400 or (len(key) == 33 and key[0] == 0xFF)
    assert index_prefix(b"k", value) != index_prefix(b"k", None)


def test_a_forked_child_draws_other_random_bits() -> None:
    """Two processes making ids in one millisecond differ by the random part: a child
    made by fork must not repeat its parent's draws."""
    read, write = os.pipe()
    new_id(None)
    at = new_id._last_ms / 1000  # the parent's last millisecond: it would count on
    pid = os.fork()
    if pid == 0:  # the child: its id for `at`, to the parent
        os.write(write, new_id(at).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    mine = new_id(at)
    assert theirs[:10] == mine[:10]  # the same millisecond
    assert theirs != mine


@given(dead_letters)
def test_the_dead_letter_fast_paths_agree_with_the_generic_codec(record: DeadLetter) -> None:
    raw = encode(record)
    assert raw == encode_generic(record)
    items = codec._unpack(raw, "DeadLetter", len(codec._WIRE[DeadLetter]) + 1)
    assert decode(DeadLetter, raw) == record == codec._build(DeadLetter, items[1:])
