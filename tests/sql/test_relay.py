"""The relay inside one process: runtimes relaying one table share its partitions and
hand them over when one joins or leaves; a row is deleted only once its message has
ended (delivered or dead-lettered); a database that goes away is waited out."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psycopg

from surelay import Envelope, PermanentError, RetryPolicy, Runtime, TransientError
from surelay.routing import partition_for
from surelay.sql import SqlOutbox
from surelay.sql.rows import BUCKETS
from tests.helpers import Gate, Recorder, open_runtime, wait_until
from tests.postgres_server import PostgresServer

PARTITIONS = 16
FAST_RETRY = RetryPolicy(max_attempts=100, base_delay=0.02, max_delay=0.05)


def part_of(key: str) -> int:
    """The relays' partition of `key`: its bucket (the row's `part`) modulo partitions."""
    return partition_for(key, BUCKETS) % PARTITIONS


def make_outbox(url: str) -> SqlOutbox:
    outbox = SqlOutbox(url, partitions=PARTITIONS)
    outbox.create_table()
    return outbox


def commit(outbox: SqlOutbox, sends: list[tuple[str, str, int]]) -> list[str]:
    """Commit rows (transport, key, seq) with payload `key:seq`, 50 a transaction."""
    ids = []
    with psycopg.connect(outbox.target) as conn:
        for start in range(0, len(sends), 50):
            with conn.transaction():
                ids += outbox.send_batch(
                    conn,
                    [
                        {"transport": t, "payload": f"{k}:{s}".encode(), "key": k}
                        for t, k, s in sends[start : start + 50]
                    ],
                )
    return ids


def rows_left(outbox: SqlOutbox) -> int:
    if outbox.kind == "sqlite":
        with sqlite3.connect(outbox.target) as lite:
            return int(lite.execute(f"SELECT count(*) FROM {outbox.table}").fetchone()[0])
    with psycopg.connect(outbox.target) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {outbox.table}").fetchone()[0])  # type: ignore[index]


def message_ids(outbox: SqlOutbox) -> list[str]:
    with psycopg.connect(outbox.target) as conn:
        rows = conn.execute(f"SELECT message_id FROM {outbox.table} ORDER BY id").fetchall()
    return [r[0] for r in rows]


def lease_rows(outbox: SqlOutbox) -> dict[int, str | None]:
    """Every lease row's owner (None: given back), whether expired or not."""
    with psycopg.connect(outbox.target) as conn:
        rows = conn.execute(f"SELECT part, owner FROM {outbox.dialect.leases}").fetchall()
    return dict(rows)


def relay_of(rt: Runtime) -> dict[str, object]:
    (health,) = rt.health()["relays"].values()
    return dict(health)


def held(rt: Runtime) -> set[int]:
    return set(relay_of(rt)["partitions"])  # type: ignore[call-overload]


def keyed(count: int, keys: int, transport: str = "t") -> list[tuple[str, str, int]]:
    return [(transport, f"k{n % keys}", n // keys) for n in range(count)]


def in_order(recorder: Recorder, sends: list[tuple[str, str, int]]) -> bool:
    """Every send delivered, and each key's first deliveries in seq order."""
    for key in {k for _, k, _ in sends}:
        firsts = list(dict.fromkeys(recorder.payloads(key)))
        if firsts != [f"{key}:{s}".encode() for _, k, s in sends if k == key]:
            return False
    return True


def test_relays_split_the_partitions_and_a_closed_one_hands_them_over_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    outbox = make_outbox(pg_url)
    one, two = Recorder(), Recorder()
    rt1 = open_runtime(tmp_path / "one", {"t": one})
    rt2 = open_runtime(tmp_path / "two", {"t": two})
    try:
        rt1.relay(outbox, lease=3.0, poll_interval=0.2)
        wait_until(lambda: held(rt1) == set(range(PARTITIONS)), 10)
        rt2.relay(outbox, lease=3.0, poll_interval=0.2)
        wait_until(lambda: len(held(rt1)) == len(held(rt2)) == PARTITIONS // 2, 10)
        assert held(rt1) | held(rt2) == set(range(PARTITIONS))
        first = keyed(400, 40)
        commit(outbox, first)
        wait_until(lambda: len(one.delivered) + len(two.delivered) >= len(first), 15)
        # each relays only the keys of the partitions it holds
        for recorder, rt in ((one, rt1), (two, rt2)):
            assert recorder.delivered
            assert {part_of(e.key or "") for e in recorder.delivered} <= held(rt)
        name1 = relay_of(rt1)["relay"]
        held_by_one = held(rt1)
        rt1.close()
        closed_at = time.monotonic()
        # given back at close, not left to expire
        assert name1 not in lease_rows(outbox).values()
        wait_until(lambda: held(rt2) == set(range(PARTITIONS)), 10)
        took = time.monotonic() - closed_at
        assert took < 2.0, f"took {took:.2f}s: waited for the lease to expire"
        second = keyed(100, 40)
        second = [(t, k, s + 10) for t, k, s in second]
        before = len(two.delivered)
        commit(outbox, second)
        wait_until(lambda: rows_left(outbox) == 0, 15)
        former = {part_of(e.key or "") for e in two.delivered[before:]}
        assert former & held_by_one
        assert {e.payload for e in one.delivered + two.delivered} == {
            f"{k}:{s}".encode() for _, k, s in first + second
        }
    finally:
        rt1.close()
        rt2.close()


def test_unknown_transport_is_dead_lettered_invalid_and_its_row_deleted(
    tmp_path: Path, pg_url: str
) -> None:
    outbox = make_outbox(pg_url)
    recorder = Recorder()
    rt = open_runtime(tmp_path / "rt", {"t": recorder})
    try:
        (bad, good) = commit(outbox, [("nope", "a", 0), ("t", "b", 0)])
        rt.relay(outbox, lease=2.0, poll_interval=0.2)
        wait_until(lambda: rows_left(outbox) == 0, 10)
        assert [e.message_id for e in recorder.delivered] == [good]
        (dead,) = rt.dead_letters.list()  # recorded before the row was deleted
        assert (dead.message_id, dead.reason_class, dead.transport) == (bad, "invalid", "nope")
        assert "unknown transport 'nope'" in dead.reason
    finally:
        rt.close()


def test_transient_failures_are_retried_and_the_row_deleted_only_once_delivered(
    tmp_path: Path, pg_url: str
) -> None:
    outbox = make_outbox(pg_url)
    failing = threading.Event()
    failing.set()

    def flaky(_envelope: Envelope) -> None:
        if failing.is_set():
            raise TransientError("downstream busy")

    recorder, other = Recorder(flaky), Recorder()
    rt = open_runtime(tmp_path / "rt", {"t": recorder, "u": other}, retry=FAST_RETRY)
    try:
        (message_id,) = commit(outbox, [("t", "a", 0)])
        rt.relay(outbox, lease=2.0, poll_interval=0.2)
        recorder.wait_attempts(3)
        # another row, delivered and deleted: the relay has deleted what ended since
        (later,) = commit(outbox, [("u", "b", 0)])
        wait_until(lambda: message_ids(outbox) == [message_id], 10)
        assert [e.message_id for e in other.delivered] == [later]
        failing.clear()
        wait_until(lambda: rows_left(outbox) == 0, 10)
        assert [e.message_id for e in recorder.delivered] == [message_id]
        assert len(recorder.attempts) >= 4
        assert rt.dead_letters.list() == []
    finally:
        rt.close()


def test_permanent_failure_is_dead_lettered_then_the_row_deleted(
    tmp_path: Path, pg_url: str
) -> None:
    outbox = make_outbox(pg_url)

    def refuse(_envelope: Envelope) -> None:
        raise PermanentError("422 unprocessable")

    recorder = Recorder(refuse)
    rt = open_runtime(tmp_path / "rt", {"t": recorder}, retry=FAST_RETRY)
    try:
        (message_id,) = commit(outbox, [("t", "a", 0)])
        rt.relay(outbox, lease=2.0, poll_interval=0.2)
        wait_until(lambda: rows_left(outbox) == 0, 10)
        assert len(recorder.attempts) == 1
        (dead,) = rt.dead_letters.list()  # recorded before the row was deleted
        assert (dead.message_id, dead.reason_class) == (message_id, "permanent")
    finally:
        rt.close()


def test_rows_not_delivered_at_close_stay_for_another_runtime(tmp_path: Path, pg_url: str) -> None:
    outbox = make_outbox(pg_url)
    sends = keyed(30, 3)
    commit(outbox, sends)
    gate = Gate()
    rt1 = open_runtime(tmp_path / "one", {"t": Recorder(gate)})
    try:
        rt1.relay(outbox, lease=3.0, poll_interval=0.2)
        assert gate.entered.wait(10)
        name1 = relay_of(rt1)["relay"]
        rt1.close(timeout=0.3)  # the calls under way are abandoned
    finally:
        gate.open()
        rt1.close()
    assert rows_left(outbox) == len(sends)
    assert name1 not in lease_rows(outbox).values()
    recorder = Recorder()
    rt2 = open_runtime(tmp_path / "two", {"t": recorder})
    try:
        rt2.relay(outbox, lease=3.0, poll_interval=0.2)
        wait_until(lambda: rows_left(outbox) == 0, 10)
        assert in_order(recorder, sends)
        assert len(recorder.delivered) == len(sends)
    finally:
        rt2.close()


def test_sqlite_outbox_is_relayed_in_order_and_emptied(tmp_path: Path, sqlite_url: str) -> None:
    outbox = make_outbox(sqlite_url)
    sends = keyed(200, 5)
    lite = sqlite3.connect(outbox.target, isolation_level=None)
    try:
        for start in range(0, len(sends), 20):
            lite.execute("BEGIN")
            for t, k, s in sends[start : start + 20]:
                outbox.send(lite, t, f"{k}:{s}".encode(), key=k)
            lite.execute("COMMIT")
        lite.execute("BEGIN")
        outbox.send(lite, "t", b"rolled:back", key="k0")
        lite.execute("ROLLBACK")
    finally:
        lite.close()
    recorder = Recorder()
    rt = open_runtime(tmp_path / "rt", {"t": recorder})
    try:
        rt.relay(outbox, lease=2.0, poll_interval=0.1)
        wait_until(lambda: rows_left(outbox) == 0, 15)
        assert in_order(recorder, sends)
        assert b"rolled:back" not in recorder.payloads()
        assert held(rt) == set(range(PARTITIONS))
    finally:
        rt.close()


def test_postgres_stopped_mid_load_nothing_lost_and_the_relay_resumes(
    tmp_path: Path, pg_url: str, postgres: PostgresServer
) -> None:
    outbox = make_outbox(pg_url)
    gate = Gate()
    recorder = Recorder(gate)
    rt = open_runtime(tmp_path / "rt", {"t": recorder}, retry=FAST_RETRY)
    first, second = keyed(1000, 50), [(t, k, s + 20) for t, k, s in keyed(500, 50)]
    try:
        rt.relay(outbox, lease=2.0, poll_interval=0.2)
        commit(outbox, first)
        assert gate.entered.wait(10)  # rows taken, their calls under way
        stopped_at = time.monotonic()
        postgres.stop()
        try:
            gate.open()  # they end while the database is down: not deleted yet
            wait_until(lambda: relay_of(rt)["last_error"] is not None, 10)
            health = relay_of(rt)
            assert health["ok"] is False
            assert rt.health()["ok"] is False
            wait_until(lambda: time.monotonic() - stopped_at >= 10.0, 15)
            assert relay_of(rt)["last_error"] is not None  # still down, still said
        finally:
            postgres.start()
        wait_until(lambda: relay_of(rt)["ok"] is True, 15)
        assert relay_of(rt)["last_error"] is None
        commit(outbox, second)
        wait_until(lambda: rows_left(outbox) == 0, 20)
        assert in_order(recorder, first + second)
        assert rt.health()["ok"] is True
    finally:
        rt.close()
