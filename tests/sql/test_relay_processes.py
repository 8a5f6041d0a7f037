"""The relay across processes: hosts (tests/sql/relay_host.py, each with a data directory
of its own, standing in for machines) relay one PostgreSQL table and POST to a real
HTTP receiver run here. Hosts are killed with SIGKILL; nothing committed may be lost,
and a key's messages must reach the receiver in order (duplicates allowed: at least
once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from surelay.routing import partition_for
from surelay.sql import SqlOutbox
from surelay.sql.rows import BUCKETS
from tests.helpers import wait_until
from tests.transports.http_server import HttpServer, Reply, Request

ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0
PARTITIONS = 16


def part_of(key: str) -> int:
    """The relays' partition of `key`: its bucket (the row's `part`) modulo partitions."""
    return partition_for(key, BUCKETS) % PARTITIONS


class Receiver:
    """The downstream: records each delivery (a 200 answer, after `delay` seconds) as
    (key, seq, relay, time); a call from a relay named in `blocking` is answered with
    nothing for a minute (the relay's call hangs)."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.deliveries: list[tuple[str, int, str, float]] = []
        self.blocked: list[tuple[str, int, str]] = []
        self.blocking: set[str] = set()
        self._lock = threading.Lock()
        self.server = HttpServer(self._answer, record=False)

    def _answer(self, request: Request) -> Reply:
        key, seq = request.body.decode().split(":")
        relay = request.headers.get("x-relay", "?")
        with self._lock:
            if relay in self.blocking:
                self.blocked.append((key, int(seq), relay))
                return Reply(delay=60.0)
            self.deliveries.append((key, int(seq), relay, time.monotonic()))
        return Reply(200, delay=self.delay)

    def delivered(self) -> set[tuple[str, int]]:
        with self._lock:
            return {(k, s) for k, s, _, _ in self.deliveries}

    def snapshot(self) -> list[tuple[str, int, str, float]]:
        with self._lock:
            return list(self.deliveries)


def order_violations(deliveries: list[tuple[str, int, str, float]]) -> list[str]:
    """Per key, the first delivery of seq n must come after the first of seq n-1 (seqs
    start at 0): a later delivery of a seq already seen is a re-delivery, allowed."""
    seen: dict[str, int] = {}  # key -> how many seqs seen so far (always a prefix)
    problems = []
    for key, seq, relay, _ in deliveries:
        count = seen.get(key, 0)
        if seq == count:
            seen[key] = count + 1
        elif seq > count:
            problems.append(f"{key}:{seq} by {relay} before {key}:{count}")
    return problems


def overlaps(
    deliveries: list[tuple[str, int, str, float]], dead: str = "", died_at: float = 0.0
) -> list[str]:
    """Keys whose messages went through a relay again after another relay had delivered
    some: a key passes through one relay at a time, handed over once (a partition is
    given back only when none of its rows is under way there). A key may come back to
    a relay from `dead`, once it died (`died_at`): its partitions are taken over by the
    live relays, the one it had taken them from among them."""
    runs: dict[str, list[tuple[str, float]]] = {}
    for key, _, relay, at in deliveries:
        relays = runs.setdefault(key, [])
        if not relays or relays[-1][0] != relay:
            relays.append((relay, at))
    problems = []
    for key, run in runs.items():
        seen: set[str] = set()
        for index, (relay, at) in enumerate(run):
            back = relay in seen
            from_dead = index > 0 and run[index - 1][0] == dead and at >= died_at
            if back and not from_dead:
                problems.append(f"{key}: {' -> '.join(r for r, _ in run)}")
                break
            seen.add(relay)
    return problems


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.server.start()
    try:
        yield receiver
    finally:
        receiver.server.stop()


class Hosts:
    """The host processes of one test, each SIGKILLed at the end if still running."""

    def __init__(self, tmp_path: Path, url: str, receiver_url: str) -> None:
        self._tmp = tmp_path
        self._url = url
        self._receiver = receiver_url
        self.children: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, *args: str, data: str | None = None, wait: str = "relaying") -> int:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.sql.relay_host",
                str(self._tmp / (data or name)),
                self._url,
                self._receiver,
                name,
                "--lease",
                str(LEASE),
                "--partitions",
                str(PARTITIONS),
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        self.children[name] = child
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line == wait, f"host {name} said {line!r} (exit code {child.poll()})"
        return child.pid

    def kill(self, name: str) -> None:
        child = self.children[name]
        child.send_signal(signal.SIGKILL)
        child.wait(10)

    def close(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait(10)
            if child.stdout is not None:
                child.stdout.close()


@pytest.fixture
def hosts(tmp_path: Path, pg_url: str, receiver: Receiver) -> Iterator[Hosts]:
    SqlOutbox(pg_url, partitions=PARTITIONS).create_table()
    hosts = Hosts(tmp_path, pg_url, receiver.server.url + "/in")
    try:
        yield hosts
    finally:
        hosts.close()


def rows_left(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM surelay_outbox").fetchone()[0])  # type: ignore[index]


def owners(url: str) -> dict[int, str]:
    """Each partition's holder (a live lease), from `<table>_leases`."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT part, owner FROM surelay_outbox_leases WHERE owner IS NOT NULL "
            "AND expires_at >= extract(epoch from clock_timestamp())"
        ).fetchall()
    return dict(rows)


def pid_of(owner: str) -> int:
    """The process id in a relay's name (`host:pid:nonce`)."""
    return int(owner.split(":")[-2])


def commit(url: str, sends: list[tuple[str, int]], *, per_transaction: int = 20) -> None:
    """Commit rows `key:seq` in transactions of `per_transaction` rows."""
    outbox = SqlOutbox(url, partitions=PARTITIONS)
    with psycopg.connect(url) as conn:
        for start in range(0, len(sends), per_transaction):
            with conn.transaction():
                outbox.send_batch(
                    conn,
                    [
                        {"transport": "http", "payload": f"{k}:{s}".encode(), "key": k}
                        for k, s in sends[start : start + per_transaction]
                    ],
                )


def test_host_killed_between_commit_and_relay_loses_nothing(
    hosts: Hosts, receiver: Receiver, pg_url: str
) -> None:
    # the host commits 300 rows, then dies (kill -9) before any relay runs
    hosts.start("a", "--send", "300", "--no-relay", wait="committed")
    hosts.kill("a")
    assert rows_left(pg_url) == 300
    assert receiver.delivered() == set()
    # restarted on its own data directory, it relays them all
    hosts.start("a2", data="a")
    expected = {(f"h{n % 10}", n // 10) for n in range(300)}
    wait_until(lambda: receiver.delivered() == expected, 30)
    wait_until(lambda: rows_left(pg_url) == 0, 10)
    assert order_violations(receiver.snapshot()) == []


def test_relay_killed_holding_taken_rows_another_delivers_them(
    hosts: Hosts, receiver: Receiver, pg_url: str
) -> None:
    sends = [(f"k{n % 20}", n // 20) for n in range(200)]
    # every call of relay a hangs, also one still in the socket when a is killed: a holds
    # the rows it took and delivers none
    receiver.blocking = {"a"}
    hosts.start("a")
    commit(pg_url, sends)
    wait_until(lambda: len(receiver.blocked) >= 10, 15)
    assert rows_left(pg_url) == 200  # taken, under way, not deleted
    hosts.kill("a")
    hosts.start("b")
    wait_until(lambda: receiver.delivered() == set(sends), 30)
    wait_until(lambda: rows_left(pg_url) == 0, 10)
    assert {relay for _, _, relay, _ in receiver.snapshot()} == {"b"}
    assert {(k, s) for k, s, _ in receiver.blocked} <= set(sends)
    assert order_violations(receiver.snapshot()) == []


class Producer(threading.Thread):
    """Commits `total` rows over `keys` keys, `per_second` a second, in order of seq
    per key."""

    def __init__(self, url: str, total: int, keys: int, per_second: float) -> None:
        super().__init__(name="producer", daemon=True)
        self.sends = [(f"key{n % keys}", n // keys) for n in range(total)]
        self._url = url
        self._per_second = per_second
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            step = 50
            for start in range(0, len(self.sends), step):
                commit(self._url, self.sends[start : start + step], per_transaction=25)
                self.committed = start + step
                ahead = started + self.committed / self._per_second - time.monotonic()
                if ahead > 0:
                    threading.Event().wait(ahead)  # pacing the load, not a wait for a result
        except BaseException as error:
            self.error = error


def test_relays_join_and_die_under_load_every_row_in_order(
    hosts: Hosts, receiver: Receiver, pg_url: str
) -> None:
    receiver.delay = 0.04  # rows queued in each relay when partitions move
    pids = {"a": hosts.start("a"), "b": hosts.start("b")}

    def split_between(*relays: str) -> bool:
        now = owners(pg_url)
        return len(now) == PARTITIONS and {pid_of(o) for o in now.values()} == {
            pids[r] for r in relays
        }

    wait_until(lambda: split_between("a", "b"), 15)
    producer = Producer(pg_url, total=5000, keys=50, per_second=800)
    producer.start()

    # a third relay joins mid-run: the partitions are spread over three
    def delivered(count: int) -> bool:
        assert producer.error is None, producer.error
        return len(receiver.delivered()) >= count

    wait_until(lambda: delivered(1500), 30)
    pids["c"] = hosts.start("c")
    wait_until(lambda: split_between("a", "b", "c"), 15)
    wait_until(lambda: delivered(3000), 30)
    # one dies (kill -9) holding partitions with rows under way
    held = {part for part, owner in owners(pg_url).items() if pid_of(owner) == pids["a"]}
    assert held
    hosts.kill("a")
    killed_at = time.monotonic()
    deliveries_before = len(receiver.snapshot())

    def taken_over() -> bool:
        now = owners(pg_url)
        return all(part in now and pid_of(now[part]) != pids["a"] for part in held)

    wait_until(taken_over, LEASE + 10)
    leases_at = time.monotonic() - killed_at
    producer.join(30)
    assert producer.error is None, producer.error
    wait_until(lambda: delivered(len(producer.sends)), 60)
    assert receiver.delivered() == set(producer.sends)
    wait_until(lambda: rows_left(pg_url) == 0, 10)
    deliveries = receiver.snapshot()
    first_after = min(
        (
            at
            for key, _, relay, at in deliveries[deliveries_before:]
            if relay != "a" and part_of(key) in held
        ),
        default=None,
    )
    assert first_after is not None
    delivered_at = first_after - killed_at
    print(f"takeover: leases {leases_at:.2f}s, first delivery {delivered_at:.2f}s")
    assert leases_at <= LEASE + 2
    assert delivered_at <= LEASE + 2
    assert order_violations(deliveries) == []
    assert overlaps(deliveries, dead="a", died_at=killed_at) == []
    assert {relay for _, _, relay, _ in deliveries} == {"a", "b", "c"}
