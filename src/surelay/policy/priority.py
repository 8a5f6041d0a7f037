"""Priority weights: who is served next when several priorities wait.

HIGH : NORMAL : LOW = 6 : 3 : 1, interleaved by smooth weighted round robin, so LOW is
slowed under load but never starved. Senders use it to pick keys; the delivery engine
uses it to give out free call slots.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

from surelay.envelope import Priority

__all__ = ["PATTERN", "WEIGHTS", "Picker", "weighted_pattern"]

WEIGHTS = {Priority.HIGH: 6, Priority.NORMAL: 3, Priority.LOW: 1}


def weighted_pattern(weights: dict[Priority, int]) -> tuple[int, ...]:
    """The order of priority ranks served in one round: smooth weighted round robin
    (as nginx balances upstreams), so no rank waits a whole round for its turn."""
    current = dict.fromkeys(weights, 0)
    total = sum(weights.values())
    out = []
    for _ in range(total):
        for priority, weight in weights.items():
            current[priority] += weight
        chosen = max(current, key=lambda p: (current[p], -p.rank))
        current[chosen] -= total
        out.append(chosen.rank)
    return tuple(out)


PATTERN = weighted_pattern(WEIGHTS)
"""One round of ranks (0 HIGH, 1 NORMAL, 2 LOW) in serving order."""


class Picker:
    """Which of three lanes (ranks 0 HIGH, 1 NORMAL, 2 LOW) to serve next: the lane
    of the round's next turn (`PATTERN`), or the first lane with work when that one is
    empty, so nothing waits while another lane could be served. Senders pick their
    ready keys with one, engines their queued calls."""

    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, lanes: Sequence[Sized]) -> int:
        """The rank to serve now; `lanes` must not all be empty."""
        rank = PATTERN[self._turn]
        self._turn = (self._turn + 1) % len(PATTERN)
        if not lanes[rank]:
            rank = 0 if lanes[0] else 1 if lanes[1] else 2
        return rank
