"""Replay of dead letters: the ReplayCoordinator (its protocol and the jobs it shares
with the workers and the API are in `surelay.replay_jobs`).

A replay is a stored `ReplayRequest` (made by `rt.dead_letters.replay` or by
`surelay dlq replay` in another process). The coordinator turns a request into a job:
it selects the records (the ids given, or every `dead` one matching the filters, in
failure order) and hands each to the `ReplayWorker` of its partition (stable hash of the
dead letter's key), so one key's records are replayed in their failure order. With a
`rate`, a token bucket on the monotonic clock paces the hand-outs across all workers.

The coordinator also polls the store (every `POLL` seconds) for requests from other
processes, writes each job's progress there for `surelay dlq replay --wait`, and picks
up records left `replaying` whose lease expired (or, when the runtime opens with no
other runtime on the directory, every `replaying` record: none can be held by a live
one). Several runtimes may share a directory (`surelay.storage.slots`): each request is
claimed, in one write, by exactly one of them, and taken over by another if its runtime
dies. A pending request naming a transport this runtime lacks is left for a runtime that
offers it (each publishes its transports in its status record); once no live runtime has
offered it for `OFFER_GRACE` seconds (by the runtime's clock), this one carries the
request out and its records for that transport are refused, so that every request ends
(a runtime that lacks more than the unoffered ones waits one grace longer, so that one
lacking fewer takes it first).

Jobs live in a `ReplayState` the runtime owns, so a coordinator crash loses none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence, Set
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from surelay.actors.alarm import AlarmOwner
from surelay.ratelimit import TokenBucket
from surelay.replay_jobs import (
    Job,
    Replay,
    Replayed,
    ReplayedMany,
    Replays,
    ReplayState,
    StartReplay,
)
from surelay.routing import replay_partition
from surelay.storage.dead_letters import MAX_LIMIT
from surelay.storage.records import ReplayRequest
from surelay.storage.replay_requests import FILTERS
from surelay.storage.slots import holders

if TYPE_CHECKING:
    from surelay.peers import Peers
    from surelay.storage.store import Store
    from surelay.transports.protocol import Transport

__all__ = [
    "OFFER_GRACE",
    "POLL",
    "ReplayCoordinator",
    "refusing",
]

logger = logging.getLogger("surelay.actors")

POLL = 0.25
"""Seconds between looks at the store for requests, progress and expired leases."""

OFFER_GRACE = 30.0
"""Seconds a pending request waits for a live runtime to offer a transport it needs (a
runtime still starting, a consumer registered after open) before its records for that
transport are refused."""

_RECOVERY_LIMIT = 1000

LEASE_CHECK = 5.0
"""Seconds (of the runtime's clock) between looks for leases that ran out. A lease lasts
the longest ack timeout plus `LEASE_MARGIN` (30 s): a dead worker's records wait for
that anyway, and a look every poll cost a busy replay most of its time."""


@dataclass(frozen=True, slots=True)
class _Tick:
    """From the alarm: pace rated jobs, poll the store."""


# -- the coordinator -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoordinatorEndpoint:
    """What the coordinator is given (built by `surelay.wiring`): the store, the clock,
    the runtime's transports by name (a request naming one it lacks is refused) and
    the replay workers (through `peers`)."""

    store: Store
    clock: Callable[[], float]
    transports: Mapping[str, Transport]
    peers: Peers


class ReplayCoordinator(AlarmOwner):
    def __init__(self, endpoint: CoordinatorEndpoint, state: ReplayState) -> None:
        super().__init__()
        self._at = endpoint
        self._state = state
        self._next_poll = 0.0
        self._leases_at = 0.0
        self._deferred: set[str] = set()
        self._unoffered_since: dict[str, float] = {}
        """Pending requests naming a transport no live runtime offers: since when (the
        runtime's clock)."""

    def on_start(self) -> None:
        self.start_alarm(
            _Tick(), time.monotonic, name="surelay-replay", at=time.monotonic(), poll=POLL
        )

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, StartReplay):
            job = self._start(message.request_id)
            return 0 if job is None else job.requested
        if isinstance(message, ReplayedMany):
            # every end is counted before any job is finished (a write that may fail):
            # a crash there loses no count, and the tick finishes the job again
            ended = {id(job): job for one in message.items if (job := self._replayed(one))}
            for job in ended.values():
                self._finish_if_done(job)
        elif isinstance(message, _Tick):
            self._tick()
        return None

    # -- jobs ----------------------------------------------------------------------------

    def _start(self, request_id: str, unoffered: frozenset[str] = frozenset()) -> Job | None:
        """Select the request's records and hand them out (paced if it has a rate);
        `unoffered`: transports no live runtime offers (their records are refused)."""
        state = self._state
        with state.lock:
            job = state.jobs.get(request_id)
        if job is not None:
            return job  # already started (the API's ask and a poll may both name it)
        store = self._at.store
        with store.read() as txn:
            found = store.replay_requests.get(txn, request_id)
        if found is None:
            raise KeyError(f"no replay request {request_id!r}")
        if found.status in ("done", "failed"):
            return None
        live = holders(store.path)  # read now: the status may change before the write
        request = store.write(
            lambda txn: store.replay_requests.claim(txn, request_id, slot=store.slot, live=live)
        ).result()
        if request is None:
            return None  # ended meanwhile, or another runtime carries it out
        rate = request.rate
        bucket = None if rate is None else TokenBucket(rate, max(1.0, rate / 20), time.monotonic())
        job = Job(replace(request, status="running"), bucket)
        job.unoffered = unoffered
        try:
            selected, refused = self._select(request)
        except Exception as error:
            logger.exception("replay request %s could not select its records", request_id)
            self._save(replace(request, status="failed", error=str(error)))
            raise
        job.requested = len(selected) + refused
        job.counts["refused"] = refused
        partitions = len(self._at.peers.replay_workers)
        job.pending.extend(
            (replay_partition(key, dl_id, partitions), dl_id, key) for dl_id, key in selected
        )
        with state.lock:
            state.jobs[request_id] = job
        logger.info(
            "replay %s: %d record(s) selected%s",
            request_id,
            job.requested,
            "" if rate is None else f", at most {rate}/s",
        )
        self._save(replace(job.request, progress=job.report().progress()))
        self._dispatch(job)
        self._finish_if_done(job)
        return job

    def _select(self, request: ReplayRequest) -> tuple[list[tuple[str, str | None]], int]:
        """(id, key) of the records to replay in failure order, and how many ids named
        no record at all (refused)."""
        store = self._at.store
        table = store.dead_letters
        selected: list[tuple[str, str | None]] = []
        refused = 0
        with store.read() as txn:
            if request.ids is not None:
                for dl_id in sorted(set(request.ids)):  # ids are time-ordered
                    record = table.get(txn, dl_id)
                    if record is None:
                        refused += 1
                    else:
                        selected.append((record.id, record.key))
                return selected, refused
            filters = {name: request.filters.get(name) for name in FILTERS}
            selected.extend((r.id, r.key) for r in table.matching(txn, **filters))
            return selected, refused

    def _dispatch(self, job: Job) -> float:
        """Hand out what the job's rate allows now; the seconds until more may go."""
        workers = self._at.peers.replay_workers
        batches: dict[int, list[Replay]] = {}
        wait = 0.0
        while job.pending:
            if job.bucket is not None:
                wait = job.bucket.take(time.monotonic())
                if wait:
                    break
            partition, dl_id, key = job.pending.popleft()
            job.outstanding += 1
            batches.setdefault(partition, []).append(Replay(job.request.id, dl_id, key=key))
        for partition, batch in batches.items():  # one message per worker, in order
            workers[partition].tell(Replays(tuple(batch)))
        return wait

    def _replayed(self, message: Replayed) -> Job | None:
        """Count a record's end in its job; the job, if it has one."""
        if message.job is None:
            logger.info("recovered replay of %s: %s", message.dead_letter_id, message.result)
            return None
        with self._state.lock:
            job = self._state.jobs.get(message.job)
            if job is None:
                return None
            job.counts[message.result] += 1
            job.outstanding -= 1
        return job

    def _finish_if_done(self, job: Job) -> None:
        if job.pending or job.outstanding or job.finished.done():
            return
        report = job.report()
        job.request = replace(job.request, status="done")
        if job.unoffered and report.refused:
            names = ", ".join(map(repr, sorted(job.unoffered)))
            job.request = replace(
                job.request,
                error=f"records for transport(s) {names} refused: no runtime on the "
                f"directory offered them for {OFFER_GRACE:g}s",
            )
        job.ended = time.monotonic()
        try:
            self._save(replace(job.request, progress=report.progress()))
        except Exception:  # (as a save that fails later is): logged, the job still ends
            logger.exception("replay %s: could not save that it is done", job.request.id)
        logger.info("replay %s done: %s", job.request.id, report)
        job.finished.set_result(report)

    # -- the periodic look ---------------------------------------------------------------

    def _tick(self) -> None:
        if not self._at.peers.attached:  # the runtime is still wiring the tree
            if self._alarm is not None:
                self._alarm.set(time.monotonic() + 0.01)
            return
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + POLL
            self._poll()
        deadline = self._next_poll
        with self._state.lock:
            jobs = list(self._state.jobs.values())
        for job in jobs:
            if job.pending:
                wait = self._dispatch(job)
                if wait:
                    deadline = min(deadline, time.monotonic() + wait)
            elif job.finished.done() and job.outstanding == 0:
                self._forget_later(job)
            else:
                self._finish_if_done(job)  # (again, after a crash while finishing it)
        if self._alarm is not None:
            self._alarm.set(deadline)

    def _poll(self) -> None:
        store = self._at.store
        with store.read() as txn:
            requests = store.replay_requests.list(txn, limit=MAX_LIMIT)
        slot = store.slot
        live: set[int] | None = None
        pending = {r.id for r in requests if r.status == "pending"}
        for request_id in set(self._unoffered_since) - pending:
            del self._unoffered_since[request_id]  # taken, cancelled or gone
        for request in requests:
            job = self._state.jobs.get(request.id)
            if job is None and request.status == "running" and request.owner not in (None, slot):
                if live is None:
                    live = set(holders(store.path))
                if request.owner in live:
                    continue  # another runtime carries it out
            if job is None and request.status in ("pending", "running"):
                # pending: asked from another process; running: left by a runtime that
                # died mid-replay
                unoffered: frozenset[str] = frozenset()
                if request.status == "pending":
                    ready = self._ready(request)
                    if ready is None:
                        continue  # left for a runtime that has the transports it needs
                    unoffered = ready
                try:
                    self._start(request.id, unoffered)
                except Exception:
                    logger.exception("replay request %s failed to start", request.id)
            elif job is not None and not job.finished.done():
                progress = job.report().progress()
                if progress != job.saved:
                    self._save(replace(job.request, progress=progress))
        self._recover_leases()

    def _ready(self, request: ReplayRequest) -> frozenset[str] | None:
        """Whether this runtime takes pending `request` now: None to leave it (another
        live runtime offers every transport it needs, or one may still come within
        `OFFER_GRACE`), else the transports whose records it refuses (empty: this
        runtime has every one it needs)."""
        needed = self._needed(request)
        lacking = needed - set(self._at.transports)
        if not lacking:
            self._unoffered_since.pop(request.id, None)
            return frozenset()
        store = self._at.store
        others = holders(store.path)
        others.pop(store.slot, None)
        with store.read() as txn:
            offers = store.status.offers(txn, others)
        now = self._at.clock()
        if any(needed <= offer for offer in offers):
            self._unoffered_since.pop(request.id, None)
            waited = 0.0
        else:
            waited = now - self._unoffered_since.setdefault(request.id, now)
        unoffered = refusing(needed, lacking, offers, waited)
        if unoffered is None:
            self._say_deferred(request, lacking)
            return None
        self._unoffered_since.pop(request.id, None)
        logger.warning(
            "replay request %s: no runtime on the directory has offered every transport it "
            "needs for %gs; this one carries it out and refuses its records for %s",
            request.id,
            OFFER_GRACE,
            ", ".join(sorted(unoffered)),
        )
        return frozenset(unoffered)

    def _needed(self, request: ReplayRequest) -> set[str]:
        """The transports of the records `request` names (as far as it names them: a
        request by filter without a transport needs whatever this runtime has)."""
        store = self._at.store
        with store.read() as txn:
            if request.ids is not None:
                records = (store.dead_letters.get(txn, i) for i in request.ids)
                return {r.transport for r in records if r is not None}
        wanted = request.filters.get("transport")
        return {wanted} if wanted is not None else set()

    def _say_deferred(self, request: ReplayRequest, lacking: set[str]) -> None:
        if request.id not in self._deferred:
            self._deferred.add(request.id)
            logger.info(
                "replay request %s waits for a runtime with transport(s) %s (refused if "
                "none offers them within %gs)",
                request.id,
                ", ".join(sorted(lacking)),
                OFFER_GRACE,
            )

    def _recover_leases(self) -> None:
        """Replay again records left `replaying` by a worker that is gone: at start,
        then every `LEASE_CHECK` seconds (each look decodes every record being
        replayed, so it must not come with every poll)."""
        at = self._at
        state = self._state
        now = at.clock()
        at_start = not state.recovered_at_start
        if not at_start and now < self._leases_at:
            return
        self._leases_at = now + LEASE_CHECK
        table = at.store.dead_letters
        # Alone on the directory, no live runtime can hold a lease: take them all.
        alone = at_start and set(holders(at.store.path)) <= {at.store.slot}
        with at.store.read() as txn:
            stuck = (
                table.list(txn, status="replaying", limit=_RECOVERY_LIMIT)
                if alone
                else table.expired_leases(txn, now=now, limit=_RECOVERY_LIMIT)
            )
        workers = at.peers.replay_workers
        for record in stuck:
            with state.lock:
                if record.id in state.held:
                    continue
            logger.warning(
                "dead letter %s was left replaying (lease until %s); replaying it again, "
                "guarded by dedup",
                record.id,
                record.lease_until,
            )
            worker = workers[replay_partition(record.key, record.id, len(workers))]
            worker.tell(Replay(None, record.id, renew=alone, key=record.key))
        # only now: a record leased after this point was leased by this runtime
        state.recovered_at_start = True

    def _forget_later(self, job: Job) -> None:
        """Drop a finished job from memory a while after it ended (its waiters have
        their report; the stored request keeps it for the CLI)."""
        if job.ended is not None and time.monotonic() - job.ended > 60.0:
            with self._state.lock:
                self._state.jobs.pop(job.request.id, None)

    def _save(self, request: ReplayRequest) -> None:
        store = self._at.store
        saved = replace(request, updated_at=self._at.clock())
        job = self._state.jobs.get(request.id)
        if job is not None:
            job.request = saved
            job.saved = dict(saved.progress)

        def put(txn: Any) -> None:
            store.replay_requests.put(txn, saved)

        store.write(put).add_done_callback(_log_failure(request.id))


def refusing(
    needed: Set[str], lacking: Set[str], others: Sequence[Set[str]], waited: float
) -> frozenset[str] | None:
    """Whether a runtime lacking the transports `lacking` of the `needed` ones of a
    pending request takes it now, `others` being what each other live runtime offers and
    `waited` the seconds since no runtime offered every needed one: None to leave it for
    now, else the transports whose records it refuses. A request is carried out by one
    runtime: one offering all it needs takes it at once; failing that, after
    `OFFER_GRACE` (a consumer registered after open may still come) the runtime lacking
    fewest takes it, and one lacking more waits a second grace (in case that one is gone),
    so a request split between runtimes still ends."""
    if not lacking:
        return frozenset()
    if any(needed <= offer for offer in others):
        return None  # that runtime takes it
    fewest = min((len(needed - offer) for offer in others), default=len(lacking))
    grace = OFFER_GRACE if len(lacking) <= fewest else 2 * OFFER_GRACE
    return frozenset(lacking) if waited >= grace else None


def _log_failure(request_id: str) -> Any:
    def check(future: Future[Any]) -> None:
        if future.exception() is not None:
            logger.error("could not save replay request %s: %s", request_id, future.exception())

    return check
