"""The Sender: one per partition; decides the order of its messages, never waits for a call.

A message goes to the sender of `partition_for(key)`. The sender keeps a
`PartitionQueue` (strict FIFO per key, weighted priorities across keys). It submits the
ready heads to their transports' engines (so a key has at most one message in flight),
dropping the expired and the duplicates first, and goes back to its mailbox. Each call
comes back as an `Attempt` in the partition's `ResultBox`; the sender settles it by the
pure `decide` verdict:

- delivered: dedup record written and outbox entry removed in one transaction (one
  write for all the results settled together); the receipt completes once that is
  durable; the key's next message becomes ready and is submitted;
- retry after d: the next attempt and its due time are written to the outbox and the
  message is held in the RetryScheduler (its key waits);
- hold (breaker open): held until the breaker lets a call through; no attempt is spent;
- dead (permanent, invalid, exhausted, expired, crashed twice): a `Capture` to the
  DeadLetterSink.

The sender holds a bounded window of its partition's outbox (`surelay.actors.window`):
past it, new messages stay on disk and are streamed in as the window drains, so a
backlog (recovered at open, adopted, or built up by a long outage) costs the memory of
the window, not of the backlog.

Everything the sender knows lives in a `PartitionState` that outlives incarnations, so
a crash loses nothing: calls in flight go on and their results wait in the box for the
next incarnation; the attempt being settled at the crash (a transport that raised a
`BaseException` crashes the sender on purpose) is retried, attempt counted, or on its
second crash dead-lettered with reason `crash`.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pykka

from surelay.actors.dead_letter import Capture
from surelay.actors.queues import PartitionQueue
from surelay.actors.timer import WAITING, Check
from surelay.actors.window import (
    LOOK_MAX,
    WINDOW_MESSAGES,
    Deliver,
    Limits,
    Wake,
    Window,
    hold_name,
    limits_for,
)
from surelay.backlog import Due, Schedule
from surelay.delivery.attempt import (
    CRASH,
    LOST,
    OK,
    SKIPPED,
    THROTTLED,
    Attempt,
    ResultBox,
    Sink,
)
from surelay.errors import TransientError
from surelay.policy.verdict import Dead, Delivered, Hold, Retry, decide, describe
from surelay.receipts import Outcome
from surelay.storage.ended import Ending
from surelay.storage.environment import Txn
from surelay.storage.records import OutboxEntry, ReasonClass
from surelay.supervision import Actor, CrashReport
from surelay.telemetry import (
    ATTR_OUTCOME,
    SPAN_DELIVER,
    SPAN_RETRY,
    message_span,
    record_error,
)

if TYPE_CHECKING:
    from surelay.actors.window import Orphans
    from surelay.config import RuntimeConfig
    from surelay.counters import Counters
    from surelay.delivery import Engines
    from surelay.peers import Peers
    from surelay.receipts import Tracker
    from surelay.storage.store import Store
    from surelay.telemetry import Telemetry
    from surelay.transports.protocol import Transport

__all__ = [
    "RUN_MAX",
    "SUBMIT_MAX",
    "Deliver",
    "PartitionState",
    "Sender",
    "SenderEndpoint",
    "Settle",
]

logger = logging.getLogger("surelay.actors")

SUBMIT_MAX = 1024
"""Most messages one round submits; the rest go in the next round, after newer mail."""

RUN_MAX = 64
"""Most messages of one key submitted as one run."""

DEFER_AFTER = 1.0
"""Seconds a message's rate must make it wait before it waits on disk, not in memory."""

LAST_ERROR_CHARS = 1000
"""Most characters of a failed attempt's error kept with its message (`rt.status`)."""


@dataclass(frozen=True, slots=True)
class Settle:
    """From the engines: attempts are waiting in the result box."""


@dataclass(frozen=True, slots=True)
class _Refill:
    """To itself: read more of the partition's outbox into the window."""


@dataclass(frozen=True, slots=True)
class _Pump:
    """To itself: more heads are ready (queued behind newer mail, for fairness)."""


@dataclass(slots=True)
class _Round:
    """What one submitting round has found so far."""

    now: float
    delivered: set[str]
    """Idempotency keys delivered (durably, or with their record being written)."""
    calling: set[str] = field(default_factory=set)
    """Idempotency keys this round submits."""
    duplicates: list[OutboxEntry] = field(default_factory=list)
    parked: list[OutboxEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SenderEndpoint:
    """What every sender is given (built by `surelay.wiring`): the config (its clock,
    TTLs and retry policies), the store, the runtime's transports by name (a live view:
    `rt.consume` adds to it) and their engines, the receipts tracker and counters, the
    telemetry, the count of entries for transports it lacks, the retry scheduler and
    dead-letter sink (through `peers`) and the jitter's random source."""

    config: RuntimeConfig
    store: Store
    transports: Mapping[str, Transport]
    engines: Engines
    tracker: Tracker
    counters: Counters
    telemetry: Telemetry
    orphans: Orphans
    peers: Peers
    rng: random.Random = field(default_factory=random.Random)

    @property
    def durable(self) -> bool:
        """Whether accepted messages are in the outbox (AT_LEAST_ONCE)."""
        return self.config.guarantee.value == "at_least_once"


class PartitionState:
    """What one partition's sender knows; owned by the runtime so a crash keeps it."""

    def __init__(self, partition: int, limits: Limits | None = None) -> None:
        self.partition = partition
        self.queue = PartitionQueue()
        self.window = Window(limits_for(1, WINDOW_MESSAGES * 2) if limits is None else limits)
        self.in_flight: dict[str, OutboxEntry] = {}
        """Submitted to an engine, outcome not yet settled."""
        self.results = ResultBox()
        self.taking: list[OutboxEntry] = []
        """Taken from the ready queue, not yet submitted (made ready again after a crash)."""
        self.crashes: dict[str, int] = {}
        self.first_attempt: dict[str, float] = {}
        self.last_delay: dict[str, float] = {}
        self.delivering: set[str] = set()
        """Idempotency keys delivered whose dedup record is not yet durable."""
        self.calling: set[str] = set()
        """Idempotency keys with a call in flight."""
        self.parked: dict[str, list[OutboxEntry]] = {}
        """Heads waiting for the call in flight of their idempotency key to end."""
        self.pump_queued = False
        self.refill_queued = False


class Sender(Actor):
    def __init__(self, endpoint: SenderEndpoint, state: PartitionState) -> None:
        super().__init__()
        self._at = endpoint
        self._state = state

    # -- life cycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        ref = self.ref if self.ref is not None else self.actor_ref
        self._state.results.notify = lambda: ref.tell(Settle())

    def on_restart(self, crash: CrashReport) -> None:
        """Settle what the crashed incarnation was settling: the blamed attempt is
        retried or dead-lettered; the rest wait for this incarnation."""
        state = self._state
        now = self._at.config.clock()
        for entry in state.taking:
            state.in_flight.pop(entry.envelope.message_id, None)
            if state.queue.is_head(entry):
                self._head(entry, now)
        state.taking = []
        blamed = state.results.blamed()
        if blamed is not None:
            error = crash.error
            reason = f"the sender crashed on it ({describe(error)})"
            self._settle(replace(blamed, kind=CRASH, error=error), now, [], reason=reason)
        self._pump_later()

    # -- messages ------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        state = self._state
        queue = state.queue
        if isinstance(message, Deliver):
            self._deliver(message.entries)
        elif isinstance(message, Due):
            queue.ready(message.entry)
        elif isinstance(message, _Pump):
            state.pump_queued = False
        elif isinstance(message, Wake):
            self._wake(message.after)
        elif isinstance(message, _Refill):
            state.refill_queued = False
        self._settle_results()
        if state.window.wants_more(len(queue)):
            self._refill()
        if queue.ready_count and (queue.ready_count >= SUBMIT_MAX or self.actor_inbox.empty()):
            self._submit(queue.take(SUBMIT_MAX))
        if queue.ready_count:
            self._pump_later()

    def _pump_later(self) -> None:
        if not self._state.pump_queued and self.ref is not None:
            self._state.pump_queued = True
            self.ref.tell(_Pump())

    # -- the window --------------------------------------------------------------------

    def _deliver(self, entries: tuple[OutboxEntry, ...]) -> None:
        """Take in new messages, unless they are on disk for the window to stream in
        (see `surelay.actors.window` for why each rule keeps nothing from being lost)."""
        state = self._state
        window = state.window
        if not self._at.durable or not entries[0].seq:  # not on disk: memory is their only
            self._take_in(entries, remember=False)  # queue (BEST_EFFORT, or relayed rows)
            return
        taken: list[OutboxEntry] = []
        left: list[str] = []
        pending = set(self._at.tracker.still_pending(e.envelope.message_id for e in entries))
        for entry in entries:
            seq = entry.seq
            message_id = entry.envelope.message_id
            if message_id in window.known or message_id not in pending:
                continue  # a scan took it in already (or it ended since)
            if not window.spilled and window.full(len(state.queue) + len(taken)):
                self._spill(seq - 1)
            if window.spilled:
                if seq <= window.cursor:
                    window.cursor = seq - 1  # handed over late: the scan goes back for it
                left.append(message_id)
                continue
            taken.append(entry)
        self._take_in(taken, remember=True)
        if left:  # on disk only now: memory (and pressure) no longer count them
            self._at.tracker.spill(left)

    def _take_in(
        self, entries: list[OutboxEntry] | tuple[OutboxEntry, ...], *, remember: bool
    ) -> None:
        """Queue entries; `remember` those on disk, so that no scan takes them again."""
        state = self._state
        window = state.window
        queue = state.queue
        now = self._at.config.clock()
        for entry in entries:
            if remember:
                window.known.add(entry.envelope.message_id)
            window.bytes += len(entry.envelope.payload)
            if queue.add(entry):
                self._head(entry, now)
        if remember:
            self._forget_ended()  # (never between a scan's read and its use of `known`)

    def _spill(self, after: int) -> None:
        state = self._state
        self._at.tracker.hold(hold_name(state.partition))  # flush() waits for the disk
        state.window.spill(after)

    def _wake(self, after: int) -> None:
        self._spill(after)  # (with BEST_EFFORT too: what an earlier run left is on disk)

    def _refill(self) -> None:
        """Read the next entries of the partition's range into the window (one bounded
        step; another is queued behind newer mail while there is room and more)."""
        at = self._at
        state = self._state
        window = state.window
        store = at.store
        room = window.limits.messages - len(state.queue)
        room_bytes = window.limits.bytes - window.bytes
        with store.read() as txn:
            rows, ended = store.outbox.window(  # (a few more than room: some are known)
                txn,
                state.partition,
                after=window.cursor,
                looked=min(LOOK_MAX, max(room, 0) + 64),
                max_bytes=room_bytes,
            )
        taken: list[OutboxEntry] = []
        orphans: dict[str, int] = {}
        transports = at.transports
        for seq, raw in rows:
            if room <= 0 or (room_bytes <= 0 and (taken or state.queue)):
                ended = False
                break
            window.cursor = seq
            entry = store.outbox.decode(state.partition, seq, raw)
            if entry is None or entry.envelope.message_id in window.known:
                continue
            transport = entry.envelope.transport
            if transport not in transports:
                if seq > window.orphans_upto:
                    orphans[transport] = orphans.get(transport, 0) + 1
                continue
            taken.append(entry)
            room -= 1
            room_bytes -= len(entry.envelope.payload)
        window.orphans_upto = max(window.orphans_upto, window.cursor)
        if orphans:
            at.orphans.add(orphans)
        if taken:
            at.tracker.add((e.envelope.message_id for e in taken), receipts=False)
            self._take_in(taken, remember=True)
        if ended:
            window.caught_up()
            at.tracker.release(hold_name(state.partition))
        elif window.wants_more(len(state.queue)) and not state.refill_queued:
            state.refill_queued = True
            if self.ref is not None:
                self.ref.tell(_Refill())

    def _forget_ended(self) -> None:
        """Drop from `known` the messages whose end is durable (so gone from disk before
        the next scan's read begins), once it has grown well past what is held."""
        window = self._state.window
        if len(window.known) > 2 * len(self._state.queue) + 1024:
            pending = self._at.tracker.is_pending
            window.known = {m for m in window.known if pending(m)}

    def _head(self, entry: OutboxEntry, now: float) -> None:
        """`entry` became its key's head: ready now, or held until its due time."""
        if entry.due_at > now:
            self._state.queue.hold(entry)
            self._schedule(entry, entry.due_at)
        else:
            self._state.queue.ready(entry)

    def _schedule(self, entry: OutboxEntry, due: float) -> None:
        self._at.peers.retry.tell(Schedule(self._state.partition, entry, due))

    # -- submitting ----------------------------------------------------------------------

    def _submit(self, heads: list[OutboxEntry]) -> None:
        """Hand ready heads to their engines, each with the run of due messages behind
        it in its key's line (an equal share of `SUBMIT_MAX`, at most `RUN_MAX`), so a
        busy key sends many messages per hand-off. Expired heads are dead-lettered and
        duplicate heads end DUPLICATE here, without a call; a head whose idempotency key
        has a call in flight is parked until that call ends. A run stops before the
        first message behind its head that is not due, not for the head's transport,
        expired, a duplicate or parked: that one waits until it is the head."""
        at = self._at
        state = self._state
        queue = state.queue
        state.taking = heads
        now = at.config.clock()
        heads = self._within_rate(heads, now)
        if not heads:
            state.taking = []
            return
        share = max(1, min(RUN_MAX, SUBMIT_MAX // len(heads)))
        runs = [[head, *queue.behind(head, share - 1)] if share > 1 else [head] for head in heads]
        # copied before the read: a delivery whose record commits after the read began
        # is still in this copy (the writer clears `delivering` once it has committed)
        delivered = set(state.delivering)
        with at.store.read() as txn:
            delivered |= at.store.dedup.seen(
                txn, [e.envelope.idempotency_key for run in runs for e in run], now=now
            )
        round_ = _Round(now, delivered)
        live_runs = [self._live(run, round_) for run in runs]
        # from here on the state changes: nothing below raises before the engines have
        # the runs (a crash above leaves `taking` for on_restart to make ready again)
        put = state.results.put
        by_transport: dict[str, list[tuple[tuple[OutboxEntry, ...], Sink]]] = {}
        for live in live_runs:
            if live:
                for entry in live:
                    state.in_flight[entry.envelope.message_id] = entry
                    state.first_attempt.setdefault(entry.envelope.message_id, now)
                by_transport.setdefault(live[0].envelope.transport, []).append((live, put))
        state.calling.update(round_.calling)
        for head in round_.parked:
            state.parked.setdefault(head.envelope.idempotency_key, []).append(head)
        state.taking = []
        engines = at.engines
        for transport, items in by_transport.items():
            engines[transport].submit(items)
        if round_.duplicates:
            self._record_duplicates(round_.duplicates, now)

    def _within_rate(self, heads: list[OutboxEntry], now: float) -> list[OutboxEntry]:
        """The heads whose rate lets them go now (their turns taken, a group at a time:
        `Limiter.plan`); the others are held until their turn, or wait for it on disk
        (`_defer`), without a round trip through their engine."""
        limiter = self._at.engines.limiter
        if not limiter.any:  # (the usual case: no rate anywhere, nothing to ask)
            return heads
        limited = [h for h in heads if limiter.limits(h.envelope.transport)]
        if not limited:
            return heads
        waits = limiter.plan([h.envelope for h in limited])
        held: set[int] = set()
        far: list[tuple[OutboxEntry, float]] = []
        near: list[tuple[OutboxEntry, float]] = []
        for head, (wait, reserved) in zip(limited, waits, strict=True):
            if wait > 0:
                held.add(id(head))
                (near if reserved else far).append((head, now + wait))
        deferred = self._defer(far, now) if far else set()
        for head, due in (*near, *far):
            if head.envelope.message_id not in deferred:
                self._state.queue.hold(head)
                self._schedule(head, due)
        return [h for h in heads if id(h) not in held] if held else heads

    def _live(self, run: list[OutboxEntry], round_: _Round) -> tuple[OutboxEntry, ...]:
        """What of `run` goes to the engine (see `_submit`); an expired head is
        dead-lettered here, a duplicate or parked head added to the round's list."""
        state = self._state
        now = round_.now
        ttl = self._at.config.message_ttl
        transport = run[0].envelope.transport
        live: list[OutboxEntry] = []
        for entry in run:
            envelope = entry.envelope
            key = envelope.idempotency_key
            head = not live
            if not head and (entry.due_at > now or envelope.transport != transport):
                break
            if ttl is not None and now - envelope.created_at > ttl:
                if head:
                    age = now - envelope.created_at
                    reason = f"not delivered within message_ttl={ttl}s (accepted {age:.3f}s ago)"
                    self._dead(entry, "expired", reason, None, now, attempts=envelope.attempt - 1)
                break
            if key in round_.delivered:
                if head:
                    round_.duplicates.append(entry)
                break
            if key in state.calling or key in round_.calling:
                if head:
                    round_.parked.append(entry)
                break
            round_.calling.add(key)
            live.append(entry)
        return tuple(live)

    # -- settling ------------------------------------------------------------------------

    def _settle_results(self) -> None:
        box = self._state.results
        if not box:
            return
        now = self._at.config.clock()
        delivered: list[OutboxEntry] = []
        try:
            for attempt in box.settle():
                self._settle(attempt, now, delivered)
        finally:
            self._record_delivered(delivered, now)

    def _settle(
        self,
        attempt: Attempt,
        now: float,
        delivered: list[OutboxEntry],
        *,
        reason: str | None = None,
    ) -> None:
        """Apply the verdict on `attempt`. A CRASH attempt raises its error unless
        `reason` says the crash is being settled (by `on_restart`)."""
        at = self._at
        state = self._state
        call = attempt.call  # (the outbox entry this sender submitted)
        message_id = call.envelope.message_id
        entry = state.in_flight.get(message_id)
        if entry is None or entry is not call:
            return  # not this partition's call any more (settled already)
        envelope = entry.envelope
        kind = attempt.kind
        if kind == OK:  # the common case, decided without the verdict's arguments
            self._call_ended(envelope.idempotency_key, now)
            delivered.append(entry)
            self._ended(entry, now)
            return
        if kind == SKIPPED:  # not called: it waits in its key's line
            del state.in_flight[message_id]
            self._call_ended(envelope.idempotency_key, now)
            if state.queue.is_head(entry):
                self._head(entry, now)
            return
        if kind == CRASH and reason is None:
            assert attempt.error is not None
            raise attempt.error  # on_restart settles it as the sender's crash
        self._call_ended(envelope.idempotency_key, now)
        crashes = state.crashes.get(message_id, 0)
        error = attempt.error
        if kind in (CRASH, LOST):
            crashes = state.crashes[message_id] = crashes + 1
            if reason is None:
                reason = f"the call was lost ({describe(error or Exception())})"
        elif error is not None:
            reason = describe(error)
        ttl = at.config.message_ttl
        policy = at.config.retry_for(envelope.transport, envelope.type)
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        if retry_after:  # the downstream asks every caller to wait, not this message only
            at.engines.limiter.slow(envelope, min(retry_after, policy.max_retry_after))
        verdict = decide(
            kind,
            failure=attempt.failure,
            reason=reason or "",
            made=envelope.attempt,
            policy=policy,
            crashes=crashes,
            wait=attempt.wait,
            retry_after=retry_after,
            rng=at.rng,
            previous_delay=state.last_delay.get(message_id),
            ttl_left=None if ttl is None else ttl - (now - envelope.created_at),
        )
        if isinstance(verdict, Delivered):
            delivered.append(entry)
            self._ended(entry, now)
        elif isinstance(verdict, Hold):
            state.in_flight.pop(message_id, None)
            if kind == THROTTLED and self._defer([(entry, now + verdict.wait)], now):
                return
            state.queue.hold(entry)
            self._schedule(entry, now + verdict.wait)
        elif isinstance(verdict, Retry):
            self._retry(entry, verdict.delay, error, now)
        elif isinstance(verdict, Dead):
            self._dead(entry, verdict.reason_class, verdict.reason, error, now)

    def _call_ended(self, idempotency_key: str, now: float) -> None:
        """The call of `idempotency_key` ended: heads parked behind it may go."""
        state = self._state
        state.calling.discard(idempotency_key)
        if not state.parked:
            return
        for entry in state.parked.pop(idempotency_key, ()):
            if state.queue.is_head(entry):
                self._head(entry, now)

    def _ended(self, entry: OutboxEntry, now: float) -> None:
        """`entry` ended: forget it and make its key's next message the head."""
        state = self._state
        message_id = entry.envelope.message_id
        state.window.bytes -= len(entry.envelope.payload)
        state.in_flight.pop(message_id, None)
        state.crashes.pop(message_id, None)
        state.first_attempt.pop(message_id, None)
        state.last_delay.pop(message_id, None)
        following = state.queue.finish(entry)
        if following is not None and following.envelope.message_id not in state.in_flight:
            self._head(following, now)  # (one in flight is on its run already)

    def _defer(self, waits: list[tuple[OutboxEntry, float]], now: float) -> set[str]:
        """Move messages whose rate's turn is far off (each with its turn's time) out of
        memory, to wait on disk with the scheduled ones until then (`Scheduled.defer`),
        so that a group's backlog never fills the window that other groups' messages
        need: one write for all of them. Only unkeyed messages in the outbox may go (a
        key's order would not survive the move). Returns the ids of those that went."""
        at = self._at
        if not at.durable:
            return set()
        going = [
            (entry, due)
            for entry, due in waits
            if entry.seq and entry.envelope.key is None and due - now >= DEFER_AFTER
        ]
        if not going:
            return set()
        window = self._state.window
        for entry, _ in going:
            self._ended(entry, now)  # out of memory; its receipt waits for the move
            # it comes back from the timer as a new entry, which the window must take in
            # (a scan never reads it again where it was, behind the cursor; a failed move
            # moves the cursor back for it)
            window.known.discard(entry.envelope.message_id)
        store = at.store
        ref = self.ref

        def op(txn: Txn) -> list[str]:
            return [e.envelope.message_id for e in store.scheduled.defer(txn, going)]

        def done(written: Future[list[str]]) -> None:
            if written.exception() is None:
                at.tracker.hold(WAITING)  # (`flush()` waits for them on disk too)
                at.tracker.spill(written.result())
                with contextlib.suppress(pykka.ActorDeadError):  # closing: they fire at open
                    at.peers.timer.tell(Check(min(due for _, due in going)))
                return
            logger.error(
                "could not defer %d message(s) to their rate's turn (%s); they are sent "
                "from the outbox",
                len(going),
                written.exception(),
            )
            if ref is not None:  # still in the outbox, behind the window's cursor
                ref.tell(Wake(min(entry.seq for entry, _ in going) - 1))

        store.write(op).add_done_callback(done)
        return {entry.envelope.message_id for entry, _ in going}

    def _retry(
        self, entry: OutboxEntry, delay: float, error: BaseException | None, now: float
    ) -> None:
        at = self._at
        state = self._state
        envelope = entry.envelope
        message_id = envelope.message_id
        made = envelope.attempt
        state.last_delay[message_id] = delay
        due = now + delay
        why = None if error is None else describe(error)[:LAST_ERROR_CHARS]
        following = replace(
            entry,
            envelope=replace(envelope, attempt=made + 1),
            due_at=due,
            last_error=why,
            failed_at=now,
        )
        state.in_flight.pop(message_id, None)
        state.queue.hold(following)
        if at.durable and entry.seq:  # (a relayed row's copy is its row: nothing here)
            at.store.reschedule(
                message_id, attempt=made + 1, due_at=due, last_error=why, failed_at=now
            ).add_done_callback(_log_failure("could not persist the retry of", message_id))
        at.counters.add("retried", envelope.transport)
        if at.telemetry.tracing:
            span = message_span(
                at.telemetry.tracer,
                SPAN_RETRY,
                message_id,
                envelope.transport,
                envelope.key,
                made + 1,
                parent=envelope.headers,
                more={"surelay.retry.delay": delay},
            )
            if error is not None:
                record_error(span, error)
            span.end()
        if delay <= 0:
            state.queue.ready(following)
        else:
            self._schedule(following, due)

    def _dead(
        self,
        entry: OutboxEntry,
        reason_class: ReasonClass,
        reason: str,
        error: BaseException | None,
        now: float,
        *,
        attempts: int | None = None,
    ) -> None:
        at = self._at
        envelope = entry.envelope
        first = self._state.first_attempt.get(envelope.message_id, envelope.created_at)
        capture = Capture(
            entry=entry,
            reason_class=reason_class,
            reason=reason,
            error_type=None if error is None else type(error).__name__,
            attempts=envelope.attempt if attempts is None else attempts,
            first_attempt_at=first,
            failed_at=now,
        )
        at.peers.dead_letters.tell(capture)
        self._ended(entry, now)

    @staticmethod
    def _on_disk(entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """Those of `entries` in the outbox: those with a sequence number (not a
        BEST_EFFORT send's, nor a row relayed from a SQL outbox)."""
        return [e for e in entries if e.seq]

    def _record_delivered(self, delivered: list[OutboxEntry], now: float) -> None:
        if not delivered:
            return
        at = self._at
        state = self._state
        # what the write and its callback keep holds no payload: a store slow to commit
        # must not keep delivered messages in memory, outside the window
        keys = [e.envelope.idempotency_key for e in delivered]
        ids = [e.envelope.message_id for e in delivered]
        relayed = [e.envelope.message_id for e in delivered if not e.seq]
        transports = [e.envelope.transport for e in delivered]
        endings = _endings(delivered)
        state.delivering.update(keys)
        expires = now + at.config.dedup_ttl
        dedup = at.store.dedup
        outbox = at.store.outbox
        ended = at.store.ended
        places = outbox.places(self._on_disk(delivered))

        def op(txn: Txn) -> None:
            dedup.put_many(txn, keys, delivered_at=now, expires_at=expires)
            ended.put_many(txn, endings, state="delivered", at=now, expires_at=expires)
            if places:
                outbox.remove_at(txn, places)

        def done(future: Future[None]) -> None:
            state.delivering.difference_update(keys)
            if future.exception() is not None:
                logger.error(
                    "could not record %d deliveries (%s); they stay in the outbox and will be "
                    "sent again on the next open",
                    len(ids),
                    future.exception(),
                )
                if relayed:  # not in the outbox: their rows are relayed again instead
                    at.tracker.forget(relayed)
                return
            at.counters.add_each("delivered", transports)  # counted before anyone is told
            at.tracker.complete(ids, Outcome.DELIVERED)

        at.store.write(op).add_done_callback(done)

    def _record_duplicates(self, duplicates: list[OutboxEntry], now: float) -> None:
        at = self._at
        ids = [e.envelope.message_id for e in duplicates]
        transports = [e.envelope.transport for e in duplicates]
        for entry in duplicates:
            self._ended(entry, now)
        if at.telemetry.tracing:
            _duplicate_spans(at, duplicates)
        outbox = at.store.outbox

        def ended() -> None:
            at.counters.add_each("duplicates", transports)
            at.tracker.complete(ids, Outcome.DUPLICATE)

        on_disk = self._on_disk(duplicates)
        places = outbox.places(on_disk)
        if not places:  # nothing of them on disk (BEST_EFFORT): nothing to write
            ended()
            return
        endings = _endings(on_disk, called=False)
        expires = now + at.config.dedup_ttl

        def op(txn: Txn) -> None:
            outbox.remove_at(txn, places)
            at.store.ended.put_many(txn, endings, state="duplicate", at=now, expires_at=expires)

        def done(future: Future[None]) -> None:
            if future.exception() is None:
                ended()

        at.store.write(op).add_done_callback(done)


def _endings(entries: list[OutboxEntry], *, called: bool = True) -> list[Ending]:
    """What `rt.status` keeps of messages that end (no payload); `called`: their last
    attempt was made (a duplicate ends without one)."""
    last = 0 if called else 1
    return [
        Ending(
            e.envelope.message_id,
            e.envelope.transport,
            e.envelope.key,
            e.envelope.idempotency_key,
            e.envelope.attempt - last,
        )
        for e in entries
    ]


def _duplicate_spans(at: SenderEndpoint, duplicates: list[OutboxEntry]) -> None:
    """A `surelay.deliver` span with outcome `duplicate` per message that ended without
    a call, so a trace shows why its transport was never called."""
    tracer = at.telemetry.tracer
    for entry in duplicates:
        envelope = entry.envelope
        message_span(
            tracer,
            SPAN_DELIVER,
            envelope.message_id,
            envelope.transport,
            envelope.key,
            envelope.attempt,
            parent=envelope.headers,
            more={ATTR_OUTCOME: "duplicate"},
        ).end()


def _log_failure(what: str, message_id: str) -> Callable[[Future[Any]], None]:
    def check(future: Future[Any]) -> None:
        if future.exception() is not None:
            logger.error("%s %s: %s", what, message_id, future.exception())

    return check
