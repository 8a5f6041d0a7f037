"""The ReplayWorker: replays the dead letters of one partition, one at a time, in the
order the coordinator hands them out (one key's records in failure order).

For each record, in this order:

1. lease it and check dedup, in one transaction (`Store.lease_for_replay`): a record
   whose idempotency key was delivered meanwhile becomes `replayed` without a send;
   `replayed` and `archived` records, and ones another live replay holds, are not sent;
   a lease recovery sends a record only while it is still `replaying`;
2. make one attempt through the same delivery path as the senders (breaker, the
   transport under its ack timeout, classification, `surelay.deliver` span), under a
   `surelay.replay` span linked to the message's original trace;
3. record the result: delivered → `replayed` with its dedup record, in one transaction;
   failed → back to `dead` with `replay_count + 1` and the new reason; breaker open →
   back to `dead` unchanged (no attempt was made).

A replay is one attempt, not a new retry cycle: an operator replaying a canary wants
its verdict now, and a record that fails again is back in the dead-letter list at once.

A crash (the transport raised a BaseException that is not an Exception) restarts the
worker; the next incarnation takes the record again under its own lease (dedup still
guards it) before anything else, so its key's order holds. A record that crashes the
worker twice goes back to `dead` with reason class `crash`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from surelay.actors.delivery import Attempt, CallerOwner, classify
from surelay.actors.replay import Replay, Replayed, ReplayState
from surelay.actors.sender import CRASHES_TO_DEAD_LETTER
from surelay.envelope import Envelope
from surelay.storage.records import DeadLetter, OutboxEntry
from surelay.supervision import CrashReport
from surelay.telemetry import (
    ATTR_ATTEMPT,
    ATTR_DEAD_LETTER_ID,
    ATTR_KEY,
    ATTR_MESSAGE_ID,
    ATTR_OUTCOME,
    ATTR_TRANSPORT,
    SPAN_REPLAY,
    TRACEPARENT,
    links_from,
    record_error,
    traceparent_of,
)

if TYPE_CHECKING:
    from surelay.actors.hub import Hub

__all__ = ["LEASE_MARGIN", "ReplayWorker", "WorkerState"]

logger = logging.getLogger("surelay.actors")

LEASE_MARGIN = 30.0
"""Seconds a lease outlasts the longest ack timeout: the attempt has ended by then."""

_NOT_SENT = {
    "duplicate": "skipped_duplicate",
    "replayed": "skipped_duplicate",
    "archived": "refused",
    "held": "refused",
    "dead": "refused",
    "missing": "refused",
}


@dataclass(frozen=True, slots=True)
class _Resume:
    """To itself after a restart: handle what the crash interrupted even if no mail
    comes."""


class WorkerState:
    """What one worker knows across its incarnations."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.current: Replay | None = None
        self.redo: list[Replay] = []
        """What a crash interrupted (the record being replayed, then the message that
        was delivered while it was): handled before anything else."""
        self.crashes: dict[str, int] = {}


class ReplayWorker(CallerOwner):
    def __init__(self, hub: Hub, shared: ReplayState, state: WorkerState) -> None:
        super().__init__(hub)
        self._shared = shared
        self._state = state
        self._caller_name = f"surelay-replay-caller-{state.partition}"

    def on_restart(self, crash: CrashReport) -> None:
        state = self._state
        blamed, state.current = state.current, None
        unhandled = crash.message if isinstance(crash.message, Replay) else None
        if unhandled is blamed:
            unhandled = None  # it was the one being replayed, not one waiting behind it
        first: list[Replay] = []
        if blamed is not None:
            dl_id = blamed.dead_letter_id
            crashes = state.crashes[dl_id] = state.crashes.get(dl_id, 0) + 1
            if crashes >= CRASHES_TO_DEAD_LETTER:
                self._dead_by_crash(blamed, crash.error, crashes)
            else:
                logger.warning("replay worker crashed on %s; replaying it again", dl_id)
                first.append(replace(blamed, renew=True))
        state.redo = first + state.redo + ([unhandled] if unhandled is not None else [])
        if state.redo and self.ref is not None:
            self.ref.tell(_Resume())

    def _dead_by_crash(self, blamed: Replay, error: BaseException, crashes: int) -> None:
        dl_id = blamed.dead_letter_id
        self._state.crashes.pop(dl_id, None)
        self._hub.store.replay_failed(
            dl_id,
            reason_class="crash",
            reason=(
                f"the replay worker crashed on it ({type(error).__name__}: {error}), "
                f"{crashes} times"
            ),
            error_type=type(error).__name__,
            failed_at=self._hub.config.clock(),
        ).result()
        self._tell_result(blamed, "failed")

    def on_receive(self, message: Any) -> None:
        state = self._state
        while state.redo:
            self._handle(state.redo.pop(0))
        if isinstance(message, Replay):
            self._handle(message)

    def _handle(self, message: Replay) -> None:
        self._state.current = message
        result = self._replay(
            message.dead_letter_id, renew=message.renew, recovering=message.job is None
        )
        self._state.current = None
        self._state.crashes.pop(message.dead_letter_id, None)
        self._tell_result(message, result)

    def _tell_result(self, message: Replay, result: str) -> None:
        with self._shared.lock:
            self._shared.held.discard(message.dead_letter_id)
        coordinator = self._hub.replay_coordinator
        if coordinator is not None:
            coordinator.tell(Replayed(message.job, message.dead_letter_id, result))

    # -- one record ----------------------------------------------------------------------

    def _replay(self, dead_letter_id: str, *, renew: bool, recovering: bool) -> str:
        hub = self._hub
        now = hub.config.clock()
        with self._shared.lock:
            self._shared.held.add(dead_letter_id)
        verdict, record = hub.store.lease_for_replay(
            dead_letter_id,
            now=now,
            until=now + self._lease_seconds(),
            renew=renew,
            recovering=recovering,
        ).result()
        if verdict != "leased":
            logger.info("replay of %s: not sent (%s)", dead_letter_id, verdict)
            return _NOT_SENT[verdict]
        assert record is not None
        if record.transport not in hub.transports:
            hub.store.release_lease(dead_letter_id).result()
            logger.warning(
                "replay of %s refused: this runtime has no transport %r",
                dead_letter_id,
                record.transport,
            )
            return "refused"
        return self._attempt(record)

    def _attempt(self, record: DeadLetter) -> str:
        hub = self._hub
        span = None
        headers = dict(record.headers)
        if hub.telemetry.tracing:
            span = hub.telemetry.tracer.start_span(
                SPAN_REPLAY,
                links=links_from(record.headers),
                attributes={
                    ATTR_DEAD_LETTER_ID: record.id,
                    ATTR_MESSAGE_ID: record.message_id,
                    ATTR_TRANSPORT: record.transport,
                    ATTR_KEY: record.key if record.key is not None else "",
                    ATTR_ATTEMPT: record.attempts + 1,
                },
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
        )
        entry = OutboxEntry(0, envelope, hub.config.clock(), self._state.partition)
        assert self._caller is not None
        attempts, _ = self._caller.run([entry])
        attempt = attempts[0] if attempts else Attempt(entry, "timeout")
        try:
            result = self._settle(record, attempt)
        except BaseException as error:
            if span is not None:
                span.set_attribute(ATTR_OUTCOME, "crash")
                record_error(span, error)
                span.end()
            raise
        if span is not None:
            span.set_attribute(ATTR_OUTCOME, result)
            if result == "failed" and attempt.error is not None:
                record_error(span, attempt.error)
            span.end()
        return result

    def _settle(self, record: DeadLetter, attempt: Attempt) -> str:
        hub = self._hub
        now = hub.config.clock()
        if attempt.kind == "crash":
            assert attempt.error is not None
            raise attempt.error  # on_restart replays it again, or dead-letters it
        if attempt.kind == "ok":
            hub.store.replayed(
                record.id, delivered_at=now, expires_at=now + hub.config.dedup_ttl
            ).result()
            hub.counters.add("replayed", record.transport)
            return "replayed"
        if attempt.kind == "held":
            hub.store.release_lease(record.id).result()
            logger.warning(
                "replay of %s not sent: the breaker of %r is open", record.id, record.transport
            )
            return "failed"
        if attempt.kind == "timeout":
            seconds = hub.ack_timeout(record.transport)
            hub.breakers.record(record.transport, now, failed=True)
            error: BaseException = TimeoutError(
                f"transport {record.transport!r} did not answer within ack_timeout={seconds}s"
            )
            verdict = "transient"
        else:
            assert attempt.error is not None
            error = attempt.error
            verdict = classify(error, hub.transports[record.transport])
        text = str(error)
        described = f"{type(error).__name__}: {text}" if text else type(error).__name__
        hub.store.replay_failed(
            record.id,
            reason_class="exhausted" if verdict == "transient" else verdict,
            reason=f"replay attempt failed: {described}",
            error_type=type(error).__name__,
            attempts=record.attempts + 1,
            failed_at=now,
        ).result()
        return "failed"

    def _lease_seconds(self) -> float:
        hub = self._hub
        longest = max(hub.ack_timeout(name) for name in hub.transports)
        return longest + LEASE_MARGIN
