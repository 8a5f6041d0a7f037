"""Replay of dead letters: the protocol between the API, the ReplayCoordinator and the
ReplayWorkers, and the jobs they share (a `ReplayState` the runtime owns, so that a
crash of an actor loses none). Plain data: the operations on dead letters
(`surelay.operations`) use it without loading the actors.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

from surelay.ratelimit import TokenBucket
from surelay.replay_report import RESULTS, ReplayReport, ReplayResult
from surelay.storage.records import ReplayRequest

__all__ = ["Job", "Replay", "ReplayState", "Replayed", "ReplayedMany", "Replays", "StartReplay"]


# -- protocol ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartReplay:
    """Ask: carry out stored request `request_id`; answers how many records it selected."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Replay:
    """To a worker: replay one record for job `job` (None: a lease recovery, which
    takes the record only if it is still `replaying`). `key` is the record's key: one
    key's records are replayed one at a time, in the order they reach the worker."""

    job: str | None
    dead_letter_id: str
    renew: bool = False
    key: str | None = None

    @property
    def line(self) -> str:
        """The ordering line: the key, or (no key) the record itself."""
        return "k" + self.key if self.key is not None else "d" + self.dead_letter_id


@dataclass(frozen=True, slots=True)
class Replays:
    """To a worker: several `Replay`s at once, in order (one message, not one each)."""

    items: tuple[Replay, ...]


@dataclass(frozen=True, slots=True)
class Replayed:
    """From a worker: how one record's replay ended (one of `RESULTS`)."""

    job: str | None
    dead_letter_id: str
    result: ReplayResult


@dataclass(frozen=True, slots=True)
class ReplayedMany:
    """From a worker: the records that ended in one of its turns."""

    items: tuple[Replayed, ...]


# -- state ---------------------------------------------------------------------------------


class Job:
    """One request being carried out."""

    def __init__(self, request: ReplayRequest, bucket: TokenBucket | None) -> None:
        self.request = request
        self.requested = 0
        self.pending: deque[tuple[int, str, str | None]] = deque()
        self.outstanding = 0
        self.counts = dict.fromkeys(RESULTS, 0)
        self.bucket = bucket
        self.finished: Future[ReplayReport] = Future()
        self.saved: dict[str, int] | None = None
        self.ended: float | None = None
        """`time.monotonic()` when it finished."""
        self.unoffered: frozenset[str] = frozenset()
        """Transports no live runtime offered: its records for them are refused."""

    def report(self) -> ReplayReport:
        done = sum(self.counts.values())
        return ReplayReport(
            requested=self.requested,
            pending=self.requested - done,
            request_id=self.request.id,
            **self.counts,
        )


class ReplayState:
    """What the replay actors share; owned by the runtime so crashes keep it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.held: set[str] = set()
        """Dead letter ids a worker of this runtime has leased."""
        self.recovered_at_start = False
        """Whether the sweep at open has handed out every record left `replaying`."""

    def report(self, request_id: str) -> ReplayReport | None:
        with self.lock:
            job = self.jobs.get(request_id)
            return None if job is None else job.report()

    def finished(self, request_id: str) -> Future[ReplayReport] | None:
        with self.lock:
            job = self.jobs.get(request_id)
            return None if job is None else job.finished
