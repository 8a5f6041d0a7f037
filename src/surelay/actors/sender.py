"""The Sender: one per partition, delivering its messages in per-key order.

A message goes to the sender of `partition_for(key)`. The sender keeps a
`PartitionQueue` (strict FIFO per key, weighted priorities across keys), takes ready
heads in batches, adds to each the run of due messages behind it in its key's line,
drops the expired and the duplicates, has its `Caller` attempt the rest in order (a key
stops at its first message not delivered; those behind it are put back), and settles
each attempt:

- delivered: dedup record written and outbox entry removed in one transaction;
  the receipt completes once that is durable; the key's next message becomes ready;
- transient failure with attempts left: the next attempt and its due time are written
  to the outbox and the message is held in the RetryScheduler (its key waits);
- breaker open: held until the breaker lets a call through; no attempt is spent;
- permanent, invalid, exhausted, expired: a `Capture` to the DeadLetterSink.

Everything the sender knows lives in a `PartitionState` that outlives incarnations, so
a crash loses nothing: the message that crashed it is retried (attempt counted) or, on
its second crash, dead-lettered with reason `crash`; the rest of its batch is sent again.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from surelay.actors.dead_letter import Capture
from surelay.actors.delivery import Attempt, CallerOwner, classify
from surelay.actors.queues import PartitionQueue, line_of
from surelay.actors.retry import Due, Schedule, can_retry, retry_delay
from surelay.errors import TransientError
from surelay.receipts import Outcome
from surelay.storage.environment import Txn
from surelay.storage.records import OutboxEntry
from surelay.supervision import CrashReport
from surelay.telemetry import (
    ATTR_ATTEMPT,
    ATTR_KEY,
    ATTR_MESSAGE_ID,
    ATTR_TRANSPORT,
    SPAN_RETRY,
    context_from,
    record_error,
)

if TYPE_CHECKING:
    from surelay.actors.hub import Hub

__all__ = [
    "BATCH",
    "CRASHES_TO_DEAD_LETTER",
    "Deliver",
    "PartitionState",
    "Sender",
    "partition_for",
]

logger = logging.getLogger("surelay.actors")

BATCH = 256
"""Most messages one sender attempts per hand-off to its caller thread."""

CRASHES_TO_DEAD_LETTER = 2
"""A message that crashes the sender this many times is dead-lettered (`crash`)."""


def partition_for(key: str, partitions: int) -> int:
    """The partition of `key`: CRC-32 of its UTF-8, modulo `partitions`. Stable across
    processes and Python versions (unlike the salted built-in `hash`)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class Deliver:
    """New messages for this partition, in acceptance order."""

    entries: tuple[OutboxEntry, ...]


@dataclass(frozen=True, slots=True)
class _Pump:
    """To itself: more messages are ready (queued behind newer mail, for fairness)."""


class PartitionState:
    """What one partition's sender knows; owned by the runtime so a crash keeps it."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.queue = PartitionQueue()
        self.in_flight: dict[str, OutboxEntry] = {}
        """Taken from the queue, outcome not yet settled."""
        self.current: str | None = None
        """The message whose call or settling was under way (blamed for a crash)."""
        self.crashes: dict[str, int] = {}
        self.first_attempt: dict[str, float] = {}
        self.last_delay: dict[str, float] = {}
        self.delivering: set[str] = set()
        """Idempotency keys delivered whose dedup record is not yet durable."""
        self.pump_queued = False


class Sender(CallerOwner):
    def __init__(self, hub: Hub, state: PartitionState) -> None:
        super().__init__(hub)
        self._state = state
        self._caller_name = f"surelay-caller-{state.partition}"
        self._batch: set[str] = set()
        """Message ids of the batch under way that have not ended or been put back: when
        one of them becomes its key's head, the batch itself carries it on."""

    # -- life cycle ----------------------------------------------------------------------

    def on_restart(self, crash: CrashReport) -> None:
        """Settle what the crashed incarnation held: the blamed message is retried or
        dead-lettered; the rest of its batch goes back to the ready queue."""
        state = self._state
        now = self._hub.config.clock()
        blamed = state.in_flight.pop(state.current, None) if state.current else None
        state.current = None
        for entry in state.in_flight.values():
            if state.queue.is_head(entry):  # the others wait behind their key's head
                state.queue.ready(entry)
        state.in_flight.clear()
        if blamed is not None:
            message_id = blamed.envelope.message_id
            crashes = state.crashes[message_id] = state.crashes.get(message_id, 0) + 1
            error = crash.error
            reason = f"the sender crashed on it ({type(error).__name__}: {error})"
            if crashes >= CRASHES_TO_DEAD_LETTER:
                self._dead(blamed, "crash", f"{reason}, {crashes} times", error, now)
            else:
                self._retry_or_exhaust(blamed, error, reason, now, spent="crash")
        self._pump_later()

    # -- messages ------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        state = self._state
        queue = state.queue
        if isinstance(message, Deliver):
            now = self._hub.config.clock()
            for entry in message.entries:
                if queue.add(entry):
                    self._head(entry, now)
        elif isinstance(message, Due):
            queue.ready(message.entry)
        elif isinstance(message, _Pump):
            state.pump_queued = False
        if queue.ready_count < BATCH and not self.actor_inbox.empty():
            return  # more mail first: it may fill the batch (the last one sends)
        batch = queue.take(BATCH)
        if batch:
            self._deliver(batch)
        if queue.ready_count:
            self._pump_later()

    def _pump_later(self) -> None:
        if not self._state.pump_queued and self.ref is not None:
            self._state.pump_queued = True
            self.ref.tell(_Pump())

    def _head(self, entry: OutboxEntry, now: float) -> None:
        """`entry` became its key's head: ready now, or held until its due time."""
        if entry.due_at > now:
            self._state.queue.hold(entry)
            self._schedule(entry, entry.due_at)
        else:
            self._state.queue.ready(entry)

    def _schedule(self, entry: OutboxEntry, at: float) -> None:
        scheduler = self._hub.scheduler
        assert scheduler is not None
        scheduler.tell(Schedule(self._state.partition, entry, at))

    # -- a batch -------------------------------------------------------------------------

    def _runs(self, heads: list[OutboxEntry], now: float) -> list[OutboxEntry]:
        """The ready heads, then what is due behind each of them in its key's line (an
        equal share of the batch per head), so a busy key sends many messages per batch
        rather than one; the caller attempts them in order and stops a key at its first
        message not delivered."""
        room = BATCH - len(heads)
        if room <= 0 or not heads:
            return heads
        share = max(1, room // len(heads))
        queue = self._state.queue
        batch = list(heads)
        for head in heads:
            for entry in queue.behind(head, min(share, BATCH - len(batch))):
                if entry.due_at > now:
                    break
                batch.append(entry)
        return batch

    def _put_back(self, entry: OutboxEntry, now: float) -> None:
        """An entry of the batch that was not attempted waits in its key's line; if it
        is the head now, it is ready again (or held until it is due)."""
        message_id = entry.envelope.message_id
        self._state.in_flight.pop(message_id, None)
        self._batch.discard(message_id)
        if self._state.queue.is_head(entry):
            self._head(entry, now)

    def _deliver(self, heads: list[OutboxEntry]) -> None:
        hub = self._hub
        state = self._state
        now = hub.config.clock()
        batch = self._runs(heads, now)
        in_flight = state.in_flight
        for entry in batch:
            in_flight[entry.envelope.message_id] = entry
        self._batch = {entry.envelope.message_id for entry in batch}
        live = self._drop_expired(batch, now)
        live = self._drop_duplicates(live, now)
        for entry in live:
            state.first_attempt.setdefault(entry.envelope.message_id, now)
        assert self._caller is not None
        attempts, untried = self._caller.run(live)
        delivered: list[OutboxEntry] = []
        crash: Attempt | None = None
        now = hub.config.clock()
        for attempt in attempts:
            entry = attempt.entry
            message_id = entry.envelope.message_id
            state.current = message_id
            if attempt.kind == "crash":
                crash = attempt
                break
            if attempt.kind == "ok":
                delivered.append(entry)
                self._settle(entry, now)
            elif attempt.kind == "held":
                in_flight.pop(message_id, None)
                state.queue.hold(entry)
                self._schedule(entry, now + attempt.wait)
            elif attempt.kind == "skipped":
                self._put_back(entry, now)
            else:
                self._failed(attempt, now)
            state.current = None
        for entry in untried:
            self._put_back(entry, now)
        self._batch.clear()
        self._record_delivered(delivered, now)
        if crash is not None:
            assert crash.error is not None
            raise crash.error  # the blamed message is settled by the next incarnation

    def _drop_expired(self, batch: list[OutboxEntry], now: float) -> list[OutboxEntry]:
        """Expired messages are dead-lettered; one behind a live message of its key is
        put back (with the rest of its key), to expire once it is the head."""
        ttl = self._hub.config.message_ttl
        if ttl is None:
            return batch
        live = []
        stopped: set[str] = set()
        for entry in batch:
            line = line_of(entry)
            age = now - entry.envelope.created_at
            if line in stopped:
                self._put_back(entry, now)
            elif age <= ttl:
                live.append(entry)
            elif self._state.queue.is_head(entry):
                reason = f"not delivered within message_ttl={ttl}s (accepted {age:.3f}s ago)"
                self._dead(entry, "expired", reason, None, now, attempts=entry.envelope.attempt - 1)
            else:
                stopped.add(line)
                self._put_back(entry, now)
        return live

    def _drop_duplicates(self, batch: list[OutboxEntry], now: float) -> list[OutboxEntry]:
        """Messages whose idempotency key was delivered within dedup_ttl end DUPLICATE.
        An idempotency key seen twice in one batch waits for the next, when the first has
        settled; so does a duplicate behind a live message of its key (it can only end
        once it is the head), and everything behind either in its key's line."""
        hub = self._hub
        live: list[OutboxEntry] = []
        duplicates: list[OutboxEntry] = []
        in_batch: set[str] = set()
        live_lines: set[str] = set()
        stopped: set[str] = set()
        delivering = self._state.delivering
        dedup = hub.store.dedup
        with hub.store.read() as txn:
            seen = dedup.seen(txn, [e.envelope.idempotency_key for e in batch], now=now)
        for entry in batch:
            key = entry.envelope.idempotency_key
            line = line_of(entry)
            duplicate = key in delivering or key in seen
            if line in stopped:
                self._put_back(entry, now)
            elif key in in_batch or (duplicate and line in live_lines):
                stopped.add(line)
                self._put_back(entry, now)
            elif duplicate:
                duplicates.append(entry)
            else:
                in_batch.add(key)
                live_lines.add(line)
                live.append(entry)
        if duplicates:
            self._record_duplicates(duplicates, now)
        return live

    # -- settling ------------------------------------------------------------------------

    def _settle(self, entry: OutboxEntry, now: float) -> None:
        """`entry` ended: forget it and make its key's next message the head."""
        state = self._state
        message_id = entry.envelope.message_id
        state.in_flight.pop(message_id, None)
        state.crashes.pop(message_id, None)
        state.first_attempt.pop(message_id, None)
        state.last_delay.pop(message_id, None)
        following = state.queue.finish(entry)
        if following is not None and following.envelope.message_id not in self._batch:
            self._head(following, now)

    def _failed(self, attempt: Attempt, now: float) -> None:
        entry = attempt.entry
        transport = entry.envelope.transport
        if attempt.kind == "timeout":
            seconds = self._hub.ack_timeout(transport)
            self._hub.breakers.record(transport, now, failed=True)
            error: BaseException = TimeoutError(
                f"transport {transport!r} did not answer within ack_timeout={seconds}s"
            )
            verdict = "transient"
        else:
            assert attempt.error is not None
            error = attempt.error
            verdict = classify(error, self._hub.transports[transport])
        if verdict != "transient":
            self._dead(entry, verdict, _describe(error), error, now)
        else:
            self._retry_or_exhaust(entry, error, _describe(error), now)

    def _retry_or_exhaust(
        self,
        entry: OutboxEntry,
        error: BaseException,
        reason: str,
        now: float,
        *,
        spent: str = "exhausted",
    ) -> None:
        """Retry `entry` if its policy allows another attempt, else dead-letter it with
        reason class `spent` (`crash` when the last attempt crashed the sender)."""
        hub = self._hub
        state = self._state
        envelope = entry.envelope
        made = envelope.attempt
        policy = hub.config.retry_for(envelope.transport)
        if not can_retry(policy, made):
            self._dead(entry, spent, f"{made} attempt(s) failed; last: {reason}", error, now)
            return
        message_id = envelope.message_id
        delay = retry_delay(policy, made, hub.rng, state.last_delay.get(message_id))
        state.last_delay[message_id] = delay
        if isinstance(error, TransientError) and error.retry_after is not None:
            delay = max(delay, error.retry_after)  # the receiver asked for this much
        due = now + delay
        following = replace(entry, envelope=replace(envelope, attempt=made + 1), due_at=due)
        state.in_flight.pop(message_id, None)
        state.queue.hold(following)
        if hub.durable:
            hub.store.reschedule(message_id, attempt=made + 1, due_at=due).add_done_callback(
                _log_failure("could not persist the retry of", message_id)
            )
        hub.counters.add("retried", envelope.transport)
        if hub.telemetry.tracing:
            span = hub.telemetry.tracer.start_span(
                SPAN_RETRY,
                context=context_from(envelope.headers),
                attributes={
                    ATTR_MESSAGE_ID: message_id,
                    ATTR_TRANSPORT: envelope.transport,
                    ATTR_KEY: envelope.key if envelope.key is not None else "",
                    ATTR_ATTEMPT: made + 1,
                    "surelay.retry.delay": delay,
                },
            )
            record_error(span, error)
            span.end()
        if delay <= 0:
            state.queue.ready(following)
        else:
            self._schedule(following, due)

    def _dead(
        self,
        entry: OutboxEntry,
        reason_class: str,
        reason: str,
        error: BaseException | None,
        now: float,
        *,
        attempts: int | None = None,
    ) -> None:
        hub = self._hub
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
        assert hub.sink is not None
        hub.sink.tell(capture)
        self._settle(entry, now)

    def _record_delivered(self, delivered: list[OutboxEntry], now: float) -> None:
        if not delivered:
            return
        hub = self._hub
        state = self._state
        keys = [e.envelope.idempotency_key for e in delivered]
        ids = [e.envelope.message_id for e in delivered]
        entries = list(delivered)
        state.delivering.update(keys)
        expires = now + hub.config.dedup_ttl
        dedup = hub.store.dedup
        outbox = hub.store.outbox if hub.durable else None

        def op(txn: Txn) -> None:
            dedup.put_many(txn, keys, delivered_at=now, expires_at=expires)
            if outbox is not None:
                outbox.remove_entries(txn, entries)

        def done(future: Future[None]) -> None:
            state.delivering.difference_update(keys)
            if future.exception() is not None:
                logger.error(
                    "could not record %d deliveries (%s); they stay in the outbox and will be "
                    "sent again on the next open",
                    len(ids),
                    future.exception(),
                )
                return
            hub.tracker.complete(ids, Outcome.DELIVERED)
            hub.counters.add_each("delivered", [e.envelope.transport for e in delivered])

        hub.store.write(op).add_done_callback(done)

    def _record_duplicates(self, duplicates: list[OutboxEntry], now: float) -> None:
        hub = self._hub
        ids = [e.envelope.message_id for e in duplicates]
        for entry in duplicates:
            self._settle(entry, now)
        outbox = hub.store.outbox

        def ended() -> None:
            hub.tracker.complete(ids, Outcome.DUPLICATE)
            hub.counters.add_each("duplicates", [e.envelope.transport for e in duplicates])

        if not hub.durable:  # nothing in the outbox to remove
            ended()
            return

        def op(txn: Txn) -> None:
            outbox.remove_entries(txn, duplicates)

        def done(future: Future[None]) -> None:
            if future.exception() is None:
                ended()

        hub.store.write(op).add_done_callback(done)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _log_failure(what: str, message_id: str) -> Callable[[Future[Any]], None]:
    def check(future: Future[Any]) -> None:
        if future.exception() is not None:
            logger.error("%s %s: %s", what, message_id, future.exception())

    return check
