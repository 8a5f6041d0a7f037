"""The ReplayWorker: replays the dead letters of one partition through the delivery
engine, many at once, one key's records one at a time in the order the coordinator
hands them out (failure order).

For each record, when it is the head of its key's line and fewer than `ACTIVE_MAX` of
this worker's records are in flight:

1. lease it and check dedup, in one transaction (`Store.lease_for_replay`): a record
   whose idempotency key was delivered meanwhile becomes `replayed` without a send;
   `replayed` and `archived` records, and ones another live replay holds, are not sent;
   a lease recovery sends a record only while it is still `replaying`;
2. submit one attempt to its transport's engine (breaker, the call under its ack
   timeout, one classification, `surelay.deliver` span), under a `surelay.replay` span
   linked to the message's original trace; the worker goes back to its mailbox;
3. when the attempt comes back: delivered → `replayed` with its dedup record, in one
   transaction; failed → back to `dead` with `replay_count + 1` and the new reason;
   breaker open → back to `dead` unchanged (no attempt was made). The key's next record
   starts.

A replay is one attempt, not a new retry cycle: an operator replaying a canary wants
its verdict now, and a record that fails again is back in the dead-letter list at once.

The worker never waits for a write: the leases and outcomes asked for in one turn come
back to it as one message (`_Leased`, `_Written`) once their writes end, so they share
commits with each other and with everything else the store writes. The coordinator
hands records out and hears of their ends in batches too (`Replays`, `ReplayedMany`).
A record counts as active (against `ACTIVE_MAX`) from its lease until its outcome is
durable (one that is not sent, from its lease until it is back to `dead`, outside that
count). A write that fails is a crash on that record (see below).

A crash (the transport raised a BaseException that is not an Exception) restarts the
worker; the next incarnation replays that record again under its own lease (dedup
still guards it) before its key's next record. A record that crashes the worker twice
goes back to `dead` with reason class `crash`. Records in flight at the crash go on;
their results wait in the worker's box for the next incarnation.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from surelay.actors.queues import Lines
from surelay.config import RetryPolicy
from surelay.delivery.attempt import CRASH, LOST, Attempt, ResultBox
from surelay.envelope import Envelope, Priority
from surelay.policy.verdict import (
    CRASHES_TO_DEAD_LETTER,
    Dead,
    Delivered,
    Hold,
    decide,
    describe,
)
from surelay.replay_jobs import Replay, Replayed, ReplayedMany, Replays, ReplayState
from surelay.replay_report import ReplayResult
from surelay.storage.records import DeadLetter
from surelay.storage.store import LeaseVerdict
from surelay.supervision import Actor, CrashReport
from surelay.telemetry import (
    ATTR_DEAD_LETTER_ID,
    ATTR_OUTCOME,
    SPAN_REPLAY,
    TRACEPARENT,
    message_span,
    record_error,
    traceparent_of,
)

if TYPE_CHECKING:
    from surelay.counters import Counters
    from surelay.delivery import Engines
    from surelay.peers import Peers
    from surelay.storage.store import Store
    from surelay.telemetry import Telemetry
    from surelay.transports.protocol import Transport

__all__ = ["ACTIVE_MAX", "LEASE_MARGIN", "ReplayWorker", "WorkerEndpoint", "WorkerState"]

logger = logging.getLogger("surelay.actors")

LEASE_MARGIN = 30.0
"""Seconds a lease outlasts the longest ack timeout. A leased record may wait for a
call slot longer than that; the lease then only matters if this runtime dies, since
lease recovery skips the records a live worker holds (`ReplayState.held`)."""

ACTIVE_MAX = 256
"""Most records one worker has leased and in flight at once (the engine bounds the
calls; this bounds leases taken ahead of a free call slot)."""

ONE = RetryPolicy(max_attempts=1)
"""A replay is one attempt: a transient failure ends it as `exhausted`."""

_NOT_SENT: dict[LeaseVerdict, ReplayResult] = {
    "duplicate": "skipped_duplicate",
    "replayed": "skipped_duplicate",
    "archived": "refused",
    "held": "refused",
    "dead": "refused",
    "missing": "refused",
}


@dataclass(frozen=True, slots=True)
class _Settle:
    """From the engine (or, after a restart, from itself): attempts wait in the box."""


@dataclass(frozen=True, slots=True)
class _Leased:
    """To itself: the leases asked for in one turn were written (or failed): each
    record's `Replay` and the future of its lease."""

    items: tuple[tuple[Replay, Future[tuple[LeaseVerdict, DeadLetter | None]]], ...]


@dataclass(frozen=True, slots=True)
class _Written:
    """To itself: the outcomes settled in one turn were written (or failed): each
    attempt's `seq`, the record's result and the future of its write."""

    items: tuple[tuple[int, ReplayResult, Future[Any]], ...]


@dataclass(frozen=True, slots=True)
class _ReplayCall:
    """What the worker hands an engine: the replay's envelope, and its number among
    this worker's calls (how its attempt finds its record)."""

    envelope: Envelope
    seq: int


def _seq(attempt: Attempt) -> int:
    call = attempt.call
    assert isinstance(call, _ReplayCall), call
    return call.seq


@dataclass(frozen=True, slots=True)
class _PutBack:
    """To itself: a record that will not be sent (it crashed the worker twice, or its
    transport is not this runtime's) was put back to `dead`, and ends with `result`
    (if the write failed, its lease lapses and lease recovery takes it again)."""

    message: Replay
    write: Future[Any]
    result: ReplayResult


@dataclass(slots=True)
class _Active:
    """A record leased and submitted, waiting for its attempt."""

    message: Replay
    record: DeadLetter
    span: Span | None
    attempt: Attempt | None = None
    """Its attempt, once back (its outcome is being written)."""
    result: ReplayResult | None = None
    """The outcome being written, once the attempt is back."""


def _line(message: Replay) -> str:
    return message.line


def _same_rank(_message: Replay) -> int:
    return Priority.NORMAL.rank  # records of one partition are replayed as they come


def _dead_letter_id(message: Replay) -> str:
    return message.dead_letter_id


class WorkerState:
    """What one worker knows across its incarnations."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.lines: Lines[Replay] = Lines(_line, _same_rank, _dead_letter_id)
        """Records waiting per key, the head first (the head may be active); a ready
        head may start."""
        self.active: dict[int, _Active] = {}
        """By the `seq` of its call (`_ReplayCall`), a number this worker gives each."""
        self.serial = itertools.count(1)
        self.results = ResultBox()
        self.starting: Replay | None = None
        """The record being leased or submitted (made ready again after a crash)."""
        self.leasing: set[str] = set()
        """Dead-letter ids whose lease is being written (they count as active)."""
        self.arrived: deque[tuple[Replay, Future[tuple[LeaseVerdict, DeadLetter | None]]]] = deque()
        """Leases written, their records not submitted yet (kept across a crash)."""
        self.ended: list[Replayed] = []
        """Records that ended and are not told to the coordinator yet: told at the end
        of the turn, or by the next incarnation if the turn crashed."""
        self.crashes: dict[str, int] = {}


@dataclass(frozen=True, slots=True)
class WorkerEndpoint:
    """What every replay worker is given (built by `surelay.wiring`): the store, the
    clock, how long a replayed message's dedup record is kept, the runtime's transports
    by name and their engines, the counters, the telemetry and the coordinator (through
    `peers`)."""

    store: Store
    clock: Callable[[], float]
    dedup_ttl: float
    transports: Mapping[str, Transport]
    engines: Engines
    counters: Counters
    telemetry: Telemetry
    peers: Peers


class ReplayWorker(Actor):
    def __init__(self, endpoint: WorkerEndpoint, shared: ReplayState, state: WorkerState) -> None:
        super().__init__()
        self._at = endpoint
        self._shared = shared
        self._state = state
        self._tell: Callable[[Any], None] = lambda _message: None

    def on_start(self) -> None:
        ref = self.ref if self.ref is not None else self.actor_ref
        self._tell = ref.tell
        self._state.results.notify = lambda: ref.tell(_Settle())

    def on_restart(self, crash: CrashReport) -> None:
        state = self._state
        if state.starting is not None:
            state.lines.ready(state.starting)  # (taken, its lease not yet asked for)
            state.starting = None
        blamed = state.results.blamed()
        if blamed is not None:
            active = state.active.pop(_seq(blamed), None)
            if active is not None:
                self._crashed(active, crash.error)
        self._tell_ended()
        if self.ref is not None:
            self.ref.tell(_Settle())

    def on_stop(self) -> None:
        """The runtime closes (its engines are halted; a worker stopped to be restarted
        keeps its records going): the records still under way end here for this run,
        and their spans say so: with the outcome being written, or `stopped` for a call
        that did not come back (its lease lapses, and the next open replays it)."""
        if not self._at.engines.halted:
            return
        for active in self._state.active.values():
            if active.attempt is not None and active.result is not None:
                self._end_span(active.span, active.result, active.attempt)
            elif active.span is not None:
                active.span.set_attribute(ATTR_OUTCOME, "stopped")
                active.span.end()
            active.span = None

    def _crashed(self, active: _Active, error: BaseException) -> None:
        """The worker crashed on `active`'s attempt: replay it again first (a renewed
        lease), or on its second crash put it back to `dead` as `crash`."""
        state = self._state
        dl_id = active.message.dead_letter_id
        crashes = state.crashes[dl_id] = state.crashes.get(dl_id, 0) + 1
        if active.span is not None:
            active.span.set_attribute(ATTR_OUTCOME, "crash")
            record_error(active.span, error)
            active.span.end()
        if crashes < CRASHES_TO_DEAD_LETTER:
            logger.warning("replay worker crashed on %s; replaying it again", dl_id)
            state.lines.ready(replace(active.message, renew=True))
            return
        state.crashes.pop(dl_id, None)
        # not waited for: the record ends once the write has (`_PutBack`)
        try:
            write = self._at.store.replay_failed(
                dl_id,
                reason_class="crash",
                reason=f"the replay worker crashed on it ({describe(error)}), {crashes} times",
                error_type=type(error).__name__,
                failed_at=self._at.clock(),
            )
        except Exception as refused:  # the store refuses writes now
            write = Future()
            write.set_exception(refused)
        self._when_written([write], _PutBack(active.message, write, "failed"))

    def on_receive(self, message: Any) -> None:
        try:
            if isinstance(message, Replays):
                for one in message.items:
                    self._queue(one)
            elif isinstance(message, Replay):
                self._queue(message)
            elif isinstance(message, _Leased):
                self._state.arrived.extend(message.items)
            elif isinstance(message, _Written):
                for seq, result, write in message.items:
                    self._written(seq, result, write)
            elif isinstance(message, _PutBack):
                if message.write.exception() is not None:
                    # it stays `replaying` under its lease; lease recovery takes it again
                    # once that lapses. Its job and its key's line go on meanwhile.
                    logger.error(
                        "replay of %s: could not put it back to dead: %s",
                        message.message.dead_letter_id,
                        message.write.exception(),
                    )
                self._record_done(message.message, message.result)
            self._leased()
            self._settle_results()
            self._start_ready()
        finally:  # (a crash in this turn loses none of the ends it saw)
            self._tell_ended()

    def _queue(self, message: Replay) -> None:
        lines = self._state.lines
        if lines.add(message):
            lines.ready(message)

    def _tell_ended(self) -> None:
        """Tell the coordinator the records that ended in this turn, in one message."""
        state = self._state
        ended, state.ended = state.ended, []
        if ended and self._at.peers.attached:
            self._at.peers.replay_coordinator.tell(ReplayedMany(tuple(ended)))

    # -- starting ------------------------------------------------------------------------

    def _start_ready(self) -> None:
        """Ask for the leases of the ready lines' heads, as many as `ACTIVE_MAX`
        allows, without waiting: each comes back as a `_Leased`, and leases asked for
        together share a commit."""
        state = self._state
        asked: list[tuple[Replay, Future[tuple[LeaseVerdict, DeadLetter | None]]]] = []
        at = self._at
        now = at.clock()
        until = now + self._lease_seconds()
        try:
            while state.lines.ready_count and len(state.active) + len(state.leasing) < ACTIVE_MAX:
                (message,) = state.lines.take(1)
                state.starting = message
                with self._shared.lock:
                    self._shared.held.add(message.dead_letter_id)
                lease = at.store.lease_for_replay(
                    message.dead_letter_id,
                    now=now,
                    until=until,
                    renew=message.renew,
                    recovering=message.job is None,
                )
                state.leasing.add(message.dead_letter_id)
                state.starting = None
                asked.append((message, lease))
        finally:  # (the leases asked for before a failure still come back)
            if asked:
                self._when_written([lease for _, lease in asked], _Leased(tuple(asked)))

    def _when_written(self, writes: list[Future[Any]], message: Any) -> None:
        """Tell this worker `message` once every one of `writes` has ended (on the
        writer's thread; the worker handles it in its own turn, restarted or not): the
        writes of one turn share a commit, so they come back as one message."""
        tell = self._tell
        left = [len(writes)]
        lock = threading.Lock()

        def back(_done: Future[Any]) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            try:
                tell(message)
            except Exception:  # the worker is gone (the runtime closed): the writes stand
                logger.debug("replay worker gone before a write it made ended", exc_info=True)

        for write in writes:
            write.add_done_callback(back)

    def _leased(self) -> None:
        """Leases were written: submit each record's attempt (a failed write crashes
        the worker, which leases that record again; the rest wait in `arrived`)."""
        state = self._state
        while state.arrived:
            message, lease = state.arrived.popleft()
            state.leasing.discard(message.dead_letter_id)
            state.starting = message
            verdict, record = lease.result()
            result = self._start(message, verdict, record)
            state.starting = None
            if result is not None:
                self._record_done(message, result)

    def _start(
        self, message: Replay, verdict: LeaseVerdict, record: DeadLetter | None
    ) -> ReplayResult | None:
        """Submit the attempt of a record (`verdict` of its lease); the result if none
        is made."""
        at = self._at
        dead_letter_id = message.dead_letter_id
        if verdict != "leased":
            logger.info("replay of %s: not sent (%s)", dead_letter_id, verdict)
            return _NOT_SENT[verdict]
        assert record is not None
        if record.transport not in at.transports:
            logger.warning(
                "replay of %s refused: this runtime has no transport %r",
                dead_letter_id,
                record.transport,
            )
            try:
                release = at.store.release_lease(dead_letter_id)
            except Exception as refused:  # the store refuses writes now: its lease lapses
                release = Future()
                release.set_exception(refused)
            self._when_written([release], _PutBack(message, release, "refused"))
            return None  # it ends once back to dead
        span = None
        headers = dict(record.headers)
        if at.telemetry.tracing:
            span = message_span(
                at.telemetry.tracer,
                SPAN_REPLAY,
                record.message_id,
                record.transport,
                record.key,
                record.attempts + 1,
                parent=record.headers,
                link=True,  # a new trace, linked to the message's first life
                more={ATTR_DEAD_LETTER_ID: record.id},
            )
            traceparent = traceparent_of(span)
            if traceparent is not None:
                headers[TRACEPARENT] = traceparent  # the deliver span is the replay's child
        envelope = Envelope(
            message_id=record.message_id,
            transport=record.transport,
            payload=record.payload,
            key=record.key,
            idempotency_key=record.idempotency_key,
            priority=record.priority,
            headers=MappingProxyType(headers),
            attempt=record.attempts + 1,
            created_at=record.first_attempt_at,
            type=record.type,
        )
        state = self._state
        call = _ReplayCall(envelope, next(state.serial))
        state.active[call.seq] = _Active(message, record, span)
        # a replay is sent whatever its age: no message_ttl applies to it
        at.engines[record.transport].submit([((call,), state.results.put)], expiring=False)
        return None

    def _record_done(self, message: Replay, result: ReplayResult) -> None:
        """`message`'s record ended with `result`: tell the coordinator, start the next
        record of its key."""
        state = self._state
        state.crashes.pop(message.dead_letter_id, None)
        following = state.lines.finish(message)
        if following is not None:
            state.lines.ready(following)
        with self._shared.lock:
            self._shared.held.discard(message.dead_letter_id)
        state.ended.append(Replayed(message.job, message.dead_letter_id, result))

    # -- settling ------------------------------------------------------------------------

    def _settle_results(self) -> None:
        state = self._state
        written: list[tuple[int, ReplayResult, Future[Any]]] = []
        try:
            for attempt in state.results.settle():
                seq = _seq(attempt)
                active = state.active.get(seq)
                if active is not None and attempt.kind == LOST:  # as if it crashed the worker
                    del state.active[seq]
                    self._crashed(active, attempt.error or RuntimeError("the call was lost"))
                elif active is not None:
                    result, write = self._settle(active, attempt)  # a CRASH raises here
                    active.attempt = attempt
                    active.result = result
                    written.append((seq, result, write))
        finally:  # (what was written before a crash still comes back)
            if written:
                self._when_written([w for _, _, w in written], _Written(tuple(written)))

    def _written(self, seq: int, result: ReplayResult, write: Future[Any]) -> None:
        """The outcome of an attempt is durable: the record has ended. A failed write
        is treated as a crash on that record (replayed again, or back to `dead`)."""
        state = self._state
        active = state.active.pop(seq, None)
        if active is None:
            return
        error = write.exception()
        if error is not None:
            self._crashed(active, error)
            return
        if result == "replayed":
            self._at.counters.add("replayed", active.record.transport)
        assert active.attempt is not None
        self._end_span(active.span, result, active.attempt)
        self._record_done(active.message, result)

    def _settle(self, active: _Active, attempt: Attempt) -> tuple[ReplayResult, Future[Any]]:
        """Write the verdict on a replay's one attempt (`decide`, with no retry left):
        the record's result and the write, not waited for."""
        at = self._at
        record = active.record
        now = at.clock()
        if attempt.kind == CRASH:
            assert attempt.error is not None
            raise attempt.error  # on_restart replays it again, or dead-letters it
        error = attempt.error if attempt.error is not None else TimeoutError(attempt.kind)
        verdict = decide(attempt.kind, failure=attempt.failure, wait=attempt.wait, policy=ONE)
        if isinstance(verdict, Delivered):
            return "replayed", at.store.replayed(
                record.id, delivered_at=now, expires_at=now + at.dedup_ttl
            )
        if isinstance(verdict, Hold):
            logger.warning(
                "replay of %s not sent: transport %r holds its calls for %.1fs (its breaker "
                "is open, or its rate limit's next turn is that far); it stays dead: replay "
                "it later, or at a replay rate under the limit",
                record.id,
                record.transport,
                attempt.wait,
            )
            return "failed", at.store.release_lease(record.id)
        assert isinstance(verdict, Dead)
        return "failed", at.store.replay_failed(
            record.id,
            reason_class=verdict.reason_class,
            reason=f"replay attempt failed: {describe(error)}",
            error_type=type(error).__name__,
            attempts=record.attempts + 1,
            failed_at=now,
        )

    @staticmethod
    def _end_span(span: Span | None, result: ReplayResult, attempt: Attempt) -> None:
        if span is None:
            return
        span.set_attribute(ATTR_OUTCOME, result)
        if result == "failed" and attempt.error is not None:
            record_error(span, attempt.error)
        span.end()

    def _lease_seconds(self) -> float:
        at = self._at
        longest = max((at.engines[name].ack_timeout for name in at.transports), default=0.0)
        return longest + LEASE_MARGIN
