"""Opening, schema, permissions, map growth, quarantine, host transactions, the writer."""

from __future__ import annotations

import concurrent.futures
import stat
from pathlib import Path

import lmdb
import pytest

from surelay.envelope import Envelope
from surelay.errors import RetryTransaction, SchemaMismatch, StorageError, StorageFull
from surelay.storage import SCHEMA_VERSION, DeadLetter, OutboxEntry, Store, codec, environment
from surelay.storage.keys import micros, u16, u64
from surelay.storage.outbox import location

from .builders import dead_letter, delivered
from .conftest import Clock


def test_creates_a_private_directory(tmp_path: Path) -> None:
    where = tmp_path / "nested" / "data"
    with Store.open(where, map_size=1 << 20):
        pass
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb", "surelay.store"):
        assert stat.S_IMODE((where / name).stat().st_mode) == 0o600


def test_refuses_missing_foreign_and_file_paths(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        Store.open(tmp_path / "nothing", create=False)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(StorageError, match="not a surelay data directory"):
        Store.open(tmp_path / "foreign", create=False)
    (tmp_path / "file").write_text("hi")
    with pytest.raises(StorageError, match="not a directory"):
        Store.open(tmp_path / "file")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "data.mdb").write_bytes(b"not lmdb at all" * 1000)
    with pytest.raises(StorageError, match=r"data\.mdb is not an LMDB file"):
        Store.open(junk)


def test_refuses_an_empty_path_and_a_directory_holding_other_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty string"):
        Store.open("")
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match=r"not empty .* holds notes\.txt"):
        Store.open(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    with Store.open(empty, map_size=1 << 20):  # an empty directory is taken
        pass
    (empty / "traces.jsonl").write_text("")  # beside surelay's own files: fine
    with Store.open(empty, map_size=1 << 20):
        pass


def test_refuses_to_open_twice_in_one_process(tmp_path: Path) -> None:
    with (
        Store.open(tmp_path / "d", map_size=1 << 20),
        pytest.raises(StorageError, match="already open in this process"),
    ):
        Store.open(tmp_path / "d")
    with Store.open(tmp_path / "d", map_size=1 << 20):  # closed: fine again
        pass


def _set_schema(where: Path, version: int) -> None:
    env = lmdb.open(str(where), max_dbs=64)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema", u64(version), db=meta)
    env.close()


def test_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20):
        pass
    _set_schema(tmp_path / "d", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaMismatch, match=r"newer surelay .*upgrade surelay"):
        Store.open(tmp_path / "d")


def test_older_schema_without_a_migration_is_refused_clearly(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20):
        pass
    _set_schema(tmp_path / "d", 0)
    with pytest.raises(SchemaMismatch, match="cannot migrate"):
        Store.open(tmp_path / "d")


def test_older_schema_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20):
        pass
    _set_schema(tmp_path / "d", 0)
    ran = []
    monkeypatch.setitem(environment.MIGRATIONS, 0, lambda env, txn, dbs: ran.append(0))
    with Store.open(tmp_path / "d", map_size=1 << 20):
        pass
    assert ran == [0]
    with Store.open(tmp_path / "d", map_size=1 << 20):  # now current: no second run
        pass
    assert ran == [0]


def test_a_schema_1_outbox_is_rekeyed_by_partition(tmp_path: Path) -> None:
    where = tmp_path / "d"
    with Store.open(where, map_size=1 << 20):
        pass
    entries = [
        OutboxEntry(1, Envelope("m1", "t", b"a"), 10.0, 1),
        OutboxEntry(2, Envelope("m2", "t", b"b", attempt=3), 50.0, 0),
        OutboxEntry(3, Envelope("m3", "t", b"c"), 11.0, 1),
    ]
    env = lmdb.open(str(where), max_dbs=64)  # schema 1's layout, written by hand
    db = {n: env.open_db(n.encode()) for n in ("meta", "outbox", "outbox_id", "outbox_due")}
    db["outbox_part"] = env.open_db(b"outbox_part")
    with env.begin(write=True) as txn:
        txn.put(b"schema", u64(1), db=db["meta"])
        for entry in entries:
            seq = u64(entry.seq)
            txn.put(seq, codec.encode(entry), db=db["outbox"])
            txn.put(entry.envelope.message_id.encode(), seq, db=db["outbox_id"])
            txn.put(micros(entry.due_at) + seq, b"", db=db["outbox_due"])
            txn.put(u16(entry.partition) + seq, b"", db=db["outbox_part"])
        txn.put(u64(4), b"\x01\x02", db=db["outbox"])  # a record that does not decode
        txn.put(b"outbox_seq", u64(4), db=db["meta"])
    env.close()
    with Store.open(where, map_size=1 << 20) as store:
        with store.read() as txn:
            assert store.outbox.scan(txn) == entries
            assert store.outbox.in_partition(txn, 1) == [entries[0], entries[2]]
            assert store.outbox.get(txn, "m2") == entries[1]
            assert store.outbox.due(txn, 20.0) == [entries[0], entries[2]]
            assert store.outbox.due(txn, 60.0) == [entries[0], entries[2], entries[1]]
            assert [(q.table, q.key) for q in store.quarantine.list(txn)] == [("outbox", u64(4))]
        (fifth,) = store.enqueue([(Envelope("m5", "t", b"e"), 0)]).result()
        assert fifth.seq == 5
    env = lmdb.open(str(where), max_dbs=64)
    with pytest.raises(lmdb.NotFoundError):
        env.open_db(b"outbox_part", create=False)
    env.close()


def test_a_schema_2_outbox_becomes_slot_0s(tmp_path: Path) -> None:
    """A directory of the single-owner layout keeps its outbox: it is slot 0's."""
    where = tmp_path / "d"
    with Store.open(where, map_size=1 << 20):
        pass
    entries = [
        OutboxEntry(1, Envelope("m1", "t", b"a"), 10.0, 1),
        OutboxEntry(2, Envelope("m2", "t", b"b", attempt=3), 50.0, 0),
    ]
    env = lmdb.open(str(where), max_dbs=64)  # schema 2's layout, written by hand
    db = {n: env.open_db(n.encode()) for n in ("meta", "outbox", "outbox_id", "outbox_due")}
    with env.begin(write=True) as txn:
        txn.put(b"schema", u64(2), db=db["meta"])
        for entry in entries:
            where_key = u16(entry.partition) + u64(entry.seq)
            txn.put(where_key, codec.encode(entry), db=db["outbox"])
            txn.put(entry.envelope.message_id.encode(), where_key, db=db["outbox_id"])
            if entry.envelope.attempt > 1:
                txn.put(micros(entry.due_at) + where_key, b"", db=db["outbox_due"])
        txn.put(b"outbox_seq", u64(2), db=db["meta"])
    env.close()
    with Store.open(where, map_size=1 << 20, claim=True) as store:
        assert store.slot == 0
        with store.read() as txn:
            assert store.outbox.scan(txn) == entries
            assert store.outbox.get(txn, "m2") == entries[1]
            assert store.outbox.due(txn, 60.0) == [entries[0], entries[1]]
        assert store.reschedule("m2", attempt=4, due_at=70.0).result() is not None
        assert delivered(
            store, "m1", idempotency_key="m1", delivered_at=1.0, expires_at=2.0
        ).result()
        with store.read() as txn:
            assert [e.envelope.message_id for e in store.outbox.due(txn, 80.0)] == ["m2"]


def test_map_grows_without_losing_a_write(tmp_path: Path) -> None:
    where = tmp_path / "d"
    payload = b"p" * 2000
    with Store.open(where, map_size=256 * 1024, max_map_size=64 << 20) as store:
        futures = [store.enqueue([(Envelope(f"m{n}", "t", payload), 0)]) for n in range(3000)]
        for future in futures:
            future.result(timeout=60)
        assert store.stats().map_size > 256 * 1024
    with (
        Store.open(where, map_size=256 * 1024, max_map_size=64 << 20) as store,
        store.read() as txn,
    ):
        assert store.outbox.count(txn) == 3000
        assert {e.envelope.message_id for e in store.outbox.scan(txn)} == {
            f"m{n}" for n in range(3000)
        }


def test_at_the_maximum_writes_fail_clearly_and_the_store_stays_usable(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=256 * 1024, max_map_size=256 * 1024) as store:
        big = b"x" * 4000
        accepted = []
        with pytest.raises(StorageFull, match="max_map_size"):
            for n in range(1000):
                store.enqueue([(Envelope(f"m{n}", "t", big), 0)]).result(timeout=30)
                accepted.append(f"m{n}")
        assert accepted  # some fit before the map was full
        with store.read() as txn:  # reads still work, and nothing accepted was lost
            assert store.outbox.count(txn) == len(accepted)
        for message_id in accepted[:20]:
            store.write(lambda txn, m=message_id: store.outbox.remove(txn, m)).result()
        store.enqueue([(Envelope("small", "t", b"s"), 0)]).result(timeout=30)


def test_a_batch_at_the_maximum_lands_what_fits(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=256 * 1024, max_map_size=256 * 1024) as store:
        futures = [store.enqueue([(Envelope(f"m{n}", "t", b"y" * 3000), 0)]) for n in range(200)]
        done = concurrent.futures.wait(futures, timeout=60).done
        landed = [f for f in done if f.exception() is None]
        failed = [f for f in done if isinstance(f.exception(), StorageFull)]
        assert len(landed) + len(failed) == 200
        assert landed and failed
        with store.read() as txn:
            assert store.outbox.count(txn) == len(landed)


def test_a_failing_operation_fails_only_its_own_future(store: Store) -> None:
    def boom(txn: object) -> None:
        raise RuntimeError("bad op")

    ok_before = store.enqueue([(Envelope("a", "t", b""), 0)])
    bad = store.write(boom)
    ok_after = store.enqueue([(Envelope("b", "t", b""), 0)])
    assert len(ok_before.result()) == 1
    with pytest.raises(RuntimeError, match="bad op"):
        bad.result()
    assert len(ok_after.result()) == 1
    with store.read() as txn:
        assert store.outbox.count(txn) == 2


def test_corrupted_records_are_quarantined_and_scans_go_on(store: Store, clock: Clock) -> None:
    good = dead_letter(clock.now, message_id="good")
    bad = dead_letter(clock.now + 1, message_id="bad")
    store.dead_lettered(good).result()
    store.dead_lettered(bad).result()
    store.enqueue([(Envelope(f"m{n}", "t", b""), 0) for n in range(3)]).result()
    with store.env.write() as txn:  # corrupt by hand, as a disk or a bug might
        txn.put(bad.id.encode(), b"\x93garbage", db=store.env.db("dead"))
        txn.put(location(0, 0, 2), b"\x01\x02", db=store.env.db("outbox"))
    with store.read() as txn:
        assert [r.message_id for r in store.dead_letters.list(txn)] == ["good"]
        assert [e.envelope.message_id for e in store.outbox.scan(txn)] == ["m0", "m2"]
    store.write(lambda txn: None).result()  # the writer is FIFO: the moves are done
    assert store.quarantine.reported == 2
    with store.read() as txn:
        moved = store.quarantine.list(txn)
        assert {q.table for q in moved} == {"dead", "outbox"}
        assert all(q.error for q in moved)
        assert store.dead_letters.get(txn, bad.id) is None
    assert store.stats().quarantined == 2


def test_host_transaction_commits_with_the_outbox_or_not_at_all(store: Store) -> None:
    orders = store.host_table("orders")
    with store.transaction() as txn:
        txn.put(b"order-1", b"paid", db=orders)
        store.outbox.enqueue(txn, Envelope("m1", "t", b"order-1"), partition=0, due_at=0)
    with pytest.raises(KeyError), store.transaction() as txn:
        txn.put(b"order-2", b"paid", db=orders)
        store.outbox.enqueue(txn, Envelope("m2", "t", b"order-2"), partition=0, due_at=0)
        raise KeyError("the host changed its mind")
    with store.read() as txn:
        assert txn.get(b"order-1", db=orders) == b"paid"
        assert txn.get(b"order-2", db=orders) is None
        assert [e.envelope.message_id for e in store.outbox.scan(txn)] == ["m1"]


def test_host_transaction_on_a_full_map_grows_it_and_asks_for_a_retry(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=128 * 1024, max_map_size=8 << 20) as store:
        table = store.host_table("blobs")

        def fill(txn: object, n: int) -> None:
            for i in range(n):
                txn.put(b"k%d" % i, b"v" * 1000, db=table)  # type: ignore[attr-defined]

        retries = 0
        for _ in range(10):  # what a host does: run the block again until it fits
            try:
                with store.transaction() as txn:
                    fill(txn, 300)
                break
            except RetryTransaction as error:
                assert "run the transaction again" in str(error)
                retries += 1
        assert retries >= 1
        with store.read() as txn:
            assert txn.stat(table)["entries"] == 300


def test_replayed_marks_the_record_and_writes_dedup(store: Store, clock: Clock) -> None:
    record = dead_letter(clock.now, idempotency_key="idem-9")
    store.dead_lettered(record).result()
    leased = store.write(
        lambda txn: store.dead_letters.lease(txn, record.id, now=clock.now, until=clock.now + 30)
    ).result()
    assert leased is not None and leased.status == "replaying"
    done = store.replayed(record.id, delivered_at=clock.now, expires_at=clock.now + 60).result()
    assert (done.status, done.replay_count, done.lease_until) == ("replayed", 1, None)
    with store.read() as txn:
        assert store.dedup.get(txn, "idem-9", now=clock.now) is not None
    with pytest.raises(ValueError, match="cannot become 'replayed'"):
        store.replayed(record.id, delivered_at=1, expires_at=2).result()


def test_async_durability_commits_and_flushes_on_close(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", map_size=1 << 20, durability="async") as store:
        store.enqueue([(Envelope("a", "t", b""), 0)]).result()
    with Store.open(tmp_path / "d", map_size=1 << 20) as store, store.read() as txn:
        assert store.outbox.count(txn) == 1


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        Store.open(tmp_path / "a", durability="maybe")
    with pytest.raises(ValueError, match="max_map_size"):
        Store.open(tmp_path / "b", map_size=1 << 20, max_map_size=1 << 10)
    with pytest.raises(ValueError, match="max_batch"):
        Store.open(tmp_path / "c", max_batch=0)
    assert not (tmp_path / "a").exists()
    with Store.open(tmp_path / "b", map_size=1 << 20):  # the failed opens left no lock behind
        pass


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "d", map_size=1 << 20)
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.write(lambda txn: None)
    with pytest.raises(StorageError, match="closed"), store.read():
        pass


def test_dead_letter_insert_refuses_duplicates_and_non_ascii_ids(store: Store) -> None:
    record = dead_letter()
    store.dead_lettered(record).result()
    with pytest.raises(ValueError, match="already exists"):
        store.dead_lettered(record).result()
    odd = DeadLetter(**{**{f: getattr(record, f) for f in record.__dataclass_fields__}, "id": "é"})
    with pytest.raises(ValueError, match="ASCII"):
        store.dead_lettered(odd).result()


def test_nested_write_transactions_fail_clearly_instead_of_hanging(store: Store) -> None:
    with store.transaction():
        with pytest.raises(StorageError, match="call host_table\\(\\) once before"):
            store.host_table("late")
        with pytest.raises(StorageError, match="already open in this thread"), store.transaction():
            pass
    orders = store.host_table("orders")
    with store.transaction() as txn:
        assert store.host_table("orders") is orders  # an open table is fine inside
        txn.put(b"k", b"v", db=orders)
