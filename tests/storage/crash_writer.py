"""Child process of the crash test: four threads write through the group-commit writer
and print each message id only after its future completed (the write is durable)."""

from __future__ import annotations

import sys
import threading

from surelay.envelope import Envelope
from surelay.storage import Store


def main() -> None:
    path, tag = sys.argv[1], sys.argv[2]
    store = Store.open(path, map_size=1 << 20, max_map_size=1 << 30)
    out = threading.Lock()

    def write(thread: int) -> None:
        n = 0
        while True:
            message_id = f"{tag}-{thread}-{n}"
            store.enqueue([(Envelope(message_id, "t", b"x" * 200), thread)]).result()
            with out:
                sys.stdout.write(message_id + "\n")
                sys.stdout.flush()
            n += 1

    threads = [threading.Thread(target=write, args=(t,), daemon=True) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
