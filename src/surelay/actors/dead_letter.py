"""Dead-lettering: the record of a message that will not be delivered, and the actor
that stores it.

A sender decides *that* a message is dead (permanent error, attempts exhausted, TTL
expired, rejected as invalid, or a sender crash twice on it) and sends a `Capture`; the
`DeadLetterSink` stores the `DeadLetter` and removes the message from the outbox in one
transaction, then completes its receipt with `DEAD_LETTERED`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

from surelay.actors.hooks import RunHooks
from surelay.actors.window import deliver
from surelay.envelope import Envelope
from surelay.policy.forwarding import forwarded
from surelay.receipts import Outcome
from surelay.routing import home
from surelay.storage.keys import new_id
from surelay.storage.records import DeadLetter, OutboxEntry, ReasonClass
from surelay.supervision import Actor, CrashReport
from surelay.telemetry import (
    ATTR_DEAD_LETTER_ID,
    ATTR_OUTCOME,
    ATTR_REASON_CLASS,
    SPAN_DEAD_LETTER,
    message_span,
    trace_id_of,
)

if TYPE_CHECKING:
    from surelay.counters import Counters
    from surelay.peers import Peers
    from surelay.receipts import Tracker
    from surelay.storage.store import Store
    from surelay.telemetry import Telemetry

__all__ = ["Capture", "DeadLetterSink", "SinkEndpoint", "make_dead_letter"]

logger = logging.getLogger("surelay.actors")


@dataclass(frozen=True, slots=True)
class Capture:
    """Store `entry` as a dead letter. `attempts`: transport attempts made."""

    entry: OutboxEntry
    reason_class: ReasonClass
    reason: str
    error_type: str | None
    attempts: int
    first_attempt_at: float
    failed_at: float


def make_dead_letter(capture: Capture) -> DeadLetter:
    """The record a capture becomes (pure; the id is a new time-ordered id)."""
    envelope = capture.entry.envelope
    return DeadLetter(
        id=new_id(capture.failed_at),
        message_id=envelope.message_id,
        key=envelope.key,
        transport=envelope.transport,
        payload=envelope.payload,
        headers=envelope.headers,
        idempotency_key=envelope.idempotency_key,
        priority=envelope.priority,
        trace_id=trace_id_of(envelope.headers),
        reason_class=capture.reason_class,
        reason=capture.reason,
        error_type=capture.error_type,
        attempts=capture.attempts,
        first_attempt_at=capture.first_attempt_at,
        failed_at=capture.failed_at,
        type=envelope.type,
    )


@dataclass(frozen=True, slots=True)
class SinkEndpoint:
    """What the DeadLetterSink works with: the store it writes dead letters to, the
    tracker whose messages it ends, the counters and the tracer; and the ids whose
    capture crashed it once (made by the spec, so it outlives incarnations)."""

    store: Store
    tracker: Tracker
    counters: Counters
    telemetry: Telemetry
    crashed: set[str]
    status_ttl: float = 86_400.0
    """Seconds `rt.status` finds a dead-lettered message by its id (`dedup_ttl`)."""
    hooks: Peers | None = None
    """Where the HookRunner is, when there is an `on_dead_letter` hook to run."""
    peers: Peers | None = None
    """The tree (the senders take a forwarded copy)."""
    forwards: Mapping[str, str] = field(default_factory=dict)
    """Transports whose dead letters are also forwarded, and the transport that carries
    each copy (a live view: consumers add theirs; `surelay.policy.forwarding`)."""
    partitions: int = 1


class DeadLetterSink(Actor):
    """Stores captures. A crash on one is retried once by the next incarnation; a
    capture that crashes it twice is left in the outbox (logged) for the next open."""

    def __init__(self, endpoint: SinkEndpoint) -> None:
        super().__init__()
        self._at = endpoint
        self._crashed = endpoint.crashed

    def on_restart(self, crash: CrashReport) -> None:
        if isinstance(crash.message, Capture):
            message_id = crash.message.entry.envelope.message_id
            if message_id in self._crashed:
                logger.error("dead-lettering %s crashed twice; it stays in the outbox", message_id)
                return
            self._crashed.add(message_id)
            self._capture(crash.message)

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Capture):
            self._capture(message)

    def _capture(self, capture: Capture) -> None:
        at = self._at
        record = make_dead_letter(capture)
        envelope = capture.entry.envelope
        if at.telemetry.tracing:
            span = message_span(
                at.telemetry.tracer,
                SPAN_DEAD_LETTER,
                envelope.message_id,
                envelope.transport,
                envelope.key,
                capture.attempts,
                parent=envelope.headers,
                more={
                    ATTR_REASON_CLASS: capture.reason_class,
                    ATTR_DEAD_LETTER_ID: record.id,
                    ATTR_OUTCOME: "dead_lettered",
                },
            )
            span.end()
        forward, handed = self._forward(record)
        future = at.store.dead_lettered(
            record,
            status_until=capture.failed_at + at.status_ttl,
            hooked=at.hooks is not None,
            forward=forward,
            then=handed,
        )

        def stored(done: Future[list[OutboxEntry]]) -> None:
            error = done.exception()
            if error is not None:
                logger.error(
                    "could not store dead letter for %s (%s); it stays in the outbox",
                    envelope.message_id,
                    error,
                )
                if not capture.entry.seq:  # a relayed row: its table relays it again
                    at.tracker.forget((envelope.message_id,))
                return
            if at.tracker.complete((envelope.message_id,), Outcome.DEAD_LETTERED):
                at.counters.add("dead_lettered", envelope.transport)
            if at.hooks is not None:
                at.hooks.hooks.tell(RunHooks((record.id,)))

        future.add_done_callback(stored)

    def _forward(
        self, record: DeadLetter
    ) -> tuple[tuple[Envelope, int] | None, Callable[[Future[list[OutboxEntry]]], None] | None]:
        """The copy of `record` to forward (with its partition), and what hands it to its
        sender once it is written (in commit order), if its transport forwards."""
        at = self._at
        to = at.forwards.get(record.transport)
        if to is None or at.peers is None:
            return None, None
        copy = forwarded(record, to, new_id(record.failed_at), record.failed_at)
        at.tracker.add([copy.message_id], receipts=False)
        peers = at.peers

        def handed(written: Future[list[OutboxEntry]]) -> None:
            if written.exception() is not None:
                at.tracker.forget([copy.message_id])
                return
            with contextlib.suppress(pykka.ActorDeadError):  # closing: it waits on disk
                deliver(peers.senders, written.result())

        return (copy, home(record.key, at.partitions, 0)), handed
