"""Storage figures: group commit vs a transaction per write, outbox churn, dedup lookups,
dead-letter listing.

Run: .venv/bin/python benchmarks/storage.py [--seconds S] [--dead-letters N]

All writes are durable (`durability="sync"`: fsync per commit) unless stated. Data lives
in a temporary directory on the same disk as the checkout's /tmp.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from surelay.envelope import Envelope, Priority
from surelay.storage import REASON_CLASSES, DeadLetter, Store, new_id


def _threads(count: int, seconds: float, body: callable) -> int:  # type: ignore[valid-type]
    done = [0] * count
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            body(i, n)
            n += 1
        done[i] = n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def durable_writes(root: Path, seconds: float) -> None:
    print("durable writes/s (one 200-byte outbox enqueue per write, fsync per commit)")
    print(f"  {'threads':>7}  {'group commit':>13}  {'txn per write':>13}  ratio")
    for count in (1, 4, 16):
        with Store.open(root / f"g{count}", map_size=1 << 28) as store:

            def grouped(i: int, n: int, store: Store = store, count: int = count) -> None:
                e = Envelope(f"g{count}-{i}-{n}", "t", b"x" * 200)
                store.enqueue([(e, i)]).result()

            group = _threads(count, seconds, grouped) / seconds
        with Store.open(root / f"s{count}", map_size=1 << 28) as store:

            def single(i: int, n: int, store: Store = store, count: int = count) -> None:
                e = Envelope(f"s{count}-{i}-{n}", "t", b"x" * 200)
                with store.env.write() as txn:
                    store.outbox.enqueue(txn, e, partition=i, due_at=0.0)

            alone = _threads(count, seconds, single) / seconds
        print(f"  {count:>7}  {group:>13,.0f}  {alone:>13,.0f}  {group / alone:5.1f}x")


def outbox_churn(root: Path, batches: int) -> None:
    with Store.open(root / "churn", map_size=1 << 28) as store:
        start = time.perf_counter()
        for b in range(batches):
            envelopes = [(Envelope(f"c{b}-{n}", "t", b"x" * 200), n % 4) for n in range(256)]
            store.enqueue(envelopes).result()

            def remove(txn: object, b: int = b) -> None:
                for n in range(256):
                    store.outbox.remove(txn, f"c{b}-{n}")

            store.write(remove).result()
        rate = batches * 256 / (time.perf_counter() - start)
    print(f"outbox enqueue+remove pairs/s, batches of 256, durable: {rate:,.0f}")


def dedup_lookups(root: Path, keys: int) -> None:
    with Store.open(root / "dedup", map_size=1 << 28, durability="async") as store:
        names = [f"idem-{n:08d}" for n in range(keys)]

        def fill(txn: object) -> None:
            for name in names:
                store.dedup.put(txn, name, delivered_at=1.0, expires_at=4e9)

        store.write(fill).result()
        start = time.perf_counter()
        with store.read() as txn:
            hits = sum(1 for name in names if store.dedup.get(txn, name, now=2.0) is not None)
        batched = keys / (time.perf_counter() - start)
        assert hits == keys
        start = time.perf_counter()
        for name in names[: keys // 5]:
            with store.read() as txn:
                store.dedup.get(txn, name, now=2.0)
        single = (keys // 5) / (time.perf_counter() - start)
    print(f"dedup lookups/s, {keys:,} records: {batched:,.0f} in one read transaction, ", end="")
    print(f"{single:,.0f} with a transaction each")


def dead_letter_listing(root: Path, count: int) -> None:
    with Store.open(root / "dl", map_size=1 << 30, durability="async") as store:
        base = 1_700_000_000.0
        for start in range(0, count, 2000):

            def insert(txn: object, start: int = start) -> None:
                for n in range(start, min(start + 2000, count)):
                    at = base + n
                    store.dead_letters.insert(
                        txn,
                        DeadLetter(
                            id=new_id(at),
                            message_id=f"m{n}",
                            key=f"key-{n % 1000}",
                            transport=f"transport-{n % 5}",
                            payload=b"p" * 100,
                            headers={},
                            idempotency_key=f"m{n}",
                            priority=Priority.NORMAL,
                            trace_id=None,
                            reason_class=REASON_CLASSES[n % 5],
                            reason="boom",
                            error_type="RuntimeError",
                            attempts=5,
                            first_attempt_at=at,
                            failed_at=at,
                        ),
                    )

            store.write(insert).result()
        print(f"dead-letter list, {count:,} records, limit 100 (ms, median of 20):")
        cases = {
            "status=dead (default)": {},
            "key=key-42 (100 match)": {"key": "key-42"},
            "transport=transport-3": {"transport": "transport-3"},
            "reason_class=crash": {"reason_class": "crash"},
            "key + transport (none match)": {"key": "key-42", "transport": "transport-1"},
        }
        for label, filters in cases.items():
            times = []
            for _ in range(20):
                start = time.perf_counter()
                with store.read() as txn:
                    store.dead_letters.list(txn, limit=100, **filters)  # type: ignore[arg-type]
                times.append(time.perf_counter() - start)
            times.sort()
            print(f"  {label:<30} {times[10] * 1e3:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--dedup-keys", type=int, default=200_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="surelay-bench-"))
    try:
        durable_writes(root, args.seconds)
        outbox_churn(root, args.batches)
        dedup_lookups(root, args.dedup_keys)
        dead_letter_listing(root, args.dead_letters)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
