"""Rows: a send's arguments into a row and back into the envelope the relay delivers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.envelope import Priority, check_headers
from surelay.errors import InvalidMessage
from surelay.routing import partition_for
from surelay.sql.rows import BUCKETS, PRIORITY_OF_RANK, envelope_of, headers_of, make_row

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).map(
    lambda s: f"X-{s}"
)
header_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=20
)
headers = st.dictionaries(header_names, header_values, max_size=5)
keys = st.none() | st.text(min_size=1, max_size=20).filter(lambda k: k.isascii())


@given(
    st.binary(max_size=64),
    keys,
    st.none() | st.text(alphabet=TOKEN, min_size=1, max_size=20),
    st.sampled_from(list(Priority)),
    headers,
    st.integers(min_value=0, max_value=10**6),
)
def test_a_row_becomes_the_envelope_that_was_sent(  # noqa: PLR0917  # one per draw
    payload: bytes,
    key: str | None,
    idempotency_key: str | None,
    priority: Priority,
    sent_headers: dict[str, str],
    spread: int,
) -> None:
    row = make_row(
        "m1",
        "hooks",
        payload,
        key,
        idempotency_key,
        priority,
        check_headers(sent_headers),
        spread=spread,
        now=12.5,
    )
    # the key's bucket: relays group buckets by `part % partitions`, any partitions
    expected_part = partition_for(key, BUCKETS) if key is not None else spread % BUCKETS
    assert row.part == expected_part
    assert (row.headers is None) == (not sent_headers)
    envelope = envelope_of(
        row.message_id,
        row.transport,
        row.payload,
        row.msg_key,
        row.idempotency_key,
        row.priority,
        headers_of(row.headers),
        row.created_at,
    )
    assert envelope.payload == payload
    assert envelope.key == key
    assert envelope.idempotency_key == (idempotency_key or "m1")
    assert envelope.priority is priority
    assert dict(envelope.headers) == sent_headers
    assert (envelope.attempt, envelope.created_at) == (1, 12.5)


def test_priorities_survive_as_their_rank() -> None:
    assert {PRIORITY_OF_RANK[p.rank] for p in Priority} == set(Priority)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{", "headers are not JSON"),
        ("[1, 2]", "headers must be a mapping"),
        ('{"Transfer-Encoding": "chunked"}', "'Transfer-Encoding' is refused"),
        ('{"X-A": 1}', "must be a str"),
        ('{"bad name": "x"}', "HTTP token characters"),
    ],
)
def test_headers_in_a_row_written_by_anyone_are_checked_again(text: str, error: str) -> None:
    with pytest.raises(InvalidMessage, match=error):
        headers_of(text)


def test_no_headers_is_empty() -> None:
    assert dict(headers_of(None)) == {} == dict(headers_of(""))
