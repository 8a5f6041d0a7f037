"""A host process for the push tests: sends COUNT messages to RECIPIENT through
`rt.push` on a data directory shared with others, and prints each receipt's seq.

Usage: python -m tests.push_host DATA_DIR RECIPIENT COUNT NAME START_AT

Every host waits until START_AT (epoch seconds) before it sends, so they all send at
once; the payloads are NAME-i, so the test can tell whose message each seq holds.
"""

from __future__ import annotations

import sys
import threading
import time

from surelay import Runtime
from surelay.push import PushConfig

SECRET = "push-test-secret-0123456789"


def main() -> None:
    data, recipient, count, name, start_at = sys.argv[1:6]
    push = PushConfig(SECRET, max_pending=100_000)
    with Runtime.open(data, transports={}, push=push) as rt:
        threading.Event().wait(max(0.0, float(start_at) - time.time()))
        for i in range(int(count)):
            receipt = rt.push.send(recipient, f"{name}-{i}".encode(), idempotency_key=f"{name}-{i}")
            print(receipt.seq, flush=True)


if __name__ == "__main__":
    main()
