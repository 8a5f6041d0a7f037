"""A consuming host for the JetStream process tests: runs until killed.

Usage: python -m tests.consume_host DATA_DIR NATS_URL DURABLE DELIVERED_FILE

Consumes stream ORDERS through durable consumer DURABLE (ack wait 2 s) into a runtime on
DATA_DIR; the handler appends each message's `Nats-Msg-Id` to DELIVERED_FILE (one line,
flushed) before it returns. Prints "consuming" once started.
"""

from __future__ import annotations

import sys
import threading
import time

from surelay import Envelope, Runtime
from surelay.sources import JetStreamSource


def main() -> None:
    data, url, durable, delivered_path = sys.argv[1:5]
    lock = threading.Lock()
    delivered = open(delivered_path, "a", buffering=1)  # noqa: SIM115  # lives until killed

    def handler(envelope: Envelope) -> None:
        time.sleep(0.002)  # a downstream call
        with lock:
            delivered.write(envelope.headers["Nats-Msg-Id"] + "\n")

    rt = Runtime.open(data, transports={"unused": handler})
    rt.consume(
        JetStreamSource(url, "ORDERS", durable=durable, ack_wait=2.0),
        handler,
        name="orders",
        key=lambda envelope: envelope.headers.get("order"),
    )
    print("consuming", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
