"""A host process for the slots test: one of several runtimes on one data directory.

Usage: python -m tests.slot_host DATA_DIR WORK_DIR NAME COUNT

Opens a runtime on DATA_DIR and prints its slot. Sends COUNT messages to transport "t"
and three to "doomed" (always fails permanently), appending each id whose `send`
returned to WORK_DIR/acked-NAME, waits until the three are dead letters, and prints
"sent". Transport "t" fails (transiently) until the file WORK_DIR/gate exists, then
appends each id it delivers to WORK_DIR/delivered-NAME. Runs until killed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from surelay import (
    BreakerPolicy,
    Envelope,
    Outcome,
    PermanentError,
    RetryPolicy,
    Runtime,
    RuntimeConfig,
    TransientError,
)


def main() -> None:
    data, work, name, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    gate = work / "gate"
    lock = threading.Lock()
    delivered = open(work / f"delivered-{name}", "a", buffering=1)  # noqa: SIM115

    def transport(envelope: Envelope) -> None:
        if not gate.exists():
            raise TransientError("downstream not there yet")
        with lock:
            delivered.write(envelope.message_id + "\n")

    def doomed(envelope: Envelope) -> None:
        raise PermanentError(f"{name} refuses {envelope.message_id}")

    config = RuntimeConfig(
        retry=RetryPolicy(max_attempts=100_000, base_delay=0.01, max_delay=0.05),
        breaker=BreakerPolicy(open_for=0.05),
    )
    rt = Runtime.open(data, transports={"t": transport, "doomed": doomed}, config=config)
    print(rt.slot, flush=True)
    with open(work / f"acked-{name}", "a", buffering=1) as acked:
        for i in range(count):
            receipt = rt.send("t", f"{name}-{i}".encode(), key=f"{name}-k{i % 5}")
            acked.write(receipt.message_id + "\n")
    doomed_receipts = [rt.send("doomed", b"x", key=f"{name}-d") for _ in range(3)]
    for receipt in doomed_receipts:
        assert receipt.wait(30) is Outcome.DEAD_LETTERED
    print("sent", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
