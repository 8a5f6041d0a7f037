"""Child process of the two-process test: writes its own records while the parent writes
others, then reports what it sees of the parent's."""

from __future__ import annotations

import sys

from surelay.envelope import Envelope
from surelay.storage import Store


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    store = Store.open(path, map_size=256 * 1024, max_map_size=1 << 28)
    print("open", flush=True)
    sys.stdin.readline()  # go
    for n in range(count):
        store.enqueue([(Envelope(f"child-{n}", "t", b"c" * 1000), 1)]).result()
    print("written", flush=True)
    sys.stdin.readline()  # the parent is done too
    with store.read() as txn:
        seen = sum(1 for n in range(count) if store.outbox.get(txn, f"parent-{n}") is not None)
    print(seen, flush=True)
    store.close()


if __name__ == "__main__":
    main()
