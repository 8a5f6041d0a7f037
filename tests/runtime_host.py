"""A host process for the kill -9 test: sends from 4 threads until it is killed.

Usage: python -m tests.runtime_host DATA_DIR ACKED_FILE DELIVERED_FILE SEED [sync|async]

Every message id whose `send` returned is appended to ACKED_FILE; the transport appends
every id it delivers to DELIVERED_FILE before returning (and fails 20% of attempts). With
`async` the transport is a coroutine function, run on the runtime's event loop.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from collections.abc import Awaitable, Callable

from surelay import Envelope, RetryPolicy, Runtime, RuntimeConfig, TransientError


def main() -> None:
    data, acked_path, delivered_path, seed = sys.argv[1:5]
    kind = sys.argv[5] if len(sys.argv) > 5 else "sync"
    rng = random.Random(int(seed))
    lock = threading.Lock()
    delivered = open(delivered_path, "a", buffering=1)  # noqa: SIM115  # lives until killed
    acked = open(acked_path, "a", buffering=1)  # noqa: SIM115

    def transport(envelope: Envelope) -> None:
        with lock:
            if rng.random() < 0.2:
                raise TransientError("flaky downstream")
            delivered.write(envelope.message_id + "\n")

    async def async_transport(envelope: Envelope) -> None:
        await asyncio.sleep(0)
        transport(envelope)

    chosen: Callable[[Envelope], Awaitable[None] | None] = (
        async_transport if kind == "async" else transport
    )
    config = RuntimeConfig(
        retry=RetryPolicy(max_attempts=1000, base_delay=0.005, max_delay=0.02),
        partitions=4,
    )
    rt = Runtime.open(data, transports={"t": chosen}, config=config)

    def sender(n: int) -> None:
        i = 0
        while True:
            receipt = rt.send("t", b"payload", key=f"k{n}-{i % 7}")
            with lock:
                acked.write(receipt.message_id + "\n")
            i += 1

    for n in range(4):
        threading.Thread(target=sender, args=(n,), daemon=True).start()
    print("sending", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
