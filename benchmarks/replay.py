"""Replaying dead letters: records per second, beside what the store allows.

Run: .venv/bin/python benchmarks/replay.py [--records N]

Fills a directory with N dead letters (a transport that rejects every message), then,
in the same run:

- surelay: a runtime opened on it with a no-op transport replays them all,
  `rt.dead_letters.replay(wait=True)` with the rate limit off: records/s from the call
  to its report (leases, calls, and each record's `replayed` write with its dedup
  record);
- the bare baseline: the storage layer alone doing each record's two writes (the
  lease and `replayed`) from 16 threads, each waiting for its write as a worker does:
  what the store's group commit allows, with no runtime around it.

Goal (issue: the house): at least 5,000 records/s for 10,000 records.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from surelay import Envelope, PermanentError, PressurePolicy, Runtime, RuntimeConfig
from surelay.storage import Store

CONFIG = RuntimeConfig(pressure=PressurePolicy(capacity=1_000_000))


def reject(_envelope: Envelope) -> None:
    raise PermanentError("400 rejected")


def noop(_envelope: Envelope) -> None:
    pass


def fill(path: Path, records: int) -> None:
    with Runtime.open(path, transports={"t": reject}, config=CONFIG) as rt:
        for start in range(0, records, 1000):
            rt.send_batch(
                [
                    {"transport": "t", "payload": b"x" * 100, "key": f"k{n % 500}"}
                    for n in range(start, min(records, start + 1000))
                ]
            )
        assert rt.flush(600), "the dead letters were not all made"
        assert rt.stats().dead_lettered >= records


def replay(path: Path) -> tuple[int, float]:
    with Runtime.open(path, transports={"t": noop}, config=CONFIG) as rt:
        started = time.perf_counter()
        report = rt.dead_letters.replay(wait=True, timeout=600)
        seconds = time.perf_counter() - started
    assert report.pending == 0, report
    return report.replayed, seconds


def bare(path: Path, threads: int = 16) -> tuple[int, float]:
    with Store.open(path, claim=True) as store:
        with store.read() as txn:
            ids = [r.id for r in store.dead_letters.matching(txn)]
        shares = [ids[i::threads] for i in range(threads)]

        def work(share: list[str]) -> None:
            for dead_letter_id in share:
                now = time.time()
                verdict, _ = store.lease_for_replay(
                    dead_letter_id, now=now, until=now + 60
                ).result()
                assert verdict == "leased", verdict
                store.replayed(dead_letter_id, delivered_at=now, expires_at=now + 86_400).result()

        workers = [threading.Thread(target=work, args=(s,)) for s in shares]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return len(ids), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    records = parser.parse_args().records
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        fill(Path(a), records)
        fill(Path(b), records)
        done, seconds = replay(Path(a))
        base, base_seconds = bare(Path(b))
    print(f"{records:,} dead letters of 100 bytes, 500 keys, replayed to a no-op transport")
    print(f"{'':44} {'records/s':>10}")
    print(f"{'store alone, 16 threads x (lease + replayed)':44} {base / base_seconds:>10,.0f}")
    rate = done / seconds
    print(f"{'surelay, rt.dead_letters.replay()':44} {rate:>10,.0f}  (goal >= 5,000)")


if __name__ == "__main__":
    main()
