"""Routing: which partition a message or a dead letter belongs to.

One stable hash for senders, replay workers and recovery, so a key always lands on the
same actor (across restarts, processes and Python versions).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["home", "partition_for", "replay_partition", "route"]

T = TypeVar("T")


def partition_for(key: str, partitions: int) -> int:
    """The partition of `key`: CRC-32 of its UTF-8, modulo `partitions`. Stable across
    processes and Python versions (unlike the salted built-in `hash`)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def home(key: str | None, partitions: int, otherwise: int) -> int:
    """The sender partition of a message: its key's; without a key (no order to keep),
    `otherwise` folded into range (a round robin's turn, the partition it had, the
    bucket of the row it came from)."""
    return partition_for(key, partitions) if key is not None else otherwise % partitions


def replay_partition(key: str | None, dead_letter_id: str, partitions: int) -> int:
    """The replay worker of a record: by its key (one key's records go to one worker, in
    order), by its id when it has none."""
    return partition_for(key if key is not None else dead_letter_id, partitions)


def route(
    items: Iterable[T], key_of: Callable[[T], str | None], partitions: int, turn: Iterator[int]
) -> list[tuple[T, int]]:
    """Each item with its sender partition: its key's, or for an item without a key the
    next of a round robin (`turn`, an endless counter kept by the caller)."""
    by_key: dict[str, int] = {}  # a batch often repeats its keys
    routed = []
    for item in items:
        key = key_of(item)
        if key is None:
            partition = home(None, partitions, next(turn))
        else:
            partition = by_key.get(key, -1)
            if partition < 0:
                partition = by_key[key] = partition_for(key, partitions)
        routed.append((item, partition))
    return routed
