"""Outbox and dedup tables through a real store."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surelay.envelope import Envelope
from surelay.storage import ReplayRequest, Store, new_id

from .builders import delivered
from .conftest import Clock


def env(n: int, key: str | None = None) -> Envelope:
    return Envelope(f"m{n}", "sms", b"payload %d" % n, key=key)


def test_outbox_orders_by_acceptance_due_time_and_partition(store: Store, clock: Clock) -> None:
    store.enqueue([(env(n), n % 3) for n in range(9)]).result()
    store.reschedule("m0", attempt=2, due_at=clock.now + 60).result()
    with store.read() as txn:
        assert [e.envelope.message_id for e in store.outbox.scan(txn)] == [
            f"m{n}" for n in range(9)
        ]
        assert [e.envelope.message_id for e in store.outbox.in_partition(txn, 0)] == [
            "m0",
            "m3",
            "m6",
        ]
        due_now = store.outbox.due(txn, clock.now)
        assert "m0" not in [e.envelope.message_id for e in due_now]
        assert len(due_now) == 8
        later = store.outbox.due(txn, clock.now + 60)
        assert later[-1].envelope.message_id == "m0"
        assert later[-1].envelope.attempt == 2
        first = store.outbox.scan(txn, limit=2)
        rest = store.outbox.scan(txn, after=first[-1].seq)
        assert len(first) + len(rest) == 9


def test_a_reschedule_is_a_retry(store: Store, clock: Clock) -> None:
    store.enqueue([(env(1), 0)]).result()
    with pytest.raises(ValueError, match="next attempt is at least 2, got 1"):
        store.reschedule("m1", attempt=1, due_at=clock.now + 5).result()
    with store.read() as txn:
        assert store.outbox.due(txn, clock.now)[0].envelope.attempt == 1


def test_outbox_refuses_a_duplicate_id_and_keeps_the_batch_atomic(store: Store) -> None:
    store.enqueue([(env(1), 0)]).result()
    with pytest.raises(ValueError, match="already in the outbox"):
        store.enqueue([(env(2), 0), (env(1), 0)]).result()
    with store.read() as txn:
        assert [e.envelope.message_id for e in store.outbox.scan(txn)] == ["m1"]


def test_delivered_writes_dedup_and_removes_from_the_outbox(store: Store, clock: Clock) -> None:
    store.enqueue([(env(1), 0)]).result()
    assert delivered(
        store, "m1", idempotency_key="idem-1", delivered_at=clock.now, expires_at=clock.now + 10
    ).result()
    with store.read() as txn:
        assert store.outbox.get(txn, "m1") is None
        assert store.dedup.get(txn, "idem-1", now=clock.now) is not None
        assert store.dedup.get(txn, "idem-1", now=clock.now + 10) is None  # expired
        assert store.dedup.seen(txn, ["idem-1", "other"], now=clock.now) == {"idem-1"}
        assert store.outbox.in_partition(txn, 0) == []
        assert store.outbox.due(txn, clock.now + 1000) == []


def test_remove_entries_clears_every_index_and_counts_what_was_there(
    store: Store, clock: Clock
) -> None:
    entries = store.enqueue([(env(n), n % 2) for n in range(4)], due_at=clock.now).result()
    # m0 is rescheduled after its owner saw it: its new due-index entry is left behind.
    store.reschedule("m0", attempt=2, due_at=clock.now + 60).result()
    removed = store.write(lambda txn: store.outbox.remove_entries(txn, entries[:3])).result()
    assert removed == 3
    again = store.write(lambda txn: store.outbox.remove_entries(txn, entries)).result()
    assert again == 1  # only m3 was still there
    with store.read() as txn:
        assert store.outbox.count(txn) == 0
        assert store.outbox.scan(txn) == []
        assert store.outbox.in_partition(txn, 0) == store.outbox.in_partition(txn, 1) == []
        assert store.outbox.due(txn, clock.now + 1000) == []  # m0's stale entry is skipped
        assert all(store.outbox.get(txn, f"m{n}") is None for n in range(4))


def test_long_idempotency_keys_are_stored_hashed(store: Store, clock: Clock) -> None:
    long_key = "x" * 5000
    store.write(
        lambda txn: store.dedup.put(txn, long_key, delivered_at=1, expires_at=clock.now + 5)
    ).result()
    with store.read() as txn:
        assert store.dedup.get(txn, long_key, now=clock.now) is not None
        assert store.dedup.get(txn, "x" * 4999, now=clock.now) is None


@settings(max_examples=25, deadline=None)
@given(
    expiries=st.lists(st.floats(0, 1000), max_size=60),
    now=st.floats(0, 1000),
)
def test_ttl_sweep_removes_exactly_the_expired(
    tmp_path_factory: pytest.TempPathFactory, expiries: list[float], now: float
) -> None:
    clock = Clock(0.0)
    with Store.open(
        tmp_path_factory.mktemp("d") / "s", map_size=1 << 22, clock=clock, durability="async"
    ) as s:

        def fill(txn: object) -> None:
            for n, expires in enumerate(expiries):
                s.dedup.put(txn, f"k{n}", delivered_at=0.0, expires_at=expires)
            s.dedup.put(txn, "k0", delivered_at=0.0, expires_at=2000.0)  # re-put moves it
            s.dedup.put(txn, "k1", delivered_at=0.0, expires_at=0.0)  # ... either way

        s.write(fill).result()
        removed = s.sweep_dedup(now=now).result()
        final = {f"k{n}": e for n, e in enumerate(expiries)}
        final["k0"] = 2000.0
        final["k1"] = 0.0
        expected_gone = {k for k, e in final.items() if round(e * 1e6) <= round(now * 1e6)}
        assert removed == len(expected_gone)
        with s.read() as txn:
            left = {k for k in final if s.dedup.get(txn, k, now=-1.0) is not None}
            assert left == set(final) - expected_gone
            assert s.dedup.count(txn) == len(left)


def test_replay_requests_wait_in_order_and_update_in_place(store: Store, clock: Clock) -> None:
    first = ReplayRequest(new_id(clock.now), clock.now, ids=("a", "b"), rate=5.0)
    second = ReplayRequest(new_id(clock.now + 1), clock.now + 1, filters={"key": "k"})
    store.write(lambda txn: [store.replay_requests.put(txn, r) for r in (first, second)]).result()
    with store.read() as txn:
        assert store.replay_requests.list(txn, status="pending") == [first, second]
    running = replace(first, status="running", progress={"replayed": 1})
    store.write(lambda txn: store.replay_requests.put(txn, running)).result()
    with store.read() as txn:
        assert store.replay_requests.list(txn, status="pending") == [second]
        assert store.replay_requests.get(txn, first.id) == running
        assert store.replay_requests.get(txn, "missing") is None
