"""The window: a sender holds a bounded part of its partition's outbox and streams the
rest from disk (live spills, recovery at open, adoption, a changed partition count)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surelay import Envelope, Guarantee, Outcome, Overloaded, Runtime, RuntimeConfig
from surelay.actors import window as window_module
from surelay.actors.slot_keeper import Look
from surelay.actors.window import Wake, hold_name
from surelay.config import PressurePolicy
from surelay.errors import TransientError
from surelay.storage.outbox import Outbox
from surelay.storage.slots import SlotLock
from surelay.storage.store import Store

WINDOW = 256
SHARE = 64
"""Each of 4 partitions' share of a window of 256."""


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A window of 256 messages for the whole runtime (4 partitions: 64 each)."""
    monkeypatch.setattr(window_module, "WINDOW_MESSAGES", WINDOW)
    yield


class Gated:
    """Records deliveries once its gate opens; meanwhile every call waits, so the
    runtime's memory can be looked at with a backlog in hand. Also records the most
    entries any partition held at a call."""

    def __init__(self, runtime: list[Runtime]) -> None:
        self.gate = threading.Event()
        self.delivered: list[Envelope] = []
        self.most_held = 0
        self._runtime = runtime
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        if not self.gate.wait(30):
            raise TransientError("gate closed")
        held = max((len(s.queue) for s in self._runtime[0]._parts.states), default=0)
        with self._lock:
            self.most_held = max(self.most_held, held)
            self.delivered.append(envelope)


def per_key_in_order(delivered: list[Envelope], sent: dict[str, list[str]]) -> None:
    got: dict[str, list[str]] = defaultdict(list)
    for envelope in delivered:
        assert envelope.key is not None
        got[envelope.key].append(envelope.message_id)
    assert dict(got) == sent


def test_a_live_backlog_past_the_window_stays_on_disk_and_drains_in_order(
    tmp_path: Path,
) -> None:
    holder: list[Runtime] = []
    transport = Gated(holder)
    config = RuntimeConfig(partitions=4, concurrency=4)
    with Runtime.open(tmp_path / "d", transports={"t": transport}, config=config) as rt:
        holder.append(rt)
        sent: dict[str, list[str]] = defaultdict(list)
        receipts = []
        for i in range(1000):
            key = f"k{i % 37}"
            receipt = rt.send("t", f"{i}".encode(), key=key)
            sent[key].append(receipt.message_id)
            receipts.append(receipt)
        # every send is accepted (durable), but each partition holds at most its share
        assert all(len(state.queue) <= SHARE for state in rt._parts.states)
        assert any(state.window.spilled for state in rt._parts.states)
        assert not rt.flush(0.05)
        transport.gate.set()
        assert rt.flush(30)
        assert [r.wait(0) for r in receipts] == [Outcome.DELIVERED] * 1000
        assert len(transport.delivered) == 1000  # each once
        per_key_in_order(transport.delivered, dict(sent))
        assert transport.most_held <= SHARE
        assert not any(state.window.spilled for state in rt._parts.states)
        with rt._store.read() as txn:
            assert rt._store.outbox.count(txn) == 0


def fill(
    path: Path, count: int, *, partitions: int = 4, keys: int = 13, transport: str = "t"
) -> dict[str, list[str]]:
    """Leave `count` keyed messages in the outbox of `path`, as a runtime whose
    downstream hung (its calls are abandoned at close, no attempt spent) leaves them."""
    hung = threading.Event()

    def down(envelope: Envelope) -> None:
        hung.wait(30)
        raise TransientError("downstream is down")

    config = RuntimeConfig(partitions=partitions, pressure=PressurePolicy(capacity=100_000))
    sent: dict[str, list[str]] = defaultdict(list)
    try:
        with Runtime.open(path, transports={transport: down}, config=config) as rt:
            for start in range(0, count, 500):
                batch = [
                    {"transport": transport, "payload": b"x" * 100, "key": f"k{i % keys}"}
                    for i in range(start, min(count, start + 500))
                ]
                for receipt, message in zip(rt.send_batch(batch), batch, strict=True):
                    sent[str(message["key"])].append(receipt.message_id)
            rt.close(timeout=0.2)
    finally:
        hung.set()
    return dict(sent)


def test_recovery_streams_a_backlog_larger_than_the_window(tmp_path: Path) -> None:
    sent = fill(tmp_path / "d", 1500)
    holder: list[Runtime] = []
    transport = Gated(holder)
    transport.gate.set()
    config = RuntimeConfig(partitions=4, concurrency=8)
    rt = Runtime.open(tmp_path / "d", transports={"t": transport}, config=config)
    holder.append(rt)
    try:
        assert rt.flush(30)
        assert len(transport.delivered) == 1500
        per_key_in_order(transport.delivered, sent)
        assert transport.most_held <= SHARE
    finally:
        rt.close()
    with Store.open(tmp_path / "d") as store, store.read() as txn:
        assert store.outbox.count(txn) == 0  # nothing is sent again at the next open


@pytest.mark.parametrize("before, after", [(4, 3), (2, 8)])
def test_a_changed_number_of_partitions_keeps_each_keys_order(
    tmp_path: Path, before: int, after: int
) -> None:
    sent = fill(tmp_path / "d", 600, partitions=before)
    holder: list[Runtime] = []
    transport = Gated(holder)
    transport.gate.set()
    config = RuntimeConfig(partitions=after)
    with Runtime.open(tmp_path / "d", transports={"t": transport}, config=config) as rt:
        holder.append(rt)
        assert rt.flush(30)
    assert len(transport.delivered) == 600
    per_key_in_order(transport.delivered, sent)


def test_an_adopted_backlog_is_streamed_too(tmp_path: Path) -> None:
    holder: list[Runtime] = []
    transport = Gated(holder)
    transport.gate.set()
    config = RuntimeConfig(partitions=4)
    with Runtime.open(tmp_path / "d", transports={"t": transport}, config=config) as rt:
        holder.append(rt)
        # what a runtime of slot 5 left behind when it died (its lock is free)
        theirs = Outbox(rt._store.env, lambda *args: None, 5)
        sent: dict[str, list[str]] = defaultdict(list)
        envelopes = []
        for i in range(700):
            envelope = Envelope(f"m{i:04}", "t", b"y" * 50, key=f"k{i % 11}")
            sent[f"k{i % 11}"].append(envelope.message_id)
            envelopes.append((envelope, i % 7))
        with rt._store.env.write() as txn:
            theirs.enqueue_many(txn, envelopes, due_at=0.0)
        lock = SlotLock.try_take(rt._store.path, 5)  # its lock file, free: nobody runs it
        assert lock is not None
        lock.release()
        rt._root.child("slots").ask(Look(), timeout=30)  # (or its alarm, whichever first)
        assert rt.flush(30)
        assert len(transport.delivered) == 700
        per_key_in_order(transport.delivered, dict(sent))
        assert transport.most_held <= SHARE


def test_orphans_are_counted_once_left_on_disk_and_delivered_by_a_runtime_that_has_them(
    tmp_path: Path,
) -> None:
    sent = fill(tmp_path / "d", 200, keys=3, transport="late")
    ids = [m for line in sent.values() for m in line]
    holder: list[Runtime] = []
    transport = Gated(holder)
    transport.gate.set()
    with Runtime.open(tmp_path / "d", transports={"t": transport}) as rt:
        holder.append(rt)
        assert rt.flush(30)  # the scans passed them all
        assert rt.health()["orphaned"] == {"late": 200}
        rt._parts.recovery.recover()  # a second look counts nothing twice
        assert rt.flush(30)
        assert rt.health()["orphaned"] == {"late": 200}
    got: list[str] = []
    with Runtime.open(
        tmp_path / "d", transports={"late": lambda e: got.append(e.message_id)}
    ) as rt:
        assert rt.flush(30)
        assert rt.health()["orphaned"] == {}
    assert sorted(got) == sorted(ids)


class Toggled:
    """Records deliveries; while `paused` is clear every call waits for it."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.running.set()
        self.delivered: list[Envelope] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        if not self.running.wait(30):
            raise TransientError("paused too long")
        with self._lock:
            self.delivered.append(envelope)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 60), st.integers(1, 5)),
        st.tuples(st.just("pause"), st.booleans()),
        st.tuples(st.just("wake"), st.integers(0, 3), st.integers(0, 200)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_any_interleaving_of_spills_wakes_and_pauses_delivers_each_once_in_key_order(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[object, ...]]
) -> None:
    """Sends past the window while calls are paused, and wakes that move cursors back
    over what is held (as adoption and transports added later do): every message is
    delivered exactly once and each key's in acceptance order."""
    transport = Toggled()
    sent: dict[str, list[str]] = defaultdict(list)
    path = tmp_path_factory.mktemp("window")
    config = RuntimeConfig(partitions=4, concurrency=2)
    with Runtime.open(path, transports={"t": transport}, config=config) as rt:
        for op in ops:
            if op[0] == "send":
                _, count, keys = op
                assert isinstance(count, int) and isinstance(keys, int)
                batch = [
                    {"transport": "t", "payload": b"p", "key": f"k{i % keys}"} for i in range(count)
                ]
                for receipt, message in zip(rt.send_batch(batch), batch, strict=True):
                    sent[str(message["key"])].append(receipt.message_id)
            elif op[0] == "pause":
                (transport.running.clear if op[1] else transport.running.set)()
            else:
                _, partition, after = op
                assert isinstance(partition, int) and isinstance(after, int)
                rt._parts.tracker.hold(hold_name(partition))
                rt._parts.peers.senders[partition].tell(Wake(after))
        transport.running.set()
        assert rt.flush(30)
        assert rt.stats().duplicates == 0  # none taken in twice (dedup would hide it)
    assert len(transport.delivered) == sum(len(ids) for ids in sent.values())
    per_key_in_order(transport.delivered, dict(sent))


def test_a_wake_over_held_messages_takes_none_of_them_twice(tmp_path: Path) -> None:
    transport = Toggled()
    transport.running.clear()
    sent: dict[str, list[str]] = defaultdict(list)
    with Runtime.open(tmp_path / "d", transports={"t": transport}) as rt:
        for i in range(400):
            sent[f"k{i % 7}"].append(rt.send("t", b"p", key=f"k{i % 7}").message_id)
        for partition in range(len(rt._parts.states)):
            rt._parts.tracker.hold(hold_name(partition))
            rt._parts.peers.senders[partition].tell(Wake(0))  # everything held is skipped
        transport.running.set()
        assert rt.flush(30)
        assert rt.stats().duplicates == 0
    assert len(transport.delivered) == 400
    per_key_in_order(transport.delivered, dict(sent))


def test_best_effort_streams_what_an_earlier_run_left_and_removes_it(tmp_path: Path) -> None:
    sent = fill(tmp_path / "d", 300)
    holder: list[Runtime] = []
    transport = Gated(holder)
    transport.gate.set()
    config = RuntimeConfig(guarantee=Guarantee.BEST_EFFORT)
    with Runtime.open(tmp_path / "d", transports={"t": transport}, config=config) as rt:
        holder.append(rt)
        fresh = rt.send("t", b"new", key="k0")  # kept in memory only, past the window too
        assert rt.flush(30)
        assert fresh.wait(0) is Outcome.DELIVERED
    assert len(transport.delivered) == 301
    per_key_in_order([e for e in transport.delivered if e.message_id != fresh.message_id], sent)
    with Store.open(tmp_path / "d") as store, store.read() as txn:
        assert store.outbox.count(txn) == 0  # nothing is sent again at the next open


def test_an_outage_fills_the_disk_not_memory_and_pressure_counts_only_memory(
    tmp_path: Path,
) -> None:
    """With the downstream down, sends go on being accepted far past `capacity`: the
    backlog waits on disk, and pressure counts what is in memory (the window). Receipts
    kept by the host still resolve once it drains."""
    holder: list[Runtime] = []
    transport = Gated(holder)
    config = RuntimeConfig(partitions=2, pressure=PressurePolicy(capacity=100))
    with Runtime.open(tmp_path / "d", transports={"t": transport}, config=config) as rt:
        holder.append(rt)
        receipts = []
        deadline = time.monotonic() + 60
        while len(receipts) < 1000:
            assert time.monotonic() < deadline, f"only {len(receipts)} accepted"
            try:
                receipts.append(rt.send("t", b"x", key=f"k{len(receipts) % 5}"))
            except Overloaded as refused:
                threading.Event().wait(min(refused.retry_after, 0.05))
        assert rt.stats().in_flight <= 100  # what memory holds, not the backlog
        transport.gate.set()
        assert rt.flush(30)
        assert {r.wait(0) for r in receipts} == {Outcome.DELIVERED}
        assert len(transport.delivered) == 1000


def test_hand_overs_from_many_threads_around_spills_lose_nothing(tmp_path: Path) -> None:
    """Sends from eight threads hand their entries over from their own threads, so the
    hand-overs of one partition arrive out of order, around spills and catch-ups: none
    is lost or taken twice."""
    transport = Toggled()
    config = RuntimeConfig(partitions=2, concurrency=4)
    with Runtime.open(tmp_path / "d", transports={"t": transport}, config=config) as rt:
        ids: list[str] = []
        lock = threading.Lock()

        def sender(n: int) -> None:
            for i in range(150):
                if i % 50 == 25:  # pause and resume calls now and then: spills, catch-ups
                    (transport.running.clear if n % 2 else transport.running.set)()
                receipt = rt.send("t", b"p", key=f"k{n}-{i % 3}")
                with lock:
                    ids.append(receipt.message_id)

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        transport.running.set()
        assert rt.flush(30)
        assert rt.stats().duplicates == 0
    assert sorted(e.message_id for e in transport.delivered) == sorted(ids)
