"""A host process for the relay's process tests, standing in for one machine.

Usage: python -m tests.sql.relay_host DATA_DIR OUTBOX_URL RECEIVER_URL NAME
           [--lease S] [--poll S] [--partitions N] [--send COUNT] [--no-relay]

It opens a runtime on DATA_DIR of its own with one transport, `http`, that POSTs each
message to RECEIVER_URL with the header `X-Relay: NAME` (so the receiver knows which
machine delivered it). With `--send COUNT` it first commits COUNT rows (`outbox.send`,
keys `h0`..`h9`, payload `key:seq`) in transactions of its own and prints `committed`.
Unless `--no-relay` it then relays the outbox table and prints `relaying`. It serves
until it is killed.
"""

from __future__ import annotations

import argparse
import sys
import threading

from surelay import RetryPolicy, Runtime, RuntimeConfig
from surelay.sql import SqlOutbox
from surelay.transports import HttpTransport


def commit_rows(outbox: SqlOutbox, count: int) -> None:
    """`count` rows over ten keys, ten rows a transaction, each committed."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(outbox.target) as conn:
        for start in range(0, count, 10):
            with conn.transaction():
                for seq in range(start, min(count, start + 10)):
                    key = f"h{seq % 10}"
                    outbox.send(conn, "http", f"{key}:{seq // 10}".encode(), key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("data")
    parser.add_argument("url")
    parser.add_argument("receiver")
    parser.add_argument("name")
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--send", type=int, default=0)
    parser.add_argument("--no-relay", action="store_true")
    options = parser.parse_args()
    transport = HttpTransport(options.receiver, timeout=60.0, headers={"X-Relay": options.name})
    config = RuntimeConfig(
        retry=RetryPolicy(max_attempts=1000, base_delay=0.05, max_delay=0.2),
        ack_timeout=120.0,
    )
    rt = Runtime.open(options.data, transports={"http": transport}, config=config)
    outbox = SqlOutbox(options.url, partitions=options.partitions)
    outbox.create_table()
    if options.send:
        commit_rows(outbox, options.send)
        print("committed", flush=True)
    if not options.no_relay:
        rt.relay(outbox, lease=options.lease, poll_interval=options.poll, batch=200)
        print("relaying", flush=True)
    threading.Event().wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
