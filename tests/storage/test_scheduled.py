"""The scheduled table: due times on disk, keys' order kept, each message moved once."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from surelay.envelope import Envelope
from surelay.storage import Store
from surelay.storage.outbox import Outbox
from surelay.storage.records import OutboxEntry
from surelay.storage.scheduled import Scheduled

from .conftest import Clock, StoreMachine


def _partition(entry: OutboxEntry) -> int:
    return entry.partition


def _accept(
    store: Store, items: list[tuple[Envelope, float | None]], now: float
) -> tuple[list[OutboxEntry], list[OutboxEntry]]:
    dues = [due for _, due in items]
    routed = [(envelope, 0) for envelope, _ in items]
    return store.write(
        lambda txn: store.scheduled.accept(
            txn, routed, None if all(d is None for d in dues) else dues, now=now
        )
    ).result()


def _fire(store: Store, until: float, limit: int = 1000) -> list[OutboxEntry]:
    return store.write(
        lambda txn: store.scheduled.fire(txn, until, limit=limit, route=_partition, now=until)
    ).result()


def test_a_keys_later_messages_wait_behind_its_scheduled_one(store: Store, clock: Clock) -> None:
    now = clock()
    items = [
        (Envelope("a", "t", b"", key="k"), None),
        (Envelope("b", "t", b"", key="k"), now + 10),
        (Envelope("c", "t", b"", key="k"), None),
        (Envelope("d", "t", b"", key="j"), None),
        (Envelope("e", "t", b"", key="k"), now + 5),
    ]
    at_once, later = _accept(store, items, now)
    assert [e.envelope.message_id for e in at_once] == ["a", "d"]
    assert [(e.envelope.message_id, e.due_at) for e in later] == [
        ("b", now + 10),
        ("c", now + 10),
        ("e", now + 10),
    ]
    with store.read() as txn:
        assert store.scheduled.next_due(txn) == pytest.approx(now + 10)
        assert store.scheduled.count(txn) == 3
        assert store.scheduled.get(txn, "c") is not None
    assert _fire(store, now + 9.999) == []
    fired = _fire(store, now + 10)
    assert [e.envelope.message_id for e in fired] == ["b", "c", "e"]
    assert [e.seq for e in fired] == sorted(e.seq for e in fired)
    with store.read() as txn:
        assert store.scheduled.count(txn) == 0
        assert not store.scheduled.holds_keys(txn)  # the key's hold is gone with them
        assert store.outbox.get(txn, "c") is not None
        assert store.scheduled.get(txn, "c") is None
    at_once, later = _accept(store, [(Envelope("f", "t", b"", key="k"), None)], now + 11)
    assert [e.envelope.message_id for e in at_once] == ["f"] and later == []


def test_an_id_already_accepted_is_refused_and_nothing_is_written(
    store: Store, clock: Clock
) -> None:
    now = clock()
    _accept(store, [(Envelope("a", "t", b""), None)], now)
    _accept(store, [(Envelope("b", "t", b""), now + 5)], now)
    for taken in ("a", "b"):
        with pytest.raises(ValueError, match=f"'{taken}' is already accepted"):
            _accept(store, [(Envelope(taken, "t", b""), now + 5)], now)
    with store.read() as txn:
        assert store.scheduled.count(txn) == 1


def test_firing_ahead_keeps_each_messages_own_due_time(store: Store, clock: Clock) -> None:
    now = clock()
    _accept(store, [(Envelope("a", "t", b""), now + 0.1), (Envelope("b", "t", b""), now + 5)], now)
    fired = store.write(
        lambda txn: store.scheduled.fire(txn, now + 0.25, limit=10, route=_partition, now=now)
    ).result()
    assert [(e.envelope.message_id, e.due_at) for e in fired] == [("a", pytest.approx(now + 0.1))]
    with store.read() as txn:
        assert store.outbox.get(txn, "a") is not None  # its sender holds it until then
        assert store.scheduled.count(txn) == 1


def test_firing_takes_chunks_in_due_order(store: Store, clock: Clock) -> None:
    now = clock()
    items = [(Envelope(f"m{i}", "t", b"", key=None), now + 100 - i) for i in range(10)]
    _accept(store, items, now)
    first = _fire(store, now + 1000, limit=4)
    assert [e.envelope.message_id for e in first] == ["m9", "m8", "m7", "m6"]
    rest = _fire(store, now + 1000)
    assert len(rest) == 6


def test_a_dead_slots_rows_are_adopted_with_their_due_times(store: Store, clock: Clock) -> None:
    now = clock()

    def report(table: str, key: bytes, raw: bytes, error: Exception) -> None:
        raise AssertionError(f"{table} {key!r}: {error}")

    gone = Scheduled(store.env, Outbox(store.env, report, slot=7), report)
    routed = [
        (Envelope("x", "kept", b"", key="k"), 0),
        (Envelope("y", "other", b""), 0),
        (Envelope("z", "kept", b""), 0),
    ]
    store.write(lambda txn: gone.accept(txn, routed, [now + 5, now + 6, now + 7], now=now)).result()
    with store.read() as txn:
        assert store.scheduled.holds(txn, 7) and not store.scheduled.holds(txn, 0)
    moved, following = store.write(
        lambda txn: store.scheduled.adopt(txn, 7, limit=1, accept={"kept"}.__contains__)
    ).result()
    assert moved == 1 and following is not None
    moved, following = store.write(
        lambda txn: store.scheduled.adopt(
            txn, 7, limit=10, accept={"kept"}.__contains__, start=following
        )
    ).result()
    assert moved == 1 and following is None
    with store.read() as txn:
        assert store.scheduled.next_due(txn) == pytest.approx(now + 5)  # due time kept
        assert store.scheduled.holds(txn, 7)  # "other" waits for a runtime that has it
    fired = _fire(store, now + 10)
    assert [e.envelope.message_id for e in fired] == ["x", "z"]
    with pytest.raises(ValueError, match="this table's own"):
        store.write(lambda txn: store.scheduled.adopt(txn, 0, limit=1)).result()


class ScheduledModel(StoreMachine):
    """Any mix of sends (due now or later, keyed or not) and firings: each message
    enters the outbox once, never before its due time, and each key's messages enter
    it in acceptance order."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count()
        self.accepted: list[tuple[str, str | None, float | None]] = []
        self.entered: list[str] = []

    @rule(
        sends=st.lists(
            st.tuples(st.sampled_from([None, "a", "b"]), st.none() | st.floats(0, 50)),
            min_size=1,
            max_size=6,
        )
    )
    def send(self, sends: list[tuple[str | None, float | None]]) -> None:
        now = self.clock.now
        items = []
        for key, delay in sends:
            message_id = f"m{next(self.ids)}"
            due = None if delay is None else now + delay
            items.append((Envelope(message_id, "t", b"", key=key), due))
            self.accepted.append((message_id, key, due))
        at_once, _ = _accept(self.store, items, now)
        self.entered += [e.envelope.message_id for e in at_once]

    @rule(seconds=st.floats(0, 30), limit=st.integers(1, 5))
    def fire(self, seconds: float, limit: int) -> None:
        self.clock.now += seconds
        fired = _fire(self.store, self.clock.now, limit)
        dues = {m: due for m, _, due in self.accepted}
        for entry in fired:
            due = dues[entry.envelope.message_id]
            assert due is None or due <= self.clock.now + 1e-6, "fired early"
        self.entered += [e.envelope.message_id for e in fired]

    @invariant()
    def each_enters_once_and_keys_keep_their_order(self) -> None:
        assert len(self.entered) == len(set(self.entered))
        position = {m: i for i, m in enumerate(self.entered)}
        for key in ("a", "b"):
            mine = [m for m, k, _ in self.accepted if k == key and m in position]
            assert mine == sorted(mine, key=position.__getitem__)
            in_order = [m for m, k, _ in self.accepted if k == key]
            assert mine == in_order[: len(mine)], "a key's later message passed one"
        with self.store.read() as txn:
            waiting = self.store.scheduled.count(txn)
        assert waiting + len(self.entered) == len(self.accepted)


TestScheduledModel = ScheduledModel.TestCase
TestScheduledModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
