"""A row taken from a table becomes an entry whatever it holds: a usable row, the
envelope it was sent as; anything else, an entry with the reason it is refused."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from surelay.config import RuntimeConfig
from surelay.envelope import Priority
from surelay.routing import partition_for
from surelay.sql.taking import bucket_of, entry_of, fitting

CONFIG = RuntimeConfig(partitions=4, max_payload_bytes=64)
TRANSPORTS = {"hooks": object()}

anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()


@given(st.tuples(st.integers(), *([anything] * 9)))
def test_any_row_becomes_an_entry_or_a_reason_never_an_error(row: tuple[Any, ...]) -> None:
    entry, problem = entry_of(row, TRANSPORTS, CONFIG, now=5.0)
    assert entry.seq == 0  # not on disk: the row is its copy
    assert 0 <= entry.partition < CONFIG.partitions
    assert problem is None or problem


def test_a_good_row_is_the_envelope_it_was_sent_as() -> None:
    row = (7, "m1", 12, "hooks", b"hi", "k", None, Priority.HIGH.rank, '{"X-A":"1"}', 3.5)
    entry, problem = entry_of(row, TRANSPORTS, CONFIG, now=5.0)
    assert problem is None
    envelope = entry.envelope
    assert (envelope.message_id, envelope.payload, envelope.key) == ("m1", b"hi", "k")
    assert (envelope.idempotency_key, envelope.priority) == ("m1", Priority.HIGH)
    assert dict(envelope.headers) == {"X-A": "1"}
    assert (envelope.created_at, entry.partition) == (3.5, partition_for("k", 4))


def test_each_problem_is_named() -> None:
    row = (7, "", 12, "nope", "text", b"k", 1, "x", "[", None)
    _, problem = entry_of(row, TRANSPORTS, CONFIG, now=5.0)
    assert problem is not None
    for words in ("no message id", "not bytes", "unreadable headers", "unknown transport 'nope'"):
        assert words in problem
    assert "not a non-empty str" in problem
    _, big = entry_of(
        (1, "m", 0, "hooks", b"x" * 65, None, None, 1, None, 1.0), TRANSPORTS, CONFIG, 5.0
    )
    assert big is not None and "over max_payload_bytes=64" in big


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=20), st.integers(0, 200))
def test_fitting_takes_the_first_rows_that_fit_and_never_none(sizes: list[int], room: int) -> None:
    rows = [(i, "m", 0, "hooks", b"x" * n) for i, n in enumerate(sizes)]
    fits = fitting(rows, room)
    assert fits == rows[: len(fits)]
    assert bool(fits) == bool(rows)
    if len(fits) > 1:
        assert sum(len(r[4]) for r in fits) <= room
    if len(fits) < len(rows):
        assert sum(len(r[4]) for r in rows[: len(fits) + 1]) > room


def test_a_bucket_is_a_non_negative_int_else_zero() -> None:
    assert [bucket_of(v) for v in (5, -1, "3", None, 2.0)] == [5, 0, 0, 0, 0]
