"""Hypothesis strategies and builders for stored records."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from hypothesis import strategies as st

from surelay.envelope import Envelope, Priority
from surelay.storage import REASON_CLASSES, DeadLetter, Store, new_id
from surelay.storage.environment import Txn

text = st.text(max_size=40)
times = st.floats(0, 4e9, allow_nan=False)
headers = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=4)

envelopes = st.builds(
    Envelope,
    message_id=st.text(min_size=1, max_size=40),
    transport=st.text(min_size=1, max_size=10),
    payload=st.binary(max_size=200),
    key=st.none() | text,
    idempotency_key=text,
    priority=st.sampled_from(Priority),
    headers=headers,
    attempt=st.integers(1, 1000),
    created_at=times,
    type=st.none() | text,
)


def dead_letter(failed_at: float = 1_700_000_000.0, **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "id": new_id(failed_at),
        "message_id": "m-1",
        "key": "k",
        "transport": "sms",
        "payload": b"hello",
        "headers": {"traceparent": "00-abc-def-01"},
        "idempotency_key": "m-1",
        "priority": Priority.NORMAL,
        "trace_id": "abc",
        "reason_class": "permanent",
        "reason": "HTTP 400",
        "error_type": "PermanentError",
        "attempts": 1,
        "first_attempt_at": failed_at,
        "failed_at": failed_at,
    }
    values.update(fields)
    return DeadLetter(**values)


dead_letters = st.builds(
    DeadLetter,
    id=st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=26, max_size=26),
    message_id=st.text(min_size=1, max_size=30),
    key=st.none() | text,
    transport=st.text(min_size=1, max_size=10),
    payload=st.binary(max_size=100),
    headers=headers,
    idempotency_key=text,
    priority=st.sampled_from(Priority),
    trace_id=st.none() | st.text(max_size=32),
    reason_class=st.sampled_from(REASON_CLASSES),
    reason=text,
    error_type=st.none() | text,
    attempts=st.integers(0, 100),
    first_attempt_at=times,
    failed_at=times,
    status=st.sampled_from(["dead", "replaying", "replayed", "archived"]),
    replay_count=st.integers(0, 50),
    lease_until=st.none() | times,
    type=st.none() | text,
)


def delivered(
    store: Store, message_id: str, *, idempotency_key: str, delivered_at: float, expires_at: float
) -> Future[bool]:
    """Record a delivery as a sender does, in one write: the dedup record, and the
    message out of the outbox (the future: whether it was still there)."""

    def op(txn: Txn) -> bool:
        store.dedup.put(txn, idempotency_key, delivered_at=delivered_at, expires_at=expires_at)
        return store.outbox.remove(txn, message_id) is not None

    return store.write(op)
