"""The one way in of `Runtime.send`, `send_batch`, their asyncio twins and
`transaction()`: check, admit (pressure, per-key rates, the bound on messages in
flight), route to a partition, write to the outbox, answer the caller, dispatch.

Sends from many threads share outbox writes (`surelay.storage.joining`), and so do the
`asend`s of one event-loop turn (`Turn`): one group commit answers them all. A close
closes the gate first (`begin_close`): sends already called are written, later ones
are refused with `RuntimeClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pykka

from surelay.actors.governor import Sample
from surelay.actors.timer import WAITING, Check
from surelay.actors.window import deliver
from surelay.envelope import Envelope, Priority
from surelay.errors import InvalidMessage, Overloaded, RuntimeClosed, StorageError
from surelay.ingress.admission import check_pressure, refuse
from surelay.ingress.answers import (
    Settle,
    Turn,
    answer_batch,
    end_spans,
    settle_on_loop,
)
from surelay.ingress.checks import Checked, check_batch, check_one, envelopes
from surelay.pressure import hard_bound
from surelay.ratelimit import KeyRates
from surelay.receipts import OverLimit, Receipt
from surelay.routing import route
from surelay.storage.environment import Txn
from surelay.storage.joining import Joining
from surelay.storage.keys import new_id
from surelay.storage.records import OutboxEntry, outbox_entry
from surelay.telemetry import ATTR_MESSAGE_ID, SPAN_SEND, message_span

if TYPE_CHECKING:
    from surelay.ingress.endpoint import IngressEndpoint

__all__ = ["WayIn"]

logger = logging.getLogger("surelay.runtime")


@dataclass(slots=True)
class Pending:
    """Messages between `_start` and `_finish`: their receipts, and either their outbox
    entries already made (a host transaction, BEST_EFFORT) or `durable`, answered once
    the write that makes them has ended and they are finished (or aborted): their
    receipts, or the write's error."""

    envelopes: list[Envelope]
    txn: Txn | None
    spans: list[Any] | None
    dues: list[float | None] | None = None
    """Each message's due time (None: due at once), or None if none is delayed."""
    receipts: list[Receipt] = field(default_factory=list)
    entries: list[OutboxEntry] = field(default_factory=list)
    routed: list[tuple[Envelope, int]] = field(default_factory=list)
    durable: Future[list[Receipt]] | None = None


Accepted = tuple[list[OutboxEntry], list[OutboxEntry]]
"""What a durable write accepted: every message's entry in acceptance order, and those
of them scheduled for later (`surelay.storage.scheduled`)."""


@dataclass(slots=True)
class _TxnSends:
    """What the sends of one open `transaction()` wrote: dispatched once it commits."""

    entries: list[OutboxEntry] = field(default_factory=list)
    later: list[OutboxEntry] = field(default_factory=list)


class WayIn:
    """The way in of one runtime (see the module docstring)."""

    def __init__(self, endpoint: IngressEndpoint) -> None:
        self._store = endpoint.store
        self._at = endpoint
        self._config = endpoint.config
        self._lock = threading.Condition()
        self._closing = False
        self._closed = False
        self._active = 0
        self._round_robin = itertools.count()
        self._txns: dict[int, _TxnSends] = {}
        self._txn_threads: set[int] = set()
        """Threads inside `transaction()`: a send there without `txn=` would wait for
        the write lock that very thread holds."""
        self._turns: dict[asyncio.AbstractEventLoop, Turn] = {}
        self._turn_lock = threading.Lock()
        """`asend`s of the current turn of each event loop sending (see `Turn`)."""
        self._joining: Joining[Pending, Accepted] = Joining(
            self._store.write, self._write_joined, self._written
        )
        """The durable writes of every caller, one operation per commit (see
        `surelay.storage.joining`)."""
        self.forked_from: int | None = None
        """The parent's pid once this process was forked from the one that opened it."""
        rate = self._config.pressure.rate_per_key
        self._key_rates = None if rate is None else KeyRates(*rate)

    # -- the gate ------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the runtime closes (or has closed): nothing more is accepted."""
        return self._closing

    def refuse_if_forked(self) -> None:
        """`RuntimeClosed` in a process forked from the one that opened the runtime."""
        if self.forked_from is not None:
            raise RuntimeClosed(
                f"this runtime was opened in process {self.forked_from} before a fork, and "
                "its storage and threads do not survive one; open the runtime after the "
                "fork, in each process (e.g. in the web framework's startup hook: a FastAPI "
                "lifespan, gunicorn's post_fork, or at import time only without --preload)"
            )

    @contextlib.contextmanager
    def open_gate(self, refused: str) -> Iterator[None]:
        """Run the block while no close can begin; `RuntimeClosed` (saying `refused`)
        once one has."""
        self.refuse_if_forked()
        with self._lock:
            if self._closing:
                raise RuntimeClosed(f"the runtime is closed (or closing); {refused}")
            yield

    def begin_close(self, deadline: float) -> bool:
        """Close the gate: sends already called are written (their callers answered as
        their writes end), later ones refused; wait until `deadline` for the sends under
        way. False if another caller closes it already."""
        with self._lock:
            if self._closing:
                return False
            self.write_turns()
            self._closing = True
            # sends under way end first (their writes are durable either way)
            self._lock.wait_for(lambda: not self._active, max(0.0, deadline - time.monotonic()))
        return True

    def wait_closed(self, timeout: float) -> None:
        """Until the close another caller began has ended (bounded)."""
        with self._lock:
            self._lock.wait_for(lambda: self._closed, timeout)

    def end_close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _check(  # noqa: PLR0917  # send()'s arguments
        self,
        transport: object,
        payload: object,
        key: object,
        idempotency_key: object,
        priority: object,
        headers: object,
        delay: object,
        not_before: object,
        type_: object,
    ) -> Checked:
        return check_one(
            self._at.transports,
            self._config,
            transport,
            payload,
            key,
            idempotency_key,
            priority,
            headers,
            delay,
            not_before,
            type_,
        )

    # -- sending -------------------------------------------------------------------------

    def send(
        self,
        transport: str,
        payload: bytes,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = Priority.NORMAL,
        headers: Mapping[str, str] | None = None,
        txn: Txn | None = None,
        delay: float | None = None,
        not_before: float | datetime | None = None,
        type: str | None = None,  # (shadows the builtin: the contract names it)
    ) -> Receipt:
        """`Runtime.send`: one message, its receipt once durable (the sends of many
        threads share writes: `surelay.storage.joining`); with `txn`, in that transaction."""
        checked = self._check(
            transport, payload, key, idempotency_key, priority, headers, delay, not_before, type
        )
        return self._accept([checked], txn)[0]

    def send_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """`Runtime.send_batch`: all or none, one durable write."""
        checked, txn = check_batch(self._at.transports, self._config, messages)
        return self._accept(checked, txn) if checked else []

    async def asend(
        self,
        transport: str,
        payload: bytes,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = Priority.NORMAL,
        headers: Mapping[str, str] | None = None,
        txn: Txn | None = None,
        delay: float | None = None,
        not_before: float | datetime | None = None,
        type: str | None = None,  # (shadows the builtin: the contract names it)
    ) -> Receipt:
        """`Runtime.asend`: the sends of one loop turn share one write (`Turn`)."""
        checked = self._check(
            transport, payload, key, idempotency_key, priority, headers, delay, not_before, type
        )
        if txn is not None:
            return (await self._aaccept([checked], txn))[0]
        self.refuse_inside_transaction()
        delay = self._admission([checked])
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        span = self._send_span(transport, key)
        answer: asyncio.Future[Receipt] = loop.create_future()
        with self._turn_lock:  # close() may take the turn from another thread
            turn = self._turns.get(loop)
            if turn is None:
                turn = self._turns[loop] = Turn()
                loop.call_soon(self.write_turn, loop)
            turn.add(checked, span, answer)
        # cancelled here, the caller stops waiting; the message is accepted all the same
        return await answer

    def write_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write one turn's `asend`s (see `Turn`). A turn taken here just before a
        `close()` began is refused by it (`RuntimeClosed`: nothing accepted)."""
        with self._turn_lock:
            turn = self._turns.pop(loop, None)
        if turn is not None:
            self._write_turn_now(loop, turn)

    def write_turns(self) -> None:
        """Write every loop's pending turn now (close() does, before it refuses sends:
        an `asend` already called is a send under way)."""
        with self._turn_lock:
            turns = list(self._turns.items())
            self._turns.clear()
        for loop, turn in turns:
            self._write_turn_now(loop, turn)

    def _write_turn_now(self, loop: asyncio.AbstractEventLoop, turn: Turn) -> None:
        """Write one event loop's turn; its callers are answered on their loop."""

        def settle(
            answers: list[Any], receipts: list[Receipt], error: BaseException | None
        ) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle_on_loop, loop, answers, receipts, error)

        self._write_turn_runs(turn, settle)

    def _write_turn_runs(self, turn: Turn, settle: Settle) -> None:
        """Each run of consecutive calls of one priority is written as one group, in
        call order (each priority has its own bound on messages in flight)."""
        count = len(turn.checked)
        start = 0
        while start < count:
            priority = turn.checked[start][4]
            end = start + 1
            while end < count and turn.checked[end][4] is priority:
                end += 1
            if start == 0 and end == count:  # one priority: the usual case
                run = (turn.checked, turn.spans, turn.answers)
            else:
                spans = None if turn.spans is None else turn.spans[start:end]
                run = (turn.checked[start:end], spans, turn.answers[start:end])
            self._write_run(settle, priority, *run)
            start = end

    def _write_run(
        self,
        settle: Settle,
        priority: Priority,
        checked: list[Checked],
        spans: list[Any] | None,
        answers: list[Any],
    ) -> None:
        """Write what fits under the priority's bound on messages in flight; refuse the
        rest (`Overloaded`), as separate sends would have been."""
        bound = hard_bound(priority, self._config.pressure)
        room = bound - self._at.tracker.pending
        if len(checked) <= room:
            self._write_group(settle, checked, spans, answers)
            return
        fits = max(0, room)
        try:
            refuse(
                self._at.gate,
                [transport for transport, *_ in checked[fits:]],
                (priority,),
                reason="capacity",
                after=self._at.gate.pressure.retry_after,
                why=f"{self._at.tracker.pending} messages are in flight, at the bound of {bound}",
            )
        except Overloaded as refused:
            end_spans(None if spans is None else spans[fits:], refused)
            settle(answers[fits:], [], refused)
        if fits:
            self._write_group(
                settle, checked[:fits], None if spans is None else spans[:fits], answers[:fits]
            )

    def _write_group(
        self,
        settle: Settle,
        checked: list[Checked],
        spans: list[Any] | None,
        answers: list[Any],
    ) -> None:
        try:
            pending = self._start(checked, None, spans=spans)
        except Exception as error:
            settle(answers, [], error)
            return
        durable = pending.durable
        if durable is None:  # BEST_EFFORT: nothing to wait for
            try:
                settle(answers, self._finish(pending, pending.entries), None)
            except Exception as error:
                settle(answers, [], error)
            return

        def ended(done: Future[list[Receipt]]) -> None:  # (where the write ended: see Joining)
            error = done.exception()
            settle(answers, [] if error is not None else done.result(), error)

        durable.add_done_callback(ended)

    async def asend_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """`send_batch` for a coroutine (see `asend`)."""
        checked, txn = check_batch(self._at.transports, self._config, messages)
        return await self._aaccept(checked, txn) if checked else []

    def refuse_inside_transaction(self, what: str = "send without txn=") -> None:
        """A send without `txn=` (or a flush) by a thread inside `transaction()` would
        wait for ever for the write lock its own transaction holds (and hold every writer
        meanwhile)."""
        if threading.get_ident() in self._txn_threads:
            hint = (
                "pass txn=txn to put the message in that transaction, or send after the block"
                if what.startswith("send")
                else "call it after the block"
            )
            raise RuntimeError(
                f"{what} inside rt.transaction() on the same thread would wait for ever "
                f"for the write lock that transaction holds: {hint}"
            )

    def _accept(self, checked: list[Checked], txn: Txn | None) -> list[Receipt]:
        if txn is None:
            self.refuse_inside_transaction()
        delay = self._admission(checked)
        if delay > 0:
            time.sleep(delay)  # the throttle: bounded, LOW only, while elevated
        pending = self._start(checked, txn)
        if pending.durable is None:
            return self._finish(pending, pending.entries)
        # (interrupted while it waits, the send is under way all the same)
        return pending.durable.result()

    async def _aaccept(self, checked: list[Checked], txn: Txn | None) -> list[Receipt]:
        """`_accept` without blocking the event loop. Once the write is submitted, what
        follows it (dispatch, or forgetting a failed write) is done by the writer thread
        as the write ends, whatever becomes of the caller's coroutine or its loop; the
        coroutine only awaits the outcome, bridged into its loop (no thread per call)."""
        if txn is None:
            self.refuse_inside_transaction()
        delay = self._admission(checked)
        if delay > 0:
            await asyncio.sleep(delay)
        pending = self._start(checked, txn)
        durable = pending.durable
        if durable is None:
            return self._finish(pending, pending.entries)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Receipt]] = loop.create_future()

        def ended(done: Future[list[Receipt]]) -> None:  # (where the write ended: see Joining)
            error = done.exception()
            receipts = [] if error is not None else done.result()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(answer_batch, answer, receipts, error)

        durable.add_done_callback(ended)
        # cancelled here, the caller stops waiting; the message is accepted all the same
        return await answer

    def _admission(self, checked: list[Checked]) -> float:
        """Refuse a closed runtime or an overloaded one; the throttle delay to wait."""
        self.refuse_if_forked()
        if self._closing:
            raise RuntimeClosed("the runtime is closed (or closing); nothing was accepted")
        return check_pressure(self._at.gate, self._key_rates, checked)

    def _start(
        self,
        checked: list[Checked],
        txn: Txn | None,
        *,
        spans: list[Any] | None = None,
    ) -> Pending:
        """Make the envelopes and receipts and start the outbox write (see `Pending`).
        The send spans are started here unless given (started by `asend` in its caller's
        context; None for a message sent while tracing was off)."""
        at = self._at
        try:
            with self._lock:
                if self._closing:
                    raise RuntimeClosed("the runtime is closed (or closing); nothing was accepted")
                self._active += 1
        except BaseException as error:
            end_spans(spans, error)
            raise
        try:
            now = self._config.clock()  # one reading, ids in acceptance order
            ids = new_id.many(len(checked), now)
            if spans is not None:
                for span, message_id in zip(spans, ids, strict=True):
                    if span is not None:
                        span.set_attribute(ATTR_MESSAGE_ID, message_id)
            elif at.telemetry.tracing:
                spans = self._start_send_spans(ids, checked)
            dues = [c[6] for c in checked]
            pending = Pending(
                envelopes(checked, ids, now, spans),
                txn,
                spans,
                dues if any(due is not None for due in dues) else None,
            )
        except BaseException as error:
            end_spans(spans, error)
            self._leave()
            raise
        try:
            self._admit(pending)
        except BaseException as error:
            self._abort(pending, error)
            raise
        return pending

    def _finish(
        self,
        pending: Pending,
        entries: list[OutboxEntry],
        dispatch: list[OutboxEntry] | None = None,
        later: frozenset[str] = frozenset(),
    ) -> list[Receipt]:
        """The write is durable: count, dispatch (all but the `later` ones, scheduled:
        the timer's), end the send spans. A runtime closed meanwhile keeps the messages
        in its outbox for the next open."""
        try:
            self._at.counters.add_each("accepted", [e.transport for e in pending.envelopes])
            if later:
                entries = [e for e in entries if e.envelope.message_id not in later]
            if pending.txn is not None:
                self._txns[id(pending.txn)].entries.extend(entries)
            elif dispatch is not None:  # the caller dispatches them with others
                dispatch.extend(entries)
            else:
                try:
                    deliver(self._at.peers.senders, entries)
                except pykka.ActorDeadError:
                    logger.info(
                        "%d message(s) accepted while closing: sent at the next open", len(entries)
                    )
            return pending.receipts
        finally:
            if pending.spans is not None:
                for span in pending.spans:
                    if span is not None:
                        span.end()
            self._leave()

    def _abort(self, pending: Pending, error: BaseException) -> None:
        """The write failed: nothing was accepted."""
        self._at.tracker.forget(e.message_id for e in pending.envelopes)
        end_spans(pending.spans, error)
        self._leave()

    def _write_joined(self, txn: Txn, group: list[Pending]) -> Accepted:
        """The durable write of the sends of a group (`Joining`), in one transaction."""
        routed = [pair for pending in group for pair in pending.routed]
        dues: list[float | None] | None = None
        if any(pending.dues is not None for pending in group):
            dues = []
            for pending in group:
                dues.extend(pending.dues or [None] * len(pending.routed))
        return self._accept_into(txn, routed, dues)

    def _accept_into(
        self, txn: Txn, routed: list[tuple[Envelope, int]], dues: list[float | None] | None
    ) -> Accepted:
        """Write messages to the outbox, or as scheduled (`surelay.storage.scheduled`);
        their entries in acceptance order, and those scheduled."""
        now = self._config.clock()
        entries, later = self._store.accept(txn, routed, dues, now=now)
        if not later:
            return entries, later
        by_id = {e.envelope.message_id: e for e in (*entries, *later)}
        return [by_id[envelope.message_id] for envelope, _ in routed], later

    def _written(
        self, group: list[Pending], accepted: Accepted | None, error: BaseException | None
    ) -> None:
        """The write of a group ended (see `Joining` for on which thread): finish each
        of its writes (or abort it: nothing accepted), dispatch all their entries at
        once, then answer their callers. A group of several writes that failed is
        written again one write at a time (behind the group that opened meanwhile: they
        are accepted in that order), so one that cannot be written (a send, a batch or
        a turn's run too large for the space left) fails alone, as it would have without
        the others; the sends of one write (a batch, a turn's run) fail together."""
        if accepted is None and len(group) > 1 and isinstance(error, Exception):
            for pending in group:
                self._write_alone(pending)
            return
        entries, scheduled = (None, []) if accepted is None else accepted
        later = frozenset(e.envelope.message_id for e in scheduled)
        with self._lock:
            self._active += 1  # a close waits for the dispatch below too
        outcomes: list[BaseException | None] = []
        try:
            dispatch: list[OutboxEntry] = []
            start = 0
            for pending in group:
                outcome = error
                try:
                    if entries is None:
                        self._abort(pending, error or StorageError("the outbox write failed"))
                    else:
                        end = start + len(pending.envelopes)
                        mine, start = entries[start:end], end
                        self._finish(pending, mine, dispatch, later)
                except Exception as failed:  # (perhaps the writer thread): say it, go on
                    logger.exception("finishing an accepted message failed")
                    outcome = failed
                outcomes.append(outcome)
            if dispatch:
                deliver(self._at.peers.senders, dispatch)
            if scheduled:
                self._scheduled(scheduled)
        except pykka.ActorDeadError:
            logger.info("messages accepted while closing: sent at the next open")
        finally:
            self._leave()
            cut = StorageError("interrupted while its write ended; see the log")
            for pending in group[len(outcomes) + 1 :]:  # (not reached: nothing accepted)
                self._abort(pending, cut)
            for index, pending in enumerate(group):
                assert pending.durable is not None
                outcome = outcomes[index] if index < len(outcomes) else cut
                if outcome is None:
                    pending.durable.set_result(pending.receipts)
                else:
                    pending.durable.set_exception(outcome)

    def _write_alone(self, pending: Pending) -> None:
        """Write one send of a failed group by itself (see `_written`)."""
        try:
            done = self._store.write(lambda txn: self._write_joined(txn, [pending]))
        except Exception as refused:
            self._written([pending], None, refused)
            return

        def ended(written: Future[Accepted]) -> None:
            if written.cancelled():
                self._written([pending], None, StorageError("the outbox write was cancelled"))
            elif (failed := written.exception()) is not None:
                self._written([pending], None, failed)
            else:
                self._written([pending], written.result(), None)

        done.add_done_callback(ended)

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            if not self._active:
                self._lock.notify_all()

    def _admit(self, pending: Pending) -> None:
        """Track the messages (bounded by pressure) and start their outbox write."""
        at = self._at
        envelopes, txn = pending.envelopes, pending.txn
        routed = route(envelopes, _key_of, self._config.partitions, self._round_robin)
        ids = [e.message_id for e in envelopes]
        policy = self._config.pressure
        priorities = {e.priority for e in envelopes}
        limit = min(hard_bound(p, policy) for p in priorities)
        try:
            pending.receipts = at.tracker.add(ids, limit=limit)
        except OverLimit as full:
            refuse(
                self._at.gate,
                [e.transport for e in envelopes],
                priorities,
                reason="capacity",
                after=at.gate.pressure.retry_after,
                why=f"{full.pending} messages are in flight, at the bound of {limit}",
            )
        tracked = at.tracker.pending
        if (
            tracked >= policy.elevated_at * policy.capacity
            or (
                at.gate.pressure.level != "normal" and tracked < policy.recover_at * policy.capacity
            )
        ) and not at.gate.pressure.sample_asked:
            at.gate.pressure.sample_asked = True  # a threshold crossed between two samples
            if at.peers.attached:
                at.peers.governor.tell(Sample())
        if txn is not None:
            sends = self._txns.get(id(txn))
            if sends is None:
                raise InvalidMessage("txn must be the transaction of rt.transaction(), still open")
            now = self._config.clock()
            pending.entries, later = self._store.accept(txn, routed, pending.dues, now=now)
            sends.later.extend(later)
        elif at.durable:
            pending.routed = routed
            pending.durable = Future()
            self._joining.join(pending)
        else:  # in memory only: a delayed one is held by its sender until due
            now = self._config.clock()
            dues = pending.dues or [None] * len(routed)
            pending.entries = [
                outbox_entry(0, e, now if due is None else due, p)
                for (e, p), due in zip(routed, dues, strict=True)
            ]

    def _send_span(self, transport: str, key: str | None) -> Any:
        """A send's span, started in its caller's context (a child of the caller's
        current span; its message id is set once given), or None without tracing."""
        telemetry = self._at.telemetry
        if not telemetry.tracing:
            return None
        return message_span(telemetry.tracer, SPAN_SEND, None, transport, key)  # id: later

    def _start_send_spans(self, ids: list[str], checked: list[Checked]) -> list[Any]:
        tracer = self._at.telemetry.tracer
        return [
            message_span(tracer, SPAN_SEND, message_id, transport, key)
            for message_id, (transport, _, key, *_) in zip(ids, checked, strict=True)
        ]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        """`Runtime.transaction`: sends with its `txn` are dispatched once it commits,
        forgotten if it aborts."""
        self.refuse_if_forked()
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is closed (or closing)")
        sends = _TxnSends()
        try:
            with self._store.transaction() as txn:
                self._txns[id(txn)] = sends
                thread = threading.get_ident()
                self._txn_threads.add(thread)
                try:
                    yield txn
                finally:
                    self._txn_threads.discard(thread)
                    del self._txns[id(txn)]
        except BaseException:
            self._at.tracker.forget(e.envelope.message_id for e in (*sends.entries, *sends.later))
            raise
        if sends.entries:
            deliver(self._at.peers.senders, sends.entries)
        if sends.later:
            self._scheduled(sends.later)

    def _scheduled(self, later: list[OutboxEntry]) -> None:
        """Messages were scheduled (durably): they wait on disk, so memory (and pressure)
        no longer count them (`flush()` waits for them all the same: the timer's hold),
        and the timer learns of the earliest."""
        tracker = self._at.tracker
        tracker.hold(WAITING)
        tracker.spill(e.envelope.message_id for e in later)
        self._at.peers.timer.tell(Check(min(e.due_at for e in later)))


def _key_of(envelope: Envelope) -> str | None:
    return envelope.key
