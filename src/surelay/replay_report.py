"""`ReplayReport`: what a replay of dead letters did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["RESULTS", "ReplayReport", "ReplayResult"]

ReplayResult = Literal["replayed", "skipped_duplicate", "failed", "refused"]
"""How one record's replay can end (the report's counters)."""
RESULTS: tuple[ReplayResult, ...] = get_args(ReplayResult)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """Counts of a replay's records.

    - `requested`: records selected (the ids given, or the `dead` ones matching);
    - `replayed`: sent and delivered; now `replayed`;
    - `skipped_duplicate`: not sent, because their idempotency key was delivered
      meanwhile or they had been replayed already;
    - `failed`: sent and failed again (back to `dead`, `replay_count + 1`, new reason),
      or not sent because their transport's breaker was open (back to `dead` unchanged);
    - `refused`: archived, unknown ids, held by another live replay, or for a transport
      this runtime does not have;
    - `pending`: not finished when the report was taken (`wait=False`, or a timeout);
    - `request_id`: the stored replay request, as `surelay dlq` shows it.
    """

    requested: int
    replayed: int = 0
    skipped_duplicate: int = 0
    failed: int = 0
    refused: int = 0
    pending: int = 0
    request_id: str = ""

    @property
    def done(self) -> bool:
        return self.pending == 0

    @classmethod
    def from_progress(cls, progress: Mapping[str, int], request_id: str = "") -> ReplayReport:
        """The report stored as a request's `progress`."""
        requested = int(progress.get("requested", 0))
        counts = {name: int(progress.get(name, 0)) for name in RESULTS}
        finished = sum(counts.values())
        return cls(
            requested=requested,
            pending=max(0, requested - finished),
            request_id=request_id,
            **counts,
        )

    def progress(self) -> dict[str, int]:
        return {"requested": self.requested, **{name: getattr(self, name) for name in RESULTS}}
