"""A backlog bounded by disk, not RAM: memory and drain rate with a large outbox.

Fills an outbox while the downstream is down (a transport whose calls hang, abandoned
at close), then, each in a fresh process:

- recovery: opens the directory and drains it to a no-op transport;
- adoption: a runtime opened beside the dead one's slot adopts and drains it;
- the bare baseline, measured in the same run: an empty directory opened the same way
  (its memory is what "an empty runtime" costs), and a backlog small enough to fit the
  window drained the same way (its rate is what the large one is compared with).

It prints peak anonymous memory (`RssAnon`, sampled every 10 ms: LMDB's map is file
memory and not counted) at open and while draining, above the empty runtime's, and
the drain rate (messages over the time from the first delivery to the last: the
adopter's first look at the other slots, up to a second after its open, is not counted).
Usage:

    python benchmarks/backlog.py [--mb 1000] [--size 51200] [--check]

`--check` exits 1 if a memory goal is missed (peak more than 150 MiB above the empty
runtime's); the test suite runs it so at 400 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from surelay import Envelope, PressurePolicy, Runtime, RuntimeConfig

GOAL_MIB = 150
MAP_SIZE = 4 << 30


def rss_anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class Peak:
    """Samples RssAnon every 10 ms on a thread of its own; `take()` is the peak so far
    and starts a new period."""

    def __init__(self) -> None:
        self._peak = rss_anon_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, rss_anon_kib())

    def take(self) -> int:
        peak, self._peak = max(self._peak, rss_anon_kib()), rss_anon_kib()
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def config(capacity: int = 1_000_000) -> RuntimeConfig:
    return RuntimeConfig(map_size=MAP_SIZE, pressure=PressurePolicy(capacity=capacity))


def fill(path: str, count: int, size: int) -> None:
    """Accept `count` messages of `size` bytes while the downstream hangs; exit with
    them all in the outbox, no attempt spent."""
    hung = threading.Event()

    def down(envelope: Envelope) -> None:
        hung.wait()

    payload = os.urandom(size)
    with Runtime.open(path, transports={"t": down}, config=config()) as rt:
        for start in range(0, count, 100):
            rt.send_batch(
                [
                    {"transport": "t", "payload": payload, "key": f"k{i % 1000}"}
                    for i in range(start, min(count, start + 100))
                ]
            )
        rt.close(timeout=0.5)


def drain(path: str, expect: int, adopt: bool) -> None:
    """Open `path` (adopting its other slot's backlog with `adopt`), drain `expect`
    messages to a no-op transport; print the figures as JSON."""
    peak = Peak()
    done = threading.Event()
    delivered = 0
    lock = threading.Lock()

    first = last = 0.0

    def noop(envelope: Envelope) -> None:
        nonlocal delivered, first, last
        with lock:
            delivered += 1
            last = time.perf_counter()
            first = first or last
            if delivered >= expect:
                done.set()

    before = peak.take()
    started = time.perf_counter()
    rt = Runtime.open(path, transports={"t": noop}, config=config())
    opened = time.perf_counter()
    at_open = peak.take()
    if expect:
        if not done.wait(600):
            raise SystemExit(f"only {delivered} of {expect} delivered in 600 s")
        if not rt.flush(60):
            raise SystemExit("flush did not return True")
    drained = time.perf_counter()
    while_draining = peak.take()
    rt.close()
    peak.stop()
    print(
        json.dumps(
            {
                "before_kib": before,
                "at_open_kib": at_open,
                "draining_kib": while_draining,
                "open_s": opened - started,
                "drain_s": drained - started,
                "first_to_last_s": last - first,
                "delivered": delivered,
                "adopt": adopt,
            }
        )
    )


def run(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def adoption_dir(root: Path, count: int, size: int) -> Path:
    """A directory whose slot 1 holds the backlog of a runtime that is gone, and whose
    slot 0 is free: the next runtime opens as slot 0 and adopts slot 1."""
    where = root / "adopt"
    # it offers no "t", so it adopts nothing itself
    with Runtime.open(where, transports={"other": lambda e: None}, config=config()):
        subprocess.run(
            [sys.executable, __file__, "fill", str(where), str(count), str(size)], check=True
        )
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=1000, help="backlog size in MB")
    parser.add_argument("--size", type=int, default=50 * 1024, help="payload bytes")
    parser.add_argument("--check", action="store_true", help="exit 1 if a memory goal fails")
    options = parser.parse_args()
    count = options.mb * 1_000_000 // options.size
    small = max(1, (16 << 20) // options.size)  # fits the window (32 MiB)
    root = Path(tempfile.mkdtemp(prefix="surelay-backlog-"))
    try:
        empty = run("drain", str(root / "empty"), "0", "0")
        base = max(empty["at_open_kib"], empty["draining_kib"])
        subprocess.run(
            [sys.executable, __file__, "fill", str(root / "small"), str(small), str(options.size)],
            check=True,
        )
        fits = run("drain", str(root / "small"), str(small), "0")
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "fill", str(root / "big"), str(count), str(options.size)],
            check=True,
        )
        fill_s = time.perf_counter() - t0
        big = run("drain", str(root / "big"), str(count), "0")
        shutil.rmtree(root / "big")
        adopted = run("drain", str(adoption_dir(root, count, options.size)), str(count), "1")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = count * options.size / 1e6
    print(
        f"backlog: {count:,} messages x {options.size:,} B = {mb:,.0f} MB "
        f"(filled in {fill_s:.1f} s)"
    )
    print(f"empty runtime (baseline): RssAnon peak {base / 1024:.1f} MiB")
    failed = False
    rows = [
        ("fits the window", fits, small),
        ("recovery", big, count),
        ("adoption", adopted, count),
    ]
    fits_rate = small / fits["first_to_last_s"]
    for name, figures, n in rows:
        over_open = (figures["at_open_kib"] - base) / 1024
        over_drain = (figures["draining_kib"] - base) / 1024
        rate = n / figures["first_to_last_s"]
        print(
            f"{name:16} open {figures['open_s']:6.2f} s  RssAnon above empty: at open "
            f"{over_open:+7.1f} MiB, draining {over_drain:+7.1f} MiB  drain {rate:8,.0f} msg/s "
            f"({rate * options.size / 1e6:6,.1f} MB/s, {rate / fits_rate:5.0%} of fits-the-window)"
        )
        if max(over_open, over_drain) > GOAL_MIB:
            failed = True
            print(f"  over the goal: at most {GOAL_MIB} MiB above an empty runtime")
    return 1 if failed and options.check else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fill":
        fill(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "drain":
        drain(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
    else:
        sys.exit(main())
