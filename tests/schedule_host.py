"""A host process for the durable-timer tests: schedules messages, then waits to be killed.

Usage: python -m tests.schedule_host DATA_DIR ACKED_FILE COUNT DELAY_FROM DELAY_TO

Sends COUNT messages, each with a delay spread evenly from DELAY_FROM to DELAY_TO seconds
(every third on one of two keys), appending "message_id earliest_due key" to ACKED_FILE once each
send has returned; prints "scheduled" and waits. Its transport fails every call (so
nothing it fires counts as delivered): the test kills it before any is due.
"""

from __future__ import annotations

import sys
import threading
import time

from surelay import Envelope, Runtime, TransientError


def refuse(_envelope: Envelope) -> None:
    raise TransientError("this host never delivers")


def main() -> None:
    data, acked_path, count, low, high = sys.argv[1:6]
    total = int(count)
    start, end = float(low), float(high)
    rt = Runtime.open(data, transports={"t": refuse})
    with open(acked_path, "a", buffering=1) as acked:
        for i in range(total):
            delay = start + (end - start) * i / max(1, total - 1)
            key = f"k{i % 2}" if i % 3 == 0 else None
            earliest = time.time() + delay  # (its due time is at least this)
            receipt = rt.send("t", str(i).encode(), key=key, delay=delay)
            acked.write(f"{receipt.message_id} {earliest!r} {key or '-'}\n")
    print("scheduled", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
