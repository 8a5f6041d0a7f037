"""Which partitions of an outbox table a relay should hold: a pure rule every relay
computes alike from the same list of live relays, so they agree without talking."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["share"]


def share(relays: Sequence[str], partitions: int, me: str) -> frozenset[int]:
    """The partitions `me` should hold among the live `relays`: contiguous, even blocks
    in the relays' sorted order (sizes differ by at most one). A relay not in the list
    (not yet seen alive) holds nothing."""
    ordered = sorted(set(relays))
    if me not in ordered:
        return frozenset()
    count = len(ordered)
    index = ordered.index(me)
    start = index * partitions // count
    end = (index + 1) * partitions // count
    return frozenset(range(start, end))
