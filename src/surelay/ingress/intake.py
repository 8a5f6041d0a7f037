"""`Intake`: inbound messages (`rt.consume`) into the outbox, through the inbox.

For a batch taken from a source: messages the inbox has seen (same consumer name and
source message id, within `dedup_ttl`) are duplicates, to be acknowledged and dropped;
the rest become envelopes for the consumer's handler (`transport` is the consumer's
name) and are written to the outbox together with their inbox records, in one
transaction. Only once that write is durable may the source be told (`ack`); then the
messages go to their senders like any accepted message. A write that fails leaves
nothing behind, and the source delivers the messages again.

A message whose headers `send` would refuse (a framing or hop-by-hop header such as
`Transfer-Encoding` or `Host`, a name that is not a token, a control character) is
never handed to a transport: it is dead-lettered `invalid` in that same transaction
(with its inbox record, so a redelivery is a duplicate), and acknowledged to the source
once that is durable, like any other.

Flow control: `room()` says how many messages may be taken now. None while the pressure
level would refuse or throttle a send of the consumer's priority; else at most `prefetch`
of this consumer's messages are in the runtime at once (taken and not yet ended), within
the priority's bound on messages in flight. So a slow handler makes the stream hold the
messages, not surelay's memory, and several runtimes consuming one stream share it
rather than the first one taking everything.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from surelay.actors.hooks import RunHooks
from surelay.actors.window import deliver
from surelay.envelope import Envelope, Priority, check_headers
from surelay.errors import InvalidMessage
from surelay.ingress.admission import room
from surelay.policy.forwarding import forwarded
from surelay.routing import route
from surelay.sources.inbound import Inbound
from surelay.storage.environment import Txn
from surelay.storage.keys import new_id
from surelay.storage.records import DeadLetter, OutboxEntry
from surelay.storage.space import entry_bytes
from surelay.telemetry import (
    ATTR_KEY,
    ATTR_OUTCOME,
    ATTR_SOURCE_MESSAGE_ID,
    SPAN_RECEIVE,
    TRACEPARENT,
    message_span,
    record_error,
    trace_id_of,
    traceparent_of,
)

if TYPE_CHECKING:
    from surelay.ingress.endpoint import IngressEndpoint

__all__ = ["Intake", "Taken"]

logger = logging.getLogger("surelay.runtime")

KeyFunction = Callable[[Envelope], str | None]

PREFETCH_MIN = 2048
"""A consumer may have at least this many messages in the runtime at once (else four
times its handler's concurrency)."""


@dataclass(slots=True)
class Taken:
    """One batch on its way in: `duplicates` to acknowledge at once; `fresh` to
    acknowledge once `durable` is done (then `finish`), or to give back if it fails
    (then `abort`); `copies`: copies of a message whose write is under way (in this
    batch or one before), settled once those writes are done (`held`). `dead`: the
    fresh messages refused as invalid, written as dead letters by the same
    transaction."""

    duplicates: list[Inbound]
    fresh: list[Inbound]
    copies: list[Inbound] = field(default_factory=list)
    durable: Future[list[OutboxEntry]] | None = None
    spans: list[Any] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    inbox_ids: list[str] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class Intake:
    """The way in for one consumer `name` (see the module docstring)."""

    def __init__(
        self,
        endpoint: IngressEndpoint,
        name: str,
        key: KeyFunction | None,
        priority: Priority,
        *,
        forward: str | None = None,
    ) -> None:
        self._at = endpoint
        self.name = name
        self._forward = forward
        """The transport that carries this consumer's dead letters onwards, if any."""
        self._key = key
        self.priority = priority
        self._round_robin = itertools.count()
        self._bad_key_logged = False
        self._invalid_logged = False
        self.prefetch = max(PREFETCH_MIN, 4 * endpoint.config.concurrency_for(name))
        self._outstanding: list[str] = []
        """Ids of this consumer's messages taken and perhaps not ended yet."""
        self._writing: set[str] = set()
        """Source message ids whose write is under way (not in the inbox yet)."""

    def room(self) -> int:
        """How many messages may be taken now (0: hold off)."""
        if len(self._outstanding) >= self.prefetch // 2:
            self._outstanding = self._at.tracker.still_pending(self._outstanding)
        return room(self._at.gate, self.priority, self.prefetch - len(self._outstanding))

    def take(self, batch: Sequence[Inbound]) -> Taken:
        """Sort a batch into duplicates and fresh messages, and start the durable write
        of the fresh ones (outbox entries, dead letters of the invalid ones and inbox
        records in one transaction)."""
        at = self._at
        store = at.store
        now = at.config.clock()
        taken = self._sort(batch, now)
        fresh = taken.fresh
        if not fresh:
            return taken
        ids = new_id.many(len(fresh), now)
        spans = self._start_spans(fresh, ids)
        envelopes: list[Envelope] = []
        dead = taken.dead
        for message, message_id, span in zip(fresh, ids, spans or [None] * len(fresh), strict=True):
            envelope = self._envelope(message, message_id, span, now)
            if isinstance(envelope, DeadLetter):
                dead.append(envelope)
            else:
                envelopes.append(envelope)
        if dead and self._forward is not None:  # refused ones are forwarded too
            copies = new_id.many(len(dead), now)
            envelopes.extend(
                forwarded(r, self._forward, i, now) for r, i in zip(dead, copies, strict=True)
            )
        routed = route(envelopes, _key_of, at.config.partitions, self._round_robin)
        accepted = [e.message_id for e in envelopes]
        at.tracker.add(accepted, receipts=False)
        self._outstanding.extend(accepted)
        inbox_ids = [m.message_id for m in fresh]
        self._writing.update(inbox_ids)
        taken.inbox_ids = inbox_ids
        expires_at = now + at.config.dedup_ttl
        hooked = at.config.on_dead_letter is not None

        def write(txn: Txn) -> list[OutboxEntry]:
            entries = store.outbox.enqueue_many(txn, routed, due_at=now) if routed else []
            if dead:  # new data too (no outbox entry freed for them): within the reserve
                space = store.env.space
                space.admit(
                    txn, sum(entry_bytes(64, len(r.payload) + 512, space.page_size) for r in dead)
                )
            for record in dead:
                store.dead_letters.insert(txn, record)
            store.record_dead(txn, dead, expires_at, hooked=hooked)
            store.inbox.put_many(txn, self.name, inbox_ids, at=now, expires_at=expires_at)
            return entries

        taken.ids = accepted
        taken.spans = spans or []
        try:
            taken.durable = store.write(write)
        except BaseException as error:
            self.abort(taken, error)
            raise
        return taken

    def _sort(self, batch: Sequence[Inbound], now: float) -> Taken:
        """The batch's duplicates (the inbox holds them) and fresh messages."""
        at = self._at
        store = at.store
        with store.read() as txn:
            seen = store.inbox.seen(txn, self.name, {m.message_id for m in batch}, now=now)
        duplicates: list[Inbound] = []
        fresh: list[Inbound] = []
        copies: list[Inbound] = []
        pending = set(self._writing)  # taken by a batch whose write is under way
        for message in batch:
            if message.message_id in seen:
                duplicates.append(message)  # durable already: acknowledged at once
            elif message.message_id in pending:
                copies.append(message)  # settled once the write holding it is done
            else:
                pending.add(message.message_id)  # twice in one batch: once
                fresh.append(message)
        if duplicates:
            at.counters.add("duplicates", self.name, len(duplicates))
        return Taken(duplicates, fresh, copies)

    def held(self, copies: Sequence[Inbound]) -> tuple[list[Inbound], list[Inbound]]:
        """Once the writes before are done: the copies whose message the inbox now holds
        (duplicates: to acknowledge) and those it does not (its write failed: to give
        back, so the source delivers them again)."""
        at = self._at
        store = at.store
        with store.read() as txn:
            seen = store.inbox.seen(
                txn, self.name, {m.message_id for m in copies}, now=at.config.clock()
            )
        held = [m for m in copies if m.message_id in seen]
        if held:
            at.counters.add("duplicates", self.name, len(held))
        return held, [m for m in copies if m.message_id not in seen]

    def finish(self, taken: Taken, entries: list[OutboxEntry]) -> None:
        """The write is durable: count the messages and hand them to their senders."""
        at = self._at
        self._writing.difference_update(taken.inbox_ids)
        # (with forwarding, entries hold a copy of each dead one too: not received)
        copies = len(taken.dead) if self._forward is not None else 0
        at.counters.add("received", self.name, len(entries) - copies + len(taken.dead))
        if taken.dead:
            at.counters.add("dead_lettered", self.name, len(taken.dead))
        for span in taken.spans:
            span.end()
        deliver(at.peers.senders, entries)
        if taken.dead and at.config.on_dead_letter is not None:
            at.peers.hooks.tell(RunHooks(tuple(d.id for d in taken.dead)))

    def abort(self, taken: Taken, error: BaseException) -> None:
        """The write failed: nothing was taken (the source delivers the messages again)."""
        self._writing.difference_update(taken.inbox_ids)
        self._at.tracker.forget(taken.ids)
        for span in taken.spans:
            record_error(span, error)
            span.end()

    def _start_spans(self, fresh: list[Inbound], ids: list[str]) -> list[Any] | None:
        telemetry = self._at.telemetry
        if not telemetry.tracing:
            return None
        return [
            message_span(
                telemetry.tracer,
                SPAN_RECEIVE,
                message_id,
                self.name,
                None,
                parent=message.headers,  # the producer's trace, if any
                more={
                    ATTR_SOURCE_MESSAGE_ID: message.message_id,
                    **{f"surelay.source.{k}": v for k, v in message.origin.items()},
                },
            )
            for message, message_id in zip(fresh, ids, strict=True)
        ]

    def _envelope(
        self, message: Inbound, message_id: str, span: Any, now: float
    ) -> Envelope | DeadLetter:
        """The message's envelope, or its dead letter if its headers are refused."""
        headers = {**message.headers, **message.origin}
        if span is not None:
            traceparent = traceparent_of(span)
            if traceparent is not None:  # the handler's calls continue the receive span
                headers[TRACEPARENT] = traceparent
        idempotency_key = f"{self.name}/{message.message_id}"
        try:
            check_headers(headers)
        except InvalidMessage as error:
            if span is not None:
                span.set_attribute(ATTR_OUTCOME, "dead_lettered")
                record_error(span, error)
            self._log_invalid(message, error)
            return DeadLetter(
                id=new_id(now),
                message_id=message_id,
                key=None,
                transport=self.name,
                payload=message.payload,
                headers=headers,
                idempotency_key=idempotency_key,
                priority=self.priority,
                trace_id=trace_id_of(headers),
                reason_class="invalid",
                reason=f"refused before delivery: {error}",
                error_type=type(error).__name__,
                attempts=0,
                first_attempt_at=now,
                failed_at=now,
            )
        envelope = Envelope(
            message_id,
            self.name,
            message.payload,
            None,
            idempotency_key,
            self.priority,
            MappingProxyType(headers),
            1,
            now,
        )
        if self._key is None:
            return envelope
        try:
            key = self._key(envelope)
            if key is not None and not (isinstance(key, str) and key):
                raise TypeError(f"the key function returned {key!r}, not a str or None")
        except Exception:  # the message is taken all the same, without a key
            if not self._bad_key_logged:
                self._bad_key_logged = True
                logger.exception("consumer %r: the key function failed; no key", self.name)
            return envelope
        if span is not None and key is not None:
            span.set_attribute(ATTR_KEY, key)
        return replace(envelope, key=key)

    def _log_invalid(self, message: Inbound, error: InvalidMessage) -> None:
        """Say it once per consumer at WARNING (a producer may send thousands), then at
        DEBUG; each one is a dead letter an operator can list."""
        level = logging.DEBUG if self._invalid_logged else logging.WARNING
        self._invalid_logged = True
        logger.log(
            level,
            "consumer %r: message %r dead-lettered as invalid (%s)",
            self.name,
            message.message_id,
            error,
        )


def _key_of(envelope: Envelope) -> str | None:
    return envelope.key
