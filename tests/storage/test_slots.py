"""Slots: several runtimes on one data directory, one slot each, across processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lmdb
import msgpack
import pytest

from surelay.envelope import Envelope
from surelay.errors import StorageError
from surelay.recovery import route as route_for
from surelay.routing import partition_for
from surelay.storage import ReplayRequest, Store, codec
from surelay.storage import slots as slots_module
from surelay.storage.keys import u64
from surelay.storage.outbox import Outbox
from surelay.storage.slots import SlotLock, holders, lock_path, slot_numbers

HOLD = """
import sys, time
from surelay.storage.slots import SlotLock
lock = SlotLock.claim(sys.argv[1])
print(lock.slot, flush=True)
time.sleep(60)
"""


def _holder(directory: Path) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def test_processes_take_the_lowest_free_slots_and_the_kernel_frees_a_killed_ones(
    tmp_path: Path,
) -> None:
    first, slot_a = _holder(tmp_path)
    second, slot_b = _holder(tmp_path)
    try:
        assert (slot_a, slot_b) == (0, 1)
        assert holders(tmp_path) == {0: first.pid, 1: second.pid}
        assert lock_path(tmp_path, 0) == tmp_path / "owner.lock"  # the single-owner file
        assert lock_path(tmp_path, 1) == tmp_path / "slots" / "1.lock"
        mine = SlotLock.claim(tmp_path)
        assert mine.slot == 2
        assert SlotLock.try_take(tmp_path, 0) is None
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # the kernel dropped the lock with the process: slot 0 is free again
        assert set(holders(tmp_path)) == {1, 2}
        taken = SlotLock.try_take(tmp_path, 0)
        assert taken is not None and taken.slot == 0
        taken.release()
        mine.release()
        mine.release()  # idempotent
        assert set(holders(tmp_path)) == {1}
        assert slot_numbers(tmp_path) == [0, 1, 2]
    finally:
        for child in (first, second):
            child.kill()
            child.wait(10)
    assert holders(tmp_path) == {}


def test_no_lock_file_means_no_holder(tmp_path: Path) -> None:
    assert holders(tmp_path) == {}
    assert slot_numbers(tmp_path) == [0]
    (tmp_path / "slots").mkdir()
    (tmp_path / "slots" / "x.lock").write_text("")  # not a slot's: ignored
    assert slot_numbers(tmp_path) == [0]


def test_claim_refuses_clearly_when_every_slot_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "MAX_SLOTS", 2)
    held = [SlotLock.claim(tmp_path), SlotLock.claim(tmp_path)]
    with pytest.raises(StorageError, match=r"all 2 slots of .* are held by running runtimes"):
        SlotLock.claim(tmp_path)
    for lock in held:
        lock.release()


def test_a_claiming_store_holds_its_slot_until_closed(tmp_path: Path) -> None:
    where = tmp_path / "d"
    with Store.open(where, map_size=1 << 20, claim=True) as store:
        assert store.slot == 0
        assert set(holders(where)) == {0}
    assert holders(where) == {}
    with Store.open(where, map_size=1 << 20) as store:  # not claiming: reads as slot 0
        assert store.slot == 0 and store.slot_lock is None
        assert holders(where) == {}


def test_each_slot_sees_only_its_own_outbox_and_adopts_another(tmp_path: Path) -> None:
    where = tmp_path / "d"
    with Store.open(where, map_size=1 << 20, claim=True) as store:
        assert store.slot == 0
        store.enqueue([(Envelope("mine", "t", b"m", key="k"), 0)]).result()
        # what a runtime of slot 3 left behind: written as that slot's store would
        theirs = _slot_outbox(store, 3)
        with store.env.write() as txn:
            theirs.enqueue_many(
                txn,
                [
                    (Envelope("a", "t", b"a", key="k"), 1),
                    (Envelope("b", "t", b"b", key="k", attempt=2), 1),
                    (Envelope("c", "t", b"c"), 2),
                ],
                due_at=5.0,
            )
        with store.read() as txn:
            assert [e.envelope.message_id for e in store.outbox.scan(txn)] == ["mine"]
            assert [e.envelope.message_id for e in theirs.scan(txn)] == ["a", "b", "c"]
            assert store.outbox.get(txn, "b") is not None  # lookups by id reach every slot
            assert store.outbox.count(txn) == 4  # the whole directory
            assert store.outbox.holds(txn, 3) and not store.outbox.holds(txn, 2)
        route = route_for(2)
        moves, following = store.adopt(3, route=route, limit=2).result()
        k = partition_for("k", 2)
        assert moves == {k: (2, 2)} and following is not None  # a (seq 2) and b, to k's
        rest, following = store.adopt(3, route=route, limit=2, start=following).result()
        assert following is None  # looked at the last one
        assert rest == {0: (1, 4)}  # c: no key, its partition folded into range
        assert store.adopt(3, route=route).result() == ({}, None)
        with store.read() as txn:
            moved = store.outbox.scan(txn)
            assert [e.envelope.message_id for e in moved] == ["mine", "a", "b", "c"]
            # each sits in the range of the partition it was routed to, with its seq
            assert [(e.partition, e.seq) for e in moved[1:]] == [(k, 2), (k, 3), (0, 4)]
            assert store.outbox.in_partition(txn, k, after=1) == moved[1:3]
            assert theirs.scan(txn) == [] and not store.outbox.holds(txn, 3)
            # the retried one ("b") moved in the due index too
            due = store.outbox.due(txn, 1e12)
            assert [e.envelope.message_id for e in due] == ["a", "b", "c", "mine"]
        # the moved entries are this slot's now: removed as their new owner saw them
        removed = store.write(lambda txn: store.outbox.remove_entries(txn, moved)).result()
        assert removed == 4
        with store.read() as txn:
            assert store.outbox.scan(txn) == []
            assert store.outbox.due(txn, 10.0) == []
        with pytest.raises(ValueError, match="own"):
            store.adopt(0, route=route).result()


def _slot_outbox(store: Store, slot: int) -> Outbox:
    return Outbox(store.env, lambda *args: None, slot)


def test_a_replay_request_is_claimed_by_one_runtime_and_taken_over_when_it_dies(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20) as store:
        request = ReplayRequest(id="r1", created_at=1.0)
        store.write(lambda txn: store.replay_requests.put(txn, request)).result()

        def claim(slot: int, live: set[int]) -> ReplayRequest | None:
            return store.write(
                lambda txn: store.replay_requests.claim(txn, "r1", slot=slot, live=live)
            ).result()

        taken = claim(1, {1, 2})
        assert taken is not None and (taken.status, taken.owner) == ("running", 1)
        assert claim(2, {1, 2}) is None  # slot 1's runtime is alive and runs it
        again = claim(1, {1, 2})  # slot 1 again (its runtime died, a new one has the slot)
        assert again is not None and again.owner == 1
        over = claim(2, {2})  # slot 1's runtime died: taken over
        assert over is not None and over.owner == 2
        store.write(
            lambda txn: store.replay_requests.put(txn, replace(over, status="done"))
        ).result()
        assert claim(3, {3}) is None  # ended: nobody takes it again
        assert (
            claim(3, set()) is None
            and store.write(
                lambda txn: store.replay_requests.claim(txn, "nope", slot=3, live=())
            ).result()
            is None
        )


def test_a_replay_request_stored_before_owners_existed_still_reads() -> None:
    old = msgpack.packb([1, "r1", 1.0, None, {}, None, "pending", {}, 0.0, None])
    assert codec.decode(ReplayRequest, old) == ReplayRequest(id="r1", created_at=1.0)
    with pytest.raises(codec.DecodeError, match="expected 11 fields, got 4"):
        codec.decode(ReplayRequest, msgpack.packb([1, "r1", 1.0, None]))


def test_adoption_leaves_what_the_adopter_cannot_deliver(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20, claim=True) as store:
        theirs = _slot_outbox(store, 2)
        with store.env.write() as txn:
            theirs.enqueue_many(
                txn,
                [(Envelope(f"m{i}", "other" if i % 2 else "t", b""), 0) for i in range(5)],
                due_at=1.0,
            )
        moves, following = store.adopt(
            2, route=route_for(1), limit=10, accept=lambda transport: transport == "t"
        ).result()
        assert moves == {0: (3, 1)} and following is None
        with store.read() as txn:
            assert [e.envelope.message_id for e in store.outbox.scan(txn)] == ["m0", "m2", "m4"]
            assert [e.envelope.message_id for e in theirs.scan(txn)] == ["m1", "m3"]


def test_a_claim_made_after_reading_pending_still_sees_the_live_owner(tmp_path: Path) -> None:
    """Two runtimes read `pending` and both try to claim: the second one's claim must
    see that the first (alive) has it."""
    with Store.open(tmp_path / "d", map_size=1 << 20) as store:
        request = ReplayRequest(id="r1", created_at=1.0)
        store.write(lambda txn: store.replay_requests.put(txn, request)).result()
        first = store.write(
            lambda txn: store.replay_requests.claim(txn, "r1", slot=1, live={1, 2})
        ).result()
        assert first is not None and first.owner == 1
        second = store.write(
            lambda txn: store.replay_requests.claim(txn, "r1", slot=2, live={1, 2})
        ).result()
        assert second is None


def test_an_old_layout_is_not_migrated_under_a_running_old_runtime(tmp_path: Path) -> None:
    where = tmp_path / "d"
    with Store.open(where, map_size=1 << 20):
        pass
    env = lmdb.open(str(where), max_dbs=64)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema", u64(2), db=meta)
    env.close()
    old_runtime, slot = _holder(where)  # holds owner.lock, as a single-owner runtime did
    try:
        assert slot == 0
        with pytest.raises(StorageError, match=f"older surelay in process {old_runtime.pid}"):
            Store.open(where, map_size=1 << 20)
    finally:
        old_runtime.kill()
        old_runtime.wait(10)
    with Store.open(where, map_size=1 << 20, claim=True) as store:  # gone: migrated now
        assert store.slot == 0
