"""The console's pages over 100,000 dead letters: p50/p99 to render, beside the store.

Run: .venv/bin/python benchmarks/console.py [--dead-letters N] [--requests N]

Fills a data directory with N dead letters (7 transports, 1000 keys, 5 reason classes,
independent of each other),
then serves the console (Starlette app, in process: the page's own cost, no network)
and times, over the requests: the filtered list page (`reason_class` + `transport`),
a page deep in the unfiltered list (`after` an id in the middle), and one record's page.
Beside each, the bare store read that page needs, in the same run. Goal: p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

with warnings.catch_warnings():  # Starlette nudges toward a fork of httpx: httpx serves
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from surelay.console import ConsoleSettings, create_app
from surelay.envelope import Priority
from surelay.storage import REASON_CLASSES, DeadLetter, Store, new_id


def fill(store: Store, count: int) -> list[str]:
    base = time.time() - count
    ids: list[str] = []
    for start in range(0, count, 5000):
        made = []
        for n in range(start, min(start + 5000, count)):
            at = base + n
            made.append(
                DeadLetter(
                    id=new_id(at),
                    message_id=f"m{n}",
                    key=f"key-{n % 1000}",
                    transport=f"transport-{n % 7}",
                    payload=b'{"order": %d, "note": "%s"}' % (n, b"x" * 60),
                    headers={"traceparent": f"00-{n:032x}-{n:016x}-01"},
                    idempotency_key=f"m{n}",
                    priority=Priority.NORMAL,
                    trace_id=f"{n:032x}",
                    reason_class=REASON_CLASSES[n % 5],
                    reason=f"PermanentError: HTTP 422 for order {n}",
                    error_type="PermanentError",
                    attempts=5,
                    first_attempt_at=at - 30,
                    failed_at=at,
                )
            )

        def insert(txn: object, made: list[DeadLetter] = made) -> None:
            for record in made:
                store.dead_letters.insert(txn, record)

        store.write(insert).result()
        ids.extend(r.id for r in made)
    return ids


def timed(call: Callable[[], object], requests: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds over `requests` calls, after 5 warm-up calls."""
    for _ in range(5):
        call()
    took = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), statistics.quantiles(took, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "data"
        with Store.open(path, map_size=1 << 30, durability="async") as store:
            ids = fill(store, args.dead_letters)
            middle = ids[len(ids) // 2]
            app = create_app(ConsoleSettings(path), store=store)
            with TestClient(app, base_url="http://127.0.0.1:8787") as web:

                def get(url: str, **params: str) -> Callable[[], object]:
                    def call() -> object:
                        answer = web.get(url, params=params)
                        assert answer.status_code == 200, answer.text[:200]
                        return answer

                    return call

                def bare(**filters: str) -> Callable[[], object]:
                    def call() -> object:
                        with store.read() as txn:
                            return store.dead_letters.list(txn, limit=100, **filters)  # type: ignore[arg-type]

                    return call

                def bare_get() -> object:
                    with store.read() as txn:
                        return store.dead_letters.get(txn, middle)

                cases = [
                    (
                        "filtered list (reason + transport)",
                        get("/dead-letters", reason_class="permanent", transport="transport-1"),
                        bare(reason_class="permanent", transport="transport-1"),
                    ),
                    (
                        "no match (key + reason: 100 records read)",
                        get("/dead-letters", key="key-7", reason_class="permanent"),
                        bare(key="key-7", reason_class="permanent"),
                    ),
                    (
                        "unfiltered list, page in the middle",
                        get("/dead-letters", after=middle),
                        bare(after=middle),
                    ),
                    ("one record", get(f"/dead-letters/{middle}"), bare_get),
                ]
                print(
                    f"{args.dead_letters:,} dead letters, {args.requests} requests each "
                    "(ms; the console renders in process, no network)"
                )
                print(f"{'page':42} {'p50':>7} {'p99':>7}   {'store p50':>9} {'store p99':>9}")
                for name, page, store_call in cases:
                    p50, p99 = timed(page, args.requests)
                    b50, b99 = timed(store_call, args.requests)
                    print(f"{name:42} {p50:>7.2f} {p99:>7.2f}   {b50:>9.2f} {b99:>9.2f}")


if __name__ == "__main__":
    main()
