"""A host process for the push tests: sends COUNT messages to RECIPIENT through
`rt.push` on a data directory shared with others, and prints each answer: the seq, or
`full` (MailboxFull) or `over` (Overloaded).

Usage: python -m tests.push_host DATA_DIR RECIPIENT COUNT NAME START_AT [MAX_PENDING [RATE]]

Every host waits until START_AT (epoch seconds) before it sends, so they all send at
once; the payloads are NAME-i, so the test can tell whose message each seq holds. RATE
is messages per minute per recipient.
"""

from __future__ import annotations

import sys
import threading
import time

from surelay import Rate, Runtime
from surelay.push import MailboxFull, Overloaded, PushConfig

SECRET = "push-test-secret-0123456789"


def main() -> None:
    data, recipient, count, name, start_at = sys.argv[1:6]
    max_pending = int(sys.argv[6]) if len(sys.argv) > 6 else 100_000
    rate = Rate(int(sys.argv[7]), 60.0, burst=int(sys.argv[7])) if len(sys.argv) > 7 else None
    push = PushConfig(SECRET, max_pending=max_pending, rate_per_recipient=rate)
    with Runtime.open(data, transports={}, push=push) as rt:
        threading.Event().wait(max(0.0, float(start_at) - time.time()))
        for i in range(int(count)):
            try:
                receipt = rt.push.send(recipient, f"{name}-{i}".encode())
            except MailboxFull:
                print("full", flush=True)
            except Overloaded:
                print("over", flush=True)
            else:
                print(receipt.seq, flush=True)


if __name__ == "__main__":
    main()
