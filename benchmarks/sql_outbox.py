"""The transactional outbox on PostgreSQL and SQLite: surelay against DBOS, PgQueuer and
procrastinate, doing the same work in the same run.

Run (from the repository root; the bench extra installs the peers):

    .venv/bin/python benchmarks/sql_outbox.py [--messages N] [--quick]

The work: 16 host threads each commit transactions that insert a business row (an order)
and, in the same transaction, one message; the message is delivered to a no-op step, then
(another row) to a 20 ms downstream step. A row's figure is messages per second from the
first commit to the last delivery (beside it, commits per second to the last commit: a
row whose two rates are alike was bound by its producers). Each system gets a fresh
database of its own, and each row runs in a fresh process (producers and consumers share
it, as in a host). Rows differ in size (`MESSAGES`) so that each takes some seconds.

- surelay: `SqlOutbox.send(conn, ...)` on the host's connection inside its transaction;
  `Runtime.relay` moves committed rows into the runtime, whose transport is the step (a
  plain callable: 20 ms is `time.sleep`, on the runtime's threads, 64 calls in flight).
- DBOS 3.x: what DBOS documents for exactly-once work with the application's data: a
  workflow runs a datasource transaction (the order row, committed together with DBOS's
  checkpoint) and then enqueues the delivery workflow on a queue (recorded as the
  workflow's child: enqueued exactly once); the host thread calls that workflow. The
  delivery workflow runs the step (a `time.sleep`) with `worker_concurrency=64` (no limit
  for the no-op). The transaction is READ COMMITTED, like the others' (the datasource's
  default is SERIALIZABLE). DBOS's queue worker looks for work once per
  `polling_interval_sec` (default 1 s, which would cap it at 64 deliveries a second):
  set to 10 ms here, its tuning for throughput. On SQLite both databases are SQLite files.
- PgQueuer: `SyncQueries(SyncPsycopgDriver(conn)).enqueue` on the host's connection inside
  its transaction; an async entrypoint (`asyncio.sleep`), 64 at once, dequeued 64 a batch.
- procrastinate: `task.configure(connection=conn).defer(...)` on the host's psycopg
  connection inside its transaction; an async task (`asyncio.sleep`), worker concurrency 64.
  PgQueuer and procrastinate run on PostgreSQL only ("n/a" on SQLite).

Then surelay alone, each beside its bare baseline (relay throughput and latency first,
on a quiet machine: each row above leaves its database busy for a while):
- the cost inside the host's transaction: the same 16 threads committing the order row
  with `outbox.send` against without it (goal: at most 1.3 times as long); beside it,
  the same with a second plain INSERT (no surelay) instead of `outbox.send`: the cost
  of any second statement, a floor for the outbox's;
- relay throughput: a table pre-filled with rows, drained by `rt.relay` into the runtime
  to a no-op transport (goal: at least 10,000 messages a second);
- commit-to-call latency at a paced 1,000 messages a second, committed by 2 producer
  processes of their own (so that the pace holds on a small machine): a producer notes
  each order's wall-clock time just before its COMMIT, the transport the time of its
  call; p50 and p99 of the differences.

The PostgreSQL cluster is the tests' own (`tests/postgres_server.py`: fsync off,
synchronous_commit off), the same for every system; the cost inside the transaction is
also measured on a second cluster with PostgreSQL's defaults (`postgresql-durable`:
fsync and synchronous commit on, as a production database runs, where a commit waits
for its WAL flush). The hosts' SQLite files are in WAL mode. The machine's load average
is printed: figures taken beside other work are lower.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import procrastinate
import psycopg
import sqlalchemy as sa
from dbos import DBOS, SQLAlchemyDatasource
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver, SyncPsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries, SyncQueries

from surelay import PressurePolicy, Runtime, RuntimeConfig
from surelay.sql import SqlOutbox

ROOT = Path(__file__).resolve().parent.parent
THREADS = 16
IN_FLIGHT = 64
DELAY = 0.02  # the slow downstream step, seconds
SYSTEMS = ("surelay", "dbos", "pgqueuer", "procrastinate")
POSTGRES_ONLY = ("pgqueuer", "procrastinate")
# Messages per throughput row, so that a row takes some 5 to 20 s on a 2-core machine
# (a fifth of it with --quick; --messages sets every row's).
MESSAGES = {"surelay": 6_000, "dbos": 200, "pgqueuer": 4_000, "procrastinate": 1_500}
COST_GOAL = 1.3
RELAY_GOAL = 10_000
LATENCY_GOAL = (20, 100)  # ms: p50, p99
LATENCY_RATE = 1_000
DBOS_POLL = 0.01  # seconds; its default (1 s) caps a queue at worker_concurrency a second

ORDERS_PG = (
    "create table orders (id bigint primary key, customer text not null, "
    "amount numeric(12, 2) not null, created_at timestamptz not null default now())"
)
ORDERS_SQLITE = (
    "create table orders (id integer primary key, customer text not null, "
    "amount real not null, created_at text not null default current_timestamp)"
)
INSERT_PG = "insert into orders (id, customer, amount) values (%s, %s, %s)"
INSERT_SQLITE = "insert into orders (id, customer, amount) values (?, ?, ?)"


def order(i: int) -> tuple[int, str, float]:
    return i, f"customer-{i % 1000}", 10.0 + i % 100


def payload(i: int) -> bytes:
    return json.dumps({"order": i, "event": "paid"}).encode()


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def create_orders(url: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(url)) as conn:
            conn.execute("pragma journal_mode=wal")
            conn.execute(ORDERS_SQLITE)
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ORDERS_PG)


@contextmanager
def connection(url: str) -> Iterator[Any]:
    """A host's connection: psycopg in autocommit mode (transactions are explicit), or
    sqlite3 with a generous busy timeout (16 writers take turns)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url), timeout=120, check_same_thread=False)
        try:
            yield conn
        finally:
            conn.close()
        return
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


@contextmanager
def transaction(conn: Any) -> Iterator[None]:
    if isinstance(conn, sqlite3.Connection):
        with conn:
            yield
        return
    with conn.transaction():
        yield


def insert_order(conn: Any, i: int) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.execute(INSERT_SQLITE, order(i))
    else:
        conn.execute(INSERT_PG, order(i))


class Tally:
    """Counts deliveries; `done` is set at the `expect`th, `last` is when it came."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.count = 0
        self.last = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def delivered(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.expect:
                self.last = time.perf_counter()
                self.done.set()


def produce(url: str, n: int, commit: Callable[[Any, int], None]) -> tuple[float, float]:
    """16 threads commit `n` transactions between them, each by `commit(conn, i)` on a
    connection of the thread's own; returns when the first and the last commit returned."""
    numbers = itertools.count()
    lock = threading.Lock()
    first = [float("inf")]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with connection(url) as conn:
                while True:
                    with lock:
                        i = next(numbers)
                    if i >= n:
                        return
                    commit(conn, i)
                    if i < THREADS:
                        with lock:
                            first[0] = min(first[0], time.perf_counter())
        except BaseException as e:
            errors.append(e)
            raise

    workers = [threading.Thread(target=worker) for _ in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    last = time.perf_counter()
    if errors:
        raise SystemExit(f"a producer failed: {errors[0]!r}")
    return first[0], last


def wait(tally: Tally, stall: float = 60) -> None:
    """Until every message is delivered; gives up once none was for `stall` seconds."""
    seen = -1
    while not tally.done.wait(stall):
        if tally.count == seen:
            raise SystemExit(f"stalled: {tally.count} of {tally.expect} delivered")
        seen = tally.count


# --- surelay --------------------------------------------------------------------------


def surelay_outbox(url: str) -> SqlOutbox:
    outbox = SqlOutbox(url)
    outbox.create_table()
    return outbox


def surelay_send(outbox: SqlOutbox, conn: Any, i: int) -> None:
    outbox.send(conn, "hooks", payload(i), key=f"order-{i}", idempotency_key=f"order-{i}-paid")


@contextmanager
def surelay_relay(outbox: SqlOutbox, transport: Callable[[Any], None]) -> Iterator[Any]:
    config = RuntimeConfig(concurrency=IN_FLIGHT, pressure=PressurePolicy(capacity=10_000_000))
    with (
        tempfile.TemporaryDirectory() as path,
        Runtime.open(path, transports={"hooks": transport}, config=config) as rt,
    ):
        rt.relay(outbox, batch=500, poll_interval=1.0, lease=10.0)  # stops at close
        yield rt


def run_surelay(url: str, n: int, delay: float) -> tuple[float, float, float]:
    create_orders(url)
    outbox = surelay_outbox(url)
    tally = Tally(n)

    def transport(_envelope: Any) -> None:
        if delay:
            time.sleep(delay)
        tally.delivered()

    def commit(conn: Any, i: int) -> None:
        with transaction(conn):
            insert_order(conn, i)
            surelay_send(outbox, conn, i)

    with surelay_relay(outbox, transport):
        first, committed = produce(url, n, commit)
        wait(tally)
    return first, committed, tally.last


# --- DBOS -----------------------------------------------------------------------------


def run_dbos(url: str, n: int, delay: float) -> tuple[float, float, float]:
    create_orders(url)
    sqlite = url.startswith("sqlite")
    if sqlite:
        app_url = url
        system_url = url.replace(".db", "-dbos-system.db")
    else:
        app_url = url.replace("postgresql://", "postgresql+psycopg://")
        system_url = url
    insert = sa.text("insert into orders (id, customer, amount) values (:id, :customer, :amount)")
    tally = Tally(n)
    queues: list[Any] = []
    DBOS(config={"name": "sql-outbox-bench", "system_database_url": system_url})
    ds = SQLAlchemyDatasource.create(app_url)

    # READ COMMITTED, as the other hosts' transactions (SQLite has only SERIALIZABLE)
    @ds.transaction(isolation_level="SERIALIZABLE" if sqlite else "READ COMMITTED")
    def insert_order_row(i: int) -> None:
        number, customer, amount = order(i)
        ds.sql_session().execute(insert, {"id": number, "customer": customer, "amount": amount})

    @DBOS.step()
    def call_downstream(body: str) -> None:
        if delay:
            time.sleep(delay)

    @DBOS.workflow()
    def deliver(body: str) -> None:
        call_downstream(body)
        tally.delivered()

    @DBOS.workflow()
    def place_order(i: int) -> None:
        insert_order_row(i)
        queues[0].enqueue(deliver, payload(i).decode())

    DBOS.launch()
    queues.append(
        DBOS.register_queue(
            "hooks",
            worker_concurrency=IN_FLIGHT if delay else None,
            polling_interval_sec=DBOS_POLL,
        )
    )
    try:
        first, committed = produce(url, n, lambda _conn, i: place_order(i))
        wait(tally)
    finally:
        DBOS.destroy()
    return first, committed, tally.last


# --- PgQueuer -------------------------------------------------------------------------


class LoopThread:
    """An event loop on a thread of its own, for the async consumers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def run_pgqueuer(url: str, n: int, delay: float) -> tuple[float, float, float]:
    create_orders(url)
    tally = Tally(n)
    loop = LoopThread()

    async def start() -> tuple[Any, asyncio.Future[None]]:
        conn = await asyncpg.connect(url)
        driver = AsyncpgDriver(conn)
        await Queries(driver).install()
        pgq = PgQueuer(driver)

        @pgq.entrypoint("deliver", concurrency_limit=IN_FLIGHT)
        async def deliver(job: Job) -> None:
            if delay:
                await asyncio.sleep(delay)
            tally.delivered()

        running = asyncio.ensure_future(pgq.run(batch_size=IN_FLIGHT))
        return pgq, running

    pgq, running = loop.run(start())

    def commit(conn: Any, i: int) -> None:
        queries = SyncQueries(SyncPsycopgDriver(conn))
        with conn.transaction():
            insert_order(conn, i)
            queries.enqueue("deliver", payload(i))

    try:
        first, committed = produce(url, n, commit)
        wait(tally)
    finally:

        async def stop() -> None:
            pgq.shutdown.set()
            await asyncio.wait_for(running, 30)

        loop.run(stop())
        loop.close()
    return first, committed, tally.last


# --- procrastinate --------------------------------------------------------------------


def run_procrastinate(url: str, n: int, delay: float) -> tuple[float, float, float]:
    create_orders(url)
    tally = Tally(n)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="deliver")
    async def deliver(body: str) -> None:
        if delay:
            await asyncio.sleep(delay)
        tally.delivered()

    # The producers' side: an app of the same task on procrastinate's sync connector,
    # which runs the defer on the connection given (the worker's connector is async).
    producer = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))

    @producer.task(name="deliver")
    def deliver_later(body: str) -> None:
        raise AssertionError("the worker's app runs it")

    loop = LoopThread()

    async def start() -> asyncio.Task[None]:
        await app.open_async()
        await app.schema_manager.apply_schema_async()
        return asyncio.ensure_future(
            app.run_worker_async(concurrency=IN_FLIGHT, wait=True, install_signal_handlers=False)
        )

    running = loop.run(start())

    def commit(conn: Any, i: int) -> None:
        with conn.transaction():
            insert_order(conn, i)
            deliver_later.configure(connection=conn).defer(body=payload(i).decode())

    try:
        first, committed = produce(url, n, commit)
        wait(tally)
    finally:

        async def stop() -> None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await app.close_async()

        loop.run(stop())
        loop.close()
    return first, committed, tally.last


RUNNERS: dict[str, Callable[[str, int, float], tuple[float, float, float]]] = {
    "surelay": run_surelay,
    "dbos": run_dbos,
    "pgqueuer": run_pgqueuer,
    "procrastinate": run_procrastinate,
}


# --- surelay alone: the cost in the transaction, relay throughput, latency -------------


def host_cost(url: str, n: int) -> dict[str, float]:
    """16 threads commit `n` transactions with the order row: bare, with `outbox.send`
    in it, and with a second plain INSERT instead (a table of the outbox's columns, no
    trigger: what any second statement costs); three times each, alternating; the best
    time of each."""
    create_orders(url)
    outbox = surelay_outbox(url)
    sqlite = url.startswith("sqlite")
    with connection(url) as conn, transaction(conn):
        conn.execute(
            "create table events (id integer primary key autoincrement, transport text, "
            "payload blob, msg_key text, idempotency_key text, created_at real)"
            if sqlite
            else "create table events (id bigserial primary key, transport text, "
            "payload bytea, msg_key text, idempotency_key text, created_at double precision)"
        )
    event = "insert into events (transport, payload, msg_key, idempotency_key, created_at) " + (
        "values (?, ?, ?, ?, ?)" if sqlite else "values (%s, %s, %s, %s, %s)"
    )
    offset = itertools.count(0, n)

    def bare(conn: Any, i: int) -> None:
        with transaction(conn):
            insert_order(conn, i)

    def with_send(conn: Any, i: int) -> None:
        with transaction(conn):
            insert_order(conn, i)
            surelay_send(outbox, conn, i)

    def with_insert(conn: Any, i: int) -> None:
        with transaction(conn):
            insert_order(conn, i)
            conn.execute(event, ("hooks", payload(i), f"order-{i}", f"order-{i}-paid", time.time()))

    def timed(commit: Callable[[Any, int], None]) -> float:
        base = next(offset)
        start = time.perf_counter()
        produce(url, n, lambda conn, i: commit(conn, base + i))
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"bare": [], "send": [], "insert": []}
    for _ in range(3):
        for name, commit in (("bare", bare), ("send", with_send), ("insert", with_insert)):
            times[name].append(timed(commit))
    return {name: n / min(seconds) for name, seconds in times.items()}


def relay_throughput(url: str, n: int) -> dict[str, float]:
    """Pre-fill the outbox with `n` rows (1000 a transaction, untimed), then time
    `rt.relay` draining them to a no-op transport."""
    create_orders(url)
    outbox = surelay_outbox(url)
    with connection(url) as conn:
        for start in range(0, n, 1000):
            with transaction(conn):
                outbox.send_batch(
                    conn,
                    [
                        {
                            "transport": "hooks",
                            "payload": payload(i),
                            "key": f"order-{i}",
                            "idempotency_key": f"order-{i}-paid",
                        }
                        for i in range(start, min(n, start + 1000))
                    ],
                )
    tally = Tally(n)

    def noop(_envelope: Any) -> None:
        tally.delivered()

    started = time.perf_counter()
    with surelay_relay(outbox, noop):
        wait(tally)
    return {"rate": n / (tally.last - started)}


PACERS = 2  # producer processes for the latency figure, each paced at its share


def pace(url: str, seconds: float, index: int) -> dict[str, Any]:
    """One of the latency figure's producer processes: 8 threads share one schedule of
    LATENCY_RATE / PACERS commits a second. Each order's wall-clock time just before its
    COMMIT is returned (order number -> time), for the relaying process to subtract from
    the time of its call. Order ids are i * PACERS + index."""
    outbox = surelay_outbox(url)
    rate = LATENCY_RATE / PACERS
    n = int(seconds * rate)
    numbers = itertools.count()
    lock = threading.Lock()
    start = time.perf_counter()
    last = [start]
    committed: dict[int, float] = {}

    def worker() -> None:
        with connection(url) as conn:
            while True:
                with lock:
                    i = next(numbers)
                if i >= n:
                    return
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
                number = i * PACERS + index
                body = json.dumps({"order": number}).encode()
                with transaction(conn):
                    insert_order(conn, number)
                    outbox.send(conn, "hooks", body, key=f"order-{number}")
                    committed[number] = time.time()  # the COMMIT follows at once
                last[0] = max(last[0], time.perf_counter())

    workers = [threading.Thread(target=worker) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"messages": n, "paced": n / (last[0] - start), "committed": committed}


def latency(url: str, seconds: float) -> dict[str, float]:
    """Commit-to-call latency: PACERS producer processes (see `pace`) commit at a paced
    LATENCY_RATE in all, while this process relays; the transport notes the wall-clock
    time of each order's call, and the producers the time just before its COMMIT."""
    create_orders(url)
    outbox = surelay_outbox(url)
    n = PACERS * int(seconds * LATENCY_RATE / PACERS)
    called: dict[int, float] = {}
    tally = Tally(n)

    def transport(envelope: Any) -> None:
        called.setdefault(json.loads(envelope.payload)["order"], time.time())
        tally.delivered()

    committed: dict[int, float] = {}
    with surelay_relay(outbox, transport):
        pacers = [
            subprocess.Popen(
                [sys.executable, __file__, "pace", url, str(seconds), str(index)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for index in range(PACERS)
        ]
        paced = 0.0
        for pacer in pacers:
            out, _ = pacer.communicate()
            if pacer.returncode != 0:
                raise SystemExit(f"a pacing producer failed ({pacer.returncode})")
            result = json.loads(out.strip().splitlines()[-1])
            paced += result["paced"]
            committed.update((int(k), v) for k, v in result["committed"].items())
        wait(tally)
    waited = sorted(called[order] - at for order, at in committed.items())
    return {
        "p50": statistics.median(waited) * 1000,
        "p99": waited[int(len(waited) * 0.99)] * 1000,
        "paced": paced,
    }


# --- the parent: one process per row, one table --------------------------------------


def child(*args: str) -> dict[str, Any]:
    """Run one measurement in a fresh process; its last output line is its JSON."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        return {"error": " | ".join(tail)[-400:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def postgres_server(*, durable: bool = False) -> Any:
    """The tests' PostgreSQL cluster helper (tests/postgres_server.py); `durable`: with
    PostgreSQL's default fsync and synchronous commit."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module("tests.postgres_server")
    return module.PostgresServer(durable=durable).start()


class Databases:
    """A fresh database per measurement: a PostgreSQL database in one cluster, or a
    SQLite file in a temporary directory."""

    def __init__(self) -> None:
        try:
            self.server = postgres_server()
        except (AssertionError, OSError, subprocess.CalledProcessError) as e:
            print(f"no PostgreSQL cluster ({e!r}): its rows are skipped", file=sys.stderr)
            self.server = None
        self.durable: Any = None
        self.root = Path(tempfile.mkdtemp(prefix="surelay-sql-bench-"))
        self.made = itertools.count()

    def fresh(self, kind: str, name: str) -> str:
        unique = f"{name.replace('-', '_')}_{next(self.made)}"
        if kind == "postgresql-durable" and self.server is not None:
            if self.durable is None:
                self.durable = postgres_server(durable=True)
            return str(self.durable.create_database(unique))
        if kind.startswith("postgresql"):
            if self.server is None:
                raise LookupError("no PostgreSQL")
            return str(self.server.create_database(unique))
        return f"sqlite:///{self.root / unique}.db"

    def close(self) -> None:
        for server in (self.server, self.durable):
            if server is not None:
                server.close()
        shutil.rmtree(self.root, ignore_errors=True)


def quiet(measure: Callable[..., dict[str, Any]], *args: str) -> dict[str, Any]:
    """`measure(*args)` once the machine's load average has come down (under 1.0, or
    after 60 s), so a step is not measured in the wake of the one before."""
    deadline = time.monotonic() + 60
    while os.getloadavg()[0] >= 1.0 and time.monotonic() < deadline:
        time.sleep(1)
    return measure(*args)


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, help="messages per throughput row")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument("--only", nargs="*", choices=SYSTEMS, help="these systems' rows only")
    options = parser.parse_args()
    quick = options.quick
    n_cost = 2_000 if quick else 10_000
    n_relay = 20_000 if quick else 200_000
    latency_s = 3.0 if quick else 10.0
    systems = options.only or list(SYSTEMS)
    load_before = os.getloadavg()[0]
    databases = Databases()
    rows: list[tuple[str, str, str, dict[str, Any]]] = []

    def measure(kind: str, command: str, *args: str) -> dict[str, Any]:
        """`command` in a fresh process on a fresh database of `kind`."""
        try:
            url = databases.fresh(kind, args[0] if command == "row" else command)
        except LookupError:
            return {"error": "no PostgreSQL cluster (apt-get install postgresql)"}
        if command == "row":
            result = child(command, args[0], url, *args[1:])
        else:
            result = child(command, url, *args)
        print(f"  ... {command} {' '.join(args)} on {kind}: {result}", file=sys.stderr)
        return result

    try:
        # first, on a quiet machine: the relay's own figures (each row below leaves a
        # database busy with autovacuum and checkpoints for a while after it)
        kinds = ("postgresql", "sqlite")
        relays = {kind: quiet(measure, kind, "relay", str(n_relay)) for kind in kinds}
        latencies = {kind: quiet(measure, kind, "latency", str(latency_s)) for kind in kinds}
        for kind in ("postgresql", "sqlite"):
            for delay in (0.0, DELAY):
                label = "no-op" if not delay else f"{delay * 1000:.0f} ms"
                for system in systems:
                    if kind == "sqlite" and system in POSTGRES_ONLY:
                        rows.append((system, kind, label, {"na": True}))
                        continue
                    n = options.messages or MESSAGES[system] // (5 if quick else 1)
                    result = measure(kind, "row", system, str(n), str(delay))
                    rows.append((system, kind, label, result))
        costs = {
            kind: measure(kind, "cost", str(n_cost))
            for kind in ("postgresql", "postgresql-durable", "sqlite")
        }
    finally:
        databases.close()
    print(
        f"{os.cpu_count()} CPUs; load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    report(
        rows=rows,
        costs=costs,
        relays=relays,
        latencies=latencies,
        sizes=(n_cost, n_relay, latency_s),
    )
    return 0


def report(
    *,
    rows: list[tuple[str, str, str, dict[str, Any]]],
    costs: dict[str, dict[str, Any]],
    relays: dict[str, dict[str, Any]],
    latencies: dict[str, dict[str, Any]],
    sizes: tuple[int, int, float],
) -> None:
    n_cost, n_relay, latency_s = sizes
    dbos = {(k, d): r.get("rate") for s, k, d, r in rows if s == "dbos"}
    print(
        f"transactional outbox: {THREADS} host threads commit an order row + 1 message; "
        "msg/s from the first commit to the last delivery (commits/s: to the last commit)"
    )
    print(
        f"{'system':14} {'database':11} {'downstream':10} {'messages':>8} {'msg/s':>9} "
        f"{'vs DBOS':>8} {'seconds':>7} {'commits/s':>9}"
    )
    for system, kind, label, result in rows:
        if result.get("na"):
            print(f"{system:14} {kind:11} {label:10} {'':>8} {'n/a':>9}  (PostgreSQL only)")
            continue
        if "error" in result:
            print(f"{system:14} {kind:11} {label:10} {'':>8} {'error':>9}  {result['error']}")
            continue
        rate = result["rate"]
        base = dbos.get((kind, label))
        ratio = f"{rate / base:.2f}x" if base else "-"
        baseline = "  (baseline)" if system == "dbos" and label == "no-op" else ""
        print(
            f"{system:14} {kind:11} {label:10} {result['messages']:>8,} {rate:>9,.0f} "
            f"{ratio:>8} {result['seconds']:>7.1f} {result['commits']:>9,.0f}{baseline}"
        )
    print()
    print(f"cost inside the host's transaction ({THREADS} threads, {n_cost:,} transactions)")
    for kind, result in costs.items():
        if "error" in result:
            print(f"  {kind:11} error: {result['error']}")
            continue
        ratio = result["bare"] / result["send"]
        floor = result["bare"] / result["insert"]
        print(
            f"  {kind:18} order row alone (baseline) {result['bare']:>6,.0f} tx/s; with "
            f"outbox.send {result['send']:>6,.0f} tx/s: {ratio:.2f}x the time "
            f"(goal <= {COST_GOAL}x) {mark(ratio <= COST_GOAL)}; with a plain second "
            f"INSERT instead {result['insert']:>6,.0f} tx/s: {floor:.2f}x"
        )
    print(f"relay throughput ({n_relay:,} rows pre-inserted, drained to a no-op transport)")
    for kind, result in relays.items():
        if "error" in result:
            print(f"  {kind:11} error: {result['error']}")
            continue
        rate = result["rate"]
        print(
            f"  {kind:11} {rate:>8,.0f} msg/s (goal >= {RELAY_GOAL:,}) {mark(rate >= RELAY_GOAL)}"
        )
    print(
        f"commit-to-call latency, paced {LATENCY_RATE:,} msg/s for {latency_s:.0f} s "
        "(a busy relay reads every 5 ms; an idle one every 1 s, or at a NOTIFY on PostgreSQL)"
    )
    for kind, result in latencies.items():
        if "error" in result:
            print(f"  {kind:11} error: {result['error']}")
            continue
        ok = result["p50"] <= LATENCY_GOAL[0] and result["p99"] <= LATENCY_GOAL[1]
        print(
            f"  {kind:11} p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms  "
            f"(goal {LATENCY_GOAL[0]}/{LATENCY_GOAL[1]}) {mark(ok)}  "
            f"(commits achieved {result['paced']:,.0f}/s, by {PACERS} processes)"
        )


def child_main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    if command == "row":
        system, url, n, delay = argv[1], argv[2], int(argv[3]), float(argv[4])
        first, committed, last = RUNNERS[system](url, n, delay)
        figures = {"rate": n / (last - first), "seconds": last - first, "messages": n}
        print(json.dumps({**figures, "commits": n / (committed - first)}))
    elif command == "cost":
        print(json.dumps(host_cost(url, int(argv[2]))))
    elif command == "relay":
        print(json.dumps(relay_throughput(url, int(argv[2]))))
    elif command == "latency":
        print(json.dumps(latency(url, float(argv[2]))))
    elif command == "pace":
        print(json.dumps(pace(url, float(argv[2]), int(argv[3]))))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("row", "cost", "relay", "latency", "pace"):
        child_main(sys.argv[1:])
    else:
        sys.exit(main())
