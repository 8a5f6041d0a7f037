"""A host process for the rate test: sends COUNT messages to a rate-limited transport that
appends the time of each call to CALLS_FILE, on a data directory shared with others.

Usage: python -m tests.rate_host DATA_DIR CALLS_FILE COUNT PER_SECOND START_AT

Every host waits until START_AT (epoch seconds) before it sends, so they all start
together; it flushes, closes and exits once its messages are delivered.
"""

from __future__ import annotations

import sys
import threading
import time

from surelay import Envelope, Rate, Runtime, RuntimeConfig


def main() -> None:
    data, calls_path, count, per_second, start_at = sys.argv[1:6]
    lock = threading.Lock()
    with open(calls_path, "a", buffering=1) as calls:

        def record(_envelope: Envelope) -> None:
            with lock:
                calls.write(f"{time.time()!r}\n")

        config = RuntimeConfig(rate_limits={"t": Rate(int(per_second), 1.0)})
        with Runtime.open(data, transports={"t": record}, config=config) as rt:
            threading.Event().wait(max(0.0, float(start_at) - time.time()))
            for start in range(0, int(count), 500):
                batch = min(500, int(count) - start)
                rt.send_batch([{"transport": "t", "payload": b"x"} for _ in range(batch)])
            print("sent", flush=True)
            assert rt.flush(120)


if __name__ == "__main__":
    main()
