"""Routing: which partition a message or a dead letter belongs to.

One stable hash for senders, replay workers and recovery, so a key always lands on the
same actor (across restarts, processes and Python versions).
"""

from __future__ import annotations

import zlib

__all__ = ["partition_for", "replay_partition"]


def partition_for(key: str, partitions: int) -> int:
    """The partition of `key`: CRC-32 of its UTF-8, modulo `partitions`. Stable across
    processes and Python versions (unlike the salted built-in `hash`)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def replay_partition(key: str | None, dead_letter_id: str, partitions: int) -> int:
    """The replay worker of a record: by its key (one key's records go to one worker, in
    order), by its id when it has none."""
    return partition_for(key if key is not None else dead_letter_id, partitions)
