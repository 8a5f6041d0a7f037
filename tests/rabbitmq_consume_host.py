"""A consuming host for the RabbitMQ process tests: runs until killed.

Usage: python -m tests.rabbitmq_consume_host DATA_DIR AMQP_URL QUEUE DELIVERED_FILE

Consumes QUEUE into a runtime on DATA_DIR; the handler appends each message's AMQP
`message_id` to DELIVERED_FILE (one line, flushed) before it returns. Prints
"consuming" once started.
"""

from __future__ import annotations

import sys
import threading
import time

from surelay import Envelope, Runtime
from surelay.sources import RabbitMQSource


def main() -> None:
    data, url, queue, delivered_path = sys.argv[1:5]
    lock = threading.Lock()
    delivered = open(delivered_path, "a", buffering=1)  # noqa: SIM115  # lives until killed

    def handler(envelope: Envelope) -> None:
        time.sleep(0.002)  # a downstream call
        with lock:
            delivered.write(envelope.headers["rabbitmq-message-id"] + "\n")

    rt = Runtime.open(data, transports={})
    rt.consume(
        RabbitMQSource(url, queue, prefetch=200),
        handler,
        name="orders",
        key=lambda envelope: envelope.headers.get("order"),
    )
    print("consuming", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
