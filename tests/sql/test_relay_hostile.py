"""The relay against what a table may hold and what may happen around it: rows written by
anyone (every bad one dead-lettered `invalid`, naming its problem, between good rows of
its key that still go in order), a partition given back and wanted again (its rows are
read from the start, not overtaken), tables of one name in two schemas (their locks are
their own), leases that could not be renewed in time (no rows taken on them), and the
backlog shown in `health()` (counted up to a cap, aged by its first row)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from surelay import Runtime
from surelay.routing import partition_for
from surelay.sql import SqlOutbox
from surelay.sql.database import BACKLOG_CAP
from surelay.sql.dialect import COLUMNS
from surelay.sql.leases import share
from surelay.sql.rows import BUCKETS
from tests.helpers import Gate, Recorder, open_runtime, wait_until

KEY = "k"


def key_in(partition: int, partitions: int, prefix: str = "k") -> str:
    """A key whose rows fall in `partition` of `partitions` (its bucket modulo them)."""
    n = 0
    while partition_for(f"{prefix}{n}", BUCKETS) % partitions != partition:
        n += 1
    return f"{prefix}{n}"


def relay_of(rt: Runtime) -> dict[str, Any]:
    (health,) = rt.health()["relays"].values()
    return dict(health)


def rows_left(outbox: SqlOutbox) -> int:
    if outbox.kind == "sqlite":
        with sqlite3.connect(outbox.target) as lite:
            return int(lite.execute(f"SELECT count(*) FROM {outbox.table}").fetchone()[0])
    with psycopg.connect(outbox.target) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {outbox.table}").fetchone()[0])  # type: ignore[index]


def raw_row(**values: object) -> dict[str, object]:
    """A row's columns as a sender would write them for KEY, with `values` instead."""
    row: dict[str, object] = {
        "message_id": "m",
        "part": partition_for(KEY, BUCKETS),
        "transport": "t",
        "payload": b"p",
        "msg_key": KEY,
        "idempotency_key": None,
        "priority": 1,
        "headers": None,
        "created_at": time.time(),
        "not_before": None,
        "msg_type": None,
    }
    row.update(values)
    return row


def insert_raw(conn: Any, outbox: SqlOutbox, row: dict[str, object]) -> None:
    """One row by hand, past every check of `send` (sqlite3 or psycopg `conn`)."""
    style = "%({})s" if outbox.kind == "postgresql" else ":{}"
    marks = ", ".join(style.format(c) for c in COLUMNS)
    conn.execute(f"INSERT INTO {outbox.table} ({', '.join(COLUMNS)}) VALUES ({marks})", row)


DEEP = "[" * 100_000
HUGE = '{"x-big": "' + "a" * 2_000_000 + '"}'

# (message id, columns, what its dead letter's reason must say); None: delivered
EITHER: list[tuple[str, dict[str, object], str | None]] = [
    ("deep", {"headers": DEEP}, "unreadable headers (maximum recursion depth"),
    ("huge", {"headers": HUGE}, "headers take 2000005 bytes, over"),
    ("notjson", {"headers": "not json"}, "headers are not JSON"),
    ("five", {"headers": "5"}, "headers must be a mapping"),
    ("", {}, "no message id"),
    ("nope", {"transport": "5"}, "unknown transport '5'"),
    ("emptytype", {"msg_type": ""}, "msg_type is '', not a non-empty str"),
]
SQLITE_ONLY: list[tuple[str, dict[str, object], str | None]] = [
    ("text", {"payload": "a text, not bytes"}, "payload is str, not bytes"),
    ("nullpayload", {"payload": None}, "payload is NoneType, not bytes"),
    ("bytekey", {"msg_key": b"k"}, "key is b'k', not a non-empty str"),
    ("numtransport", {"transport": 5}, "unknown transport 5"),
    ("nullid", {"message_id": None}, "no message id"),
    ("nocreated", {"created_at": None}, None),  # no time of its own: relayed, aged from now
    ("texttime", {"not_before": "soon"}, "not_before is 'soon', not epoch seconds"),
]

UNTYPED = """CREATE TABLE {t} (
    id INTEGER PRIMARY KEY AUTOINCREMENT, message_id, part, transport, payload, msg_key,
    idempotency_key, priority, headers, created_at)"""
"""A SQLite table whose columns take anything (as a table made by hand may)."""


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_hostile_rows_are_dead_lettered_invalid_between_good_rows_kept_in_order(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url")
    outbox = SqlOutbox(url, partitions=4)
    hostile = EITHER + (SQLITE_ONLY if database == "sqlite" else [])
    if database == "sqlite":
        with sqlite3.connect(outbox.target) as lite:
            lite.execute(UNTYPED.format(t=outbox.table))
        outbox.create_table()
        conn: Any = sqlite3.connect(outbox.target)
    else:
        outbox.create_table()
        conn = psycopg.connect(outbox.target)
    good: list[bytes] = []
    try:
        for n, (message_id, values, _) in enumerate(hostile):
            good.append(f"{KEY}:{n}".encode())
            outbox.send(conn, "t", good[-1], key=KEY)
            columns = {"message_id": message_id, "payload": f"{KEY}:{n}.5".encode(), **values}
            insert_raw(conn, outbox, raw_row(**columns))
        good.append(f"{KEY}:end".encode())
        outbox.send(conn, "t", good[-1], key=KEY)
        conn.commit()
    finally:
        conn.close()
    recorder = Recorder()
    rt = open_runtime(tmp_path / "rt", {"t": recorder})
    try:
        rt.relay(outbox, lease=2.0, poll_interval=0.2)
        wait_until(lambda: rows_left(outbox) == 0, 15)
        delivered = recorder.payloads(KEY)
        expected = list(good)
        if database == "sqlite":  # the row without created_at is relayed, in its place
            at = next(i for i, (m, _, _) in enumerate(hostile) if m == "nocreated")
            expected.insert(at + 1, f"{KEY}:{at}.5".encode())
        assert delivered == expected
        dead = {d.message_id: d for d in rt.dead_letters.list(limit=1000)}
        assert all(d.reason_class == "invalid" for d in dead.values())
        # a row without a usable message id is named by its row id (good, bad, good...)
        wanted = {}
        for n, (m, values, reason) in enumerate(hostile):
            named = values.get("message_id", m)
            if reason is not None:
                wanted[named if isinstance(named, str) and named else f"row-{2 * n + 2}"] = reason
        assert dead.keys() == wanted.keys()
        for message_id, reason in wanted.items():
            assert reason in dead[message_id].reason, (message_id, dead[message_id].reason)
        wait_until(lambda: relay_of(rt)["in_flight"] == 0, 5)
        health = relay_of(rt)
        assert health["ok"] is True, health
        assert health["last_error"] is None
    finally:
        rt.close()


def lease_renewed_after(outbox: SqlOutbox, relay: str, moment: float, lease: float) -> bool:
    """Whether `relay` renewed its leases (one beat) with a clock past `moment` (SQLite:
    the relay's clock is this machine's)."""
    with sqlite3.connect(outbox.target) as lite:
        rows = lite.execute(
            f"SELECT expires_at FROM {outbox.dialect.leases} WHERE owner = ?", (relay,)
        ).fetchall()
    return bool(rows) and min(r[0] for r in rows) - lease > moment


def registered(outbox: SqlOutbox, relay: str) -> bool:
    with sqlite3.connect(outbox.target) as lite:
        rows = lite.execute(
            f"SELECT 1 FROM {outbox.dialect.relays} WHERE relay = ?", (relay,)
        ).fetchall()
    return bool(rows)


def send_rows(outbox: SqlOutbox, rows: list[tuple[str, int]]) -> None:
    """Rows (key, seq) with payload `key:seq`, committed together in this order."""
    with sqlite3.connect(outbox.target) as lite:
        for key, seq in rows:
            outbox.send(lite, "t", f"{key}:{seq}".encode(), key=key)


def test_a_partition_wanted_again_before_it_was_given_back_is_read_from_its_first_row(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Relay `a` is giving a busy partition back (relay `b` joined): `a` reads only its
    other one, and its cursor passes rows of the busy one committed meanwhile. `b`
    leaves before the give-back: `a` wants the partition again, never having lost it,
    and must read it from its first row, not from the cursor (a later row of a key
    would overtake an earlier one, left for the next rescan)."""
    lease, partitions = 1.0, 2
    outbox = SqlOutbox(sqlite_url, partitions=partitions)
    outbox.create_table()
    keys = [key_in(p, partitions) for p in range(partitions)]
    send_rows(outbox, [(key, 0) for key in keys])
    gate = Gate()
    recorder = Recorder(gate)
    rt_a = open_runtime(tmp_path / "a", {"t": recorder})
    rt_b = open_runtime(tmp_path / "b", {"t": Recorder()})
    try:
        rt_a.relay(outbox, lease=lease, poll_interval=30.0)  # only the cursor reads
        assert gate.entered.wait(10)
        wait_until(lambda: relay_of(rt_a)["in_flight"] == partitions, 10)  # both busy
        a = relay_of(rt_a)["relay"]
        assert set(relay_of(rt_a)["partitions"]) == {0, 1}
        rt_b.relay(outbox, lease=lease, poll_interval=30.0)
        b = relay_of(rt_b)["relay"]
        (given,) = share([a, b], partitions, b)  # what `a` gives back once its row ends
        (kept,) = set(range(partitions)) - {given}
        wait_until(lambda: registered(outbox, b), 10)
        seen = time.time()
        wait_until(lambda: lease_renewed_after(outbox, a, seen, lease), 10)  # `a` saw `b`
        send_rows(outbox, [(keys[given], 1), (keys[kept], 1)])
        wait_until(lambda: relay_of(rt_a)["in_flight"] == 3, 10)  # cursor past both
        assert relay_of(rt_b)["partitions"] == []  # still busy in `a`
        rt_b.close()
        left = time.time()
        wait_until(lambda: lease_renewed_after(outbox, a, left, lease), 10)  # `a` wants it
        send_rows(outbox, [(keys[given], 2)])
        gate.open()
        wait_until(lambda: f"{keys[given]}:2".encode() in recorder.payloads(), 10)
        assert recorder.payloads(keys[given]) == [f"{keys[given]}:{n}".encode() for n in range(3)]
        wait_until(lambda: rows_left(outbox) == 0, 10)
        assert recorder.payloads(keys[kept]) == [f"{keys[kept]}:{n}".encode() for n in range(2)]
    finally:
        gate.open()
        rt_b.close()
        rt_a.close()


def test_tables_of_one_name_in_two_schemas_are_relayed_at_once(pg_url: str, tmp_path: Path) -> None:
    """Each schema's table has locks of its own (keyed by the table, not its name)."""
    named = SqlOutbox(pg_url, table="Orders_Outbox")
    named.create_table()
    named.create_table()  # again: its trigger is found whatever the name's case
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA a; CREATE SCHEMA b")
    outboxes = [SqlOutbox(f"{pg_url}?options=-csearch_path%3D{s}", partitions=4) for s in "ab"]
    recorders = [Recorder(), Recorder()]
    runtimes = [open_runtime(tmp_path / s, {"t": r}) for s, r in zip("ab", recorders, strict=True)]
    try:
        for outbox, schema in zip(outboxes, "ab", strict=True):
            outbox.create_table()
            with psycopg.connect(outbox.target) as conn:
                for n in range(20):
                    outbox.send(conn, "t", f"{schema}:{n}".encode(), key=f"k{n % 5}")
        for rt, outbox in zip(runtimes, outboxes, strict=True):
            rt.relay(outbox, lease=2.0, poll_interval=0.2)
        wait_until(lambda: all(rows_left(o) == 0 for o in outboxes), 10)
        for recorder, schema in zip(recorders, "ab", strict=True):
            assert sorted(recorder.payloads()) == sorted(
                f"{schema}:{n}".encode() for n in range(20)
            )
        assert all(len(relay_of(rt)["partitions"]) == 4 for rt in runtimes)
    finally:
        for rt in runtimes:
            rt.close()


def test_the_backlog_is_counted_up_to_its_cap_and_aged_by_its_first_row(
    sqlite_url: str, tmp_path: Path
) -> None:
    outbox = SqlOutbox(sqlite_url)
    outbox.create_table()
    now = time.time()
    rows = [raw_row(message_id=f"m{n}", created_at=now) for n in range(BACKLOG_CAP + 10)]
    rows[0]["created_at"] = now - 1000  # the first row: the oldest
    rows[1]["created_at"] = now - 5000  # a sender's clock behind: not the backlog's age
    with sqlite3.connect(outbox.target) as lite:
        lite.executemany(
            f"INSERT INTO {outbox.table} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join(':' + c for c in COLUMNS)})",
            rows,
        )
    gate = Gate()
    rt = open_runtime(tmp_path / "rt", {"t": Recorder(gate)})
    try:
        rt.relay(outbox, lease=2.0, poll_interval=30.0)
        wait_until(lambda: relay_of(rt)["waiting"] is not None, 10)
        health = relay_of(rt)
        assert health["waiting"] == BACKLOG_CAP
        assert 1000 <= health["oldest_age"] < 1100
    finally:
        gate.open()
        rt.close(timeout=1.0)


def test_rows_are_not_taken_on_a_lease_renewed_too_late(sqlite_url: str, tmp_path: Path) -> None:
    """The test holds the database's write lock past the relay's lease, a row committed
    with it: the relay's beat hangs, then renews with the time it read before the hang
    (a lease already run out, which others could take). It must not take the row on
    that renewal; its next one is refused (a trigger stands for a database that fails
    then), so no row may be taken at all until the database accepts renewals again."""
    lease = 1.0
    outbox = SqlOutbox(sqlite_url, partitions=1)
    outbox.create_table()
    with sqlite3.connect(outbox.target) as lite:
        lite.executescript(
            f"""CREATE TABLE refuse (after REAL);
            CREATE TRIGGER refuse_renewals BEFORE UPDATE ON {outbox.dialect.leases}
            WHEN NEW.expires_at > (SELECT after FROM refuse)
            BEGIN SELECT RAISE(ABORT, 'renewal refused by the test'); END;"""
        )
    recorder = Recorder()
    rt = open_runtime(tmp_path / "rt", {"t": recorder})
    lock = sqlite3.connect(outbox.target, isolation_level=None, timeout=30.0)
    try:
        rt.relay(outbox, lease=lease, poll_interval=30.0)
        wait_until(lambda: relay_of(rt)["partitions"] == [0], 10)
        lock.execute("BEGIN IMMEDIATE")  # the relay's writes wait (its reads do not)
        outbox.send(lock, "t", b"late", key="k")
        (alive_until,) = lock.execute(f"SELECT expires_at FROM {outbox.dialect.relays}").fetchone()
        # its last beat was at alive_until - lease, the one hanging now within a beat
        # after: that one's renewal passes (stale), any later one is refused
        lock.execute("INSERT INTO refuse VALUES (?)", (alive_until + 0.5 * lease,))
        wait_until(lambda: time.time() > alive_until + 0.8 * lease, 5)
        lock.execute("COMMIT")
        wait_until(lambda: "renewal refused" in (relay_of(rt)["last_error"] or ""), 10)
        health = relay_of(rt)
        assert (health["in_flight"], health["relayed"]) == (0, 0), health
        assert recorder.attempts == []
        with sqlite3.connect(outbox.target, timeout=30.0) as lite:
            lite.execute("DELETE FROM refuse")
        wait_until(lambda: rows_left(outbox) == 0, 10)
        assert recorder.payloads() == [b"late"]
        wait_until(lambda: relay_of(rt)["ok"] is True, 10)
    finally:
        lock.close()
        rt.close()
