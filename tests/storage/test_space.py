"""The reserve: a full store refuses what adds data and still records deliveries, dead
letters and deletions; writes that free space and do not fit wait until they do."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.envelope import Envelope
from surelay.errors import StorageError, StorageFull
from surelay.storage import Store
from surelay.storage.records import ReplayRequest
from surelay.storage.space import RESERVE_CEILING, RESERVE_FLOOR, entry_bytes, reserve_for
from surelay.storage.writer import BACKOFF_MAX, backoff

from .builders import dead_letter, delivered

MAP = 1 << 20
MAX_MAP = 4 << 20


@given(st.integers(1 << 16, 1 << 40))
def test_the_reserve_is_bounded_and_never_most_of_the_map(max_map: int) -> None:
    reserve = reserve_for(max_map)
    assert reserve <= max_map // 4
    assert reserve <= RESERVE_CEILING
    assert reserve >= min(RESERVE_FLOOR, max_map // 4)


@given(st.integers(1, 600), st.integers(0, 1 << 20))
def test_an_entry_takes_at_least_its_bytes(key: int, value: int) -> None:
    assert entry_bytes(key, value, 4096) >= key + value


def test_backoff_grows_to_a_bound() -> None:
    delays = [backoff(n) for n in range(1, 20)]
    assert delays == sorted(delays)
    assert delays[0] > 0
    assert delays[-1] == BACKOFF_MAX


def _fill(store: Store, size: int = 10_000, prefix: str = "m") -> list[str]:
    """Enqueue messages until the store refuses one; returns the accepted ids."""
    accepted: list[str] = []
    with pytest.raises(StorageFull) as refused:
        for n in range(100_000):
            message_id = f"{prefix}{n}"
            store.enqueue([(Envelope(message_id, "t", b"x" * size), 0)]).result(timeout=30)
            accepted.append(message_id)
    assert "is full" in str(refused.value)
    assert "kept for recording deliveries" in str(refused.value)
    return accepted


def test_a_full_store_records_every_delivery_and_then_accepts_again(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAX_MAP) as store:
        accepted = _fill(store)
        assert len(accepted) > 100
        # Every delivery is recorded (dedup record + outbox entry removed), though the
        # dedup records add data: they use the reserve.
        futures = [
            delivered(store, m, idempotency_key=m, delivered_at=1.0, expires_at=2e9)
            for m in accepted
        ]
        assert all(f.result(timeout=30) for f in futures)
        with store.read() as txn:
            assert store.outbox.count(txn) == 0
            assert store.dedup.count(txn) == len(accepted)
        store.enqueue([(Envelope("again", "t", b"x" * 10_000), 0)]).result(timeout=30)


def test_a_full_store_still_dead_letters(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAX_MAP) as store:
        accepted = _fill(store, size=3_000)
        futures = [
            store.dead_lettered(dead_letter(message_id=m, payload=b"x" * 3_000))
            for m in accepted[:200]
        ]
        for future in futures:
            future.result(timeout=30)
        with store.read() as txn:
            assert store.dead_letters.count(txn) == 200


def test_a_full_store_refuses_new_replay_requests_and_host_transactions(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAX_MAP) as store:
        _fill(store)
        _fill(store, size=10, prefix="small")  # to the last byte before the reserve
        request = ReplayRequest(id="r1", ids=("x",), created_at=1.0)
        with pytest.raises(StorageFull):
            store.write(lambda txn: store.replay_requests.put(txn, request)).result(timeout=30)
        with pytest.raises(StorageFull), store.transaction():
            pass


def test_one_log_line_per_change_not_one_per_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "surelay.storage")
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAX_MAP) as store:
        accepted = _fill(store)
        for n in range(50):
            with pytest.raises(StorageFull):
                store.enqueue([(Envelope(f"late{n}", "t", b"x" * 10_000), 0)]).result(30)
        for m in accepted:
            delivered(store, m, idempotency_key=m, delivered_at=1.0, expires_at=2e9)
        store.enqueue([(Envelope("again", "t", b"x"), 0)]).result(timeout=30)
    lines = [r.getMessage() for r in caplog.records if "grew the LMDB map" not in r.getMessage()]
    assert len(lines) == 2, lines
    assert "is full" in lines[0]
    assert "has room again" in lines[1]
    assert all(r.exc_info is None for r in caplog.records)


def _put_until_it_waits(store: Store) -> tuple[Future[None], int]:
    """Write raw records (a write that is not refused by the reserve) until one does not
    fit the map even alone; returns its future (still waiting) and how many landed."""
    db = store.host_table("filler")
    landed = 0
    while True:
        future: Future[None] = store.write(
            lambda txn, n=landed: txn.put(b"%08d" % n, b"f" * 20_000, db=db)
        )
        try:
            future.result(timeout=2)
        except TimeoutError:
            return future, landed
        landed += 1
        assert landed < 10_000, "the map never filled"


def test_a_write_that_frees_space_waits_for_room_and_then_lands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "surelay.storage")
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAP) as store:
        waiting, landed = _put_until_it_waits(store)
        assert store._writer.stuck
        db = store.host_table("filler")

        def free(txn: object) -> None:
            for n in range(landed // 2):
                txn.delete(b"%08d" % n, db=db)  # type: ignore[attr-defined]

        store.write(free).result(timeout=30)
        waiting.result(timeout=30)  # it was retried, without anyone asking
        assert not store._writer.stuck
    messages = [r.getMessage() for r in caplog.records]
    assert sum("tried again until they fit" in m for m in messages) == 1
    assert sum("can write again" in m for m in messages) == 1


def test_a_mixed_batch_lands_its_freeing_writes_and_refuses_its_adds(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAX_MAP, max_batch=4096) as store:
        accepted = _fill(store)
        futures: list[Future[object]] = []
        for n, m in enumerate(accepted):
            futures.append(
                store.enqueue([(Envelope(f"new{n}", "t", b"y" * 10_000), 0)])  # type: ignore[arg-type]
            )
            futures.append(
                delivered(store, m, idempotency_key=m, delivered_at=1.0, expires_at=2e9)  # type: ignore[arg-type]
            )
        frees = futures[1::2]
        assert all(f.result(timeout=30) for f in frees)
        adds = futures[0::2]
        outcomes = [f.exception(timeout=30) for f in adds]
        assert all(e is None or isinstance(e, StorageFull) for e in outcomes)
        with store.read() as txn:
            assert store.outbox.count(txn) == sum(e is None for e in outcomes)


def test_a_waiting_write_fails_on_close_rather_than_hanging(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAP)
    waiting, _ = _put_until_it_waits(store)
    store.close()
    assert isinstance(waiting.exception(timeout=5), StorageFull)


def test_a_batch_that_does_not_fit_commits_its_freeing_writes_apart(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAP) as store:
        db = store.host_table("filler")
        for n in range(20):
            store.write(lambda txn, n=n: txn.put(b"%08d" % n, b"f" * 20_000, db=db)).result(30)
        gate = threading.Event()
        store.write(lambda txn: gate.wait(30))  # holds the writer while the batch queues

        def add(txn: Any) -> None:  # passes the reserve, then takes more than the map
            store.env.space.admit(txn, 0)
            txn.put(b"huge", b"h" * (2 * MAP), db=db)

        added = store.write(add)
        freed = store.write(lambda txn: txn.delete(b"%08d" % 0, db=db))
        gate.set()
        assert freed.result(timeout=30) is True
        assert isinstance(added.exception(timeout=30), StorageFull)
        with store.read() as txn:
            assert txn.get(b"%08d" % 0, db=db) is None
            assert txn.get(b"huge", db=db) is None


def test_a_store_at_the_line_does_not_flap_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "surelay.storage")
    with Store.open(tmp_path / "d", map_size=MAP, max_map_size=MAX_MAP) as store:
        accepted = _fill(store)
        outcomes = []
        for n, m in enumerate(accepted[:200]):  # one delivered, one sent, at the line
            delivered(store, m, idempotency_key=m, delivered_at=1.0, expires_at=2e9).result(30)
            sent = store.enqueue([(Envelope(f"more{n}", "t", b"x" * 10_000), 0)])
            outcomes.append(sent.exception(timeout=30) is None)
        assert any(outcomes)  # some sends fit again
    changes = [
        r.getMessage()
        for r in caplog.records
        if "is full" in r.getMessage() or "has room again" in r.getMessage()
    ]
    assert len(changes) <= 2, changes


class _FailingCommits:
    """A write transaction whose commit fails (as LMDB reports an I/O error) while
    `failures` says so; everything else is the real transaction."""

    def __init__(self, txn: Any, failures: list[int]) -> None:
        self._txn = txn
        self._failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)

    def commit(self) -> None:
        if self._failures[0] > 0:
            self._failures[0] -= 1
            self._txn.abort()
            raise lmdb.DiskError("mdb_txn_commit: Input/output error")
        self._txn.commit()


def test_a_freeing_write_outlives_a_passing_io_error_and_an_adding_one_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20) as store:
        env = store.env
        begin = env._begin
        failures = [2]

        def failing_begin(*, write: bool) -> Any:
            txn = begin(write=write)
            return _FailingCommits(txn, failures) if write else txn

        monkeypatch.setattr(env, "_begin", failing_begin)
        meta = env.db("meta")
        # recording a delivery, say: it must land once commits work again
        freeing = store.write(lambda txn: txn.put(b"settled", b"1", db=meta))
        assert freeing.result(10) is True
        assert failures == [0]
        with store.read() as txn:
            assert txn.get(b"settled", db=meta) == b"1"
        failures[0] = 1
        with pytest.raises(StorageError, match="Input/output error"):
            store.enqueue([(Envelope("m", "t", b"x"), 0)]).result(10)
