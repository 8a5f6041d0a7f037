"""`Runtime`: what a host embeds. Opens the store, runs the supervision tree (see
`surelay.wiring`) and the delivery engines (`surelay.delivery`), accepts messages and
hands them to the sender of their partition.

The store's group-commit writer is a thread the store owns, not an actor: it must keep
committing while the tree stops, so that nothing accepted is lost at close.

Several runtimes (the worker processes of a web server) may open one data directory,
each in a slot of its own (`surelay.storage.slots`); other processes (the CLI) may open
its store beside them. docs/architecture.md has the whole picture.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

import pykka

from surelay.actors.governor import Sample
from surelay.actors.replay import ReplayState
from surelay.actors.sender import PartitionState
from surelay.actors.status import Snapshot
from surelay.actors.window import limits_for
from surelay.backlog import RetryBacklog
from surelay.config import RuntimeConfig
from surelay.consumers import Consumers
from surelay.delivery import Engines
from surelay.delivery.breakers import Breakers
from surelay.envelope import (
    Envelope,
    Priority,
    check_send,
    checked_envelope,
)
from surelay.errors import (
    InvalidMessage,
    Overloaded,
    RuntimeClosed,
    StorageError,
    UnknownTransport,
)
from surelay.hub import Counters, Hub, Transport
from surelay.ingress.gather import Gather
from surelay.operations.dead_letters import DeadLetters
from surelay.policy.breaker import STATE_GAUGE
from surelay.pressure import LEVELS, admission, hard_bound
from surelay.ratelimit import KeyRates
from surelay.receipts import OverLimit, Receipt, Tracker
from surelay.recovery import Recovery, deliver
from surelay.routing import partition_for
from surelay.sql.outbox import SqlOutbox
from surelay.sql.relay import Relays, RelaySettings
from surelay.storage.environment import Txn
from surelay.storage.keys import new_id
from surelay.storage.records import OutboxEntry, outbox_entry
from surelay.storage.store import Store
from surelay.supervision import Supervisor, SupervisorRef
from surelay.telemetry import (
    ATTR_KEY,
    ATTR_MESSAGE_ID,
    ATTR_TRANSPORT,
    SPAN_SEND,
    TRACEPARENT,
    Telemetry,
    record_error,
    traceparent_of,
)
from surelay.wiring import tree

__all__ = ["Runtime", "RuntimeStats"]

logger = logging.getLogger("surelay.runtime")

_SEND_ARGS = frozenset(
    {"transport", "payload", "key", "idempotency_key", "priority", "headers", "txn"}
)

_Checked = tuple[str, bytes, str | None, str | None, Priority, MappingProxyType[str, str]]
"""send()'s arguments, checked: transport, payload, key, idempotency key, priority,
headers."""


CLOSE_GRACE = 3.0
"""Seconds `close` may take beyond its timeout, at most: the last status, the tree's stop
and the store's last commit, each bounded."""

SLOW_CLOSE = 1.0
"""Seconds a close waits for messages under way before it says so (a quick one is quiet)."""

HEALTH_TIMEOUT = 1.0
"""Seconds `health()` waits for the supervision tree's answers."""

EXIT_TIMEOUT = 1.0
"""Seconds an open runtime gets to close at interpreter exit (what it has not delivered
by then stays in the outbox for the next open)."""

_OPEN: weakref.WeakSet[Runtime] = weakref.WeakSet()
"""The runtimes open in this process: closed at exit, disowned after a fork."""


def _end_spans(spans: list[Any] | None, error: BaseException) -> None:
    for span in spans or ():
        if span is not None:
            record_error(span, error)
            span.end()


def _answer(
    future: asyncio.Future[list[Receipt]], receipts: list[Receipt], error: BaseException | None
) -> None:
    if future.done():  # the caller stopped waiting
        return
    if error is None:
        future.set_result(receipts)
    else:
        future.set_exception(error)


def _answer_each(
    answers: list[asyncio.Future[Receipt]], receipts: list[Receipt], error: BaseException | None
) -> None:
    for index, answer in enumerate(answers):
        if answer.done():  # its caller stopped waiting
            continue
        if error is None:
            answer.set_result(receipts[index])
        else:
            answer.set_exception(error)


_Settle = Callable[[list[Any], list[Receipt], BaseException | None], None]
"""Answer the callers of a written group: their receipts, or the error for all."""


def _settle_each(answers: list[Any], receipts: list[Receipt], error: BaseException | None) -> None:
    """`_Settle` for threads: their futures, set on whichever thread ends the write
    (those answered already are left alone)."""
    for index, answer in enumerate(answers):
        if answer.done():
            continue
        if error is None:
            answer.set_result(receipts[index])
        else:
            answer.set_exception(error)


@dataclass(slots=True)
class _Turn:
    """The `asend`s of one event-loop turn, written to the outbox together: coroutines
    woken by one group commit send again in the same turn, so the loop pays for one
    write, one future and one wake-up per turn rather than per message. Each message's
    send span is started in its caller's call (its trace context); ids are given in
    call order when the turn is written."""

    checked: list[_Checked] = field(default_factory=list)
    spans: list[Any] | None = None
    answers: list[Any] = field(default_factory=list)
    """asyncio futures for `asend`s, `concurrent.futures.Future`s for threads' sends."""

    def add(self, checked: _Checked, span: Any, answer: Any) -> None:
        """One more send: its checked arguments, its span (None without tracing; the
        list of spans is made at the first one) and the future of its answer."""
        if span is not None and self.spans is None:
            self.spans = [None] * len(self.checked)
        if self.spans is not None:
            self.spans.append(span)
        self.checked.append(checked)
        self.answers.append(answer)


def _resolve_empty(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _close_at_exit() -> None:
    for runtime in list(_OPEN):
        try:
            runtime.close(timeout=EXIT_TIMEOUT)
        except Exception:
            logger.exception("closing the runtime of %s at exit failed", runtime.path)


def _disown_after_fork() -> None:
    """In a forked child: every runtime of the parent refuses to be used here."""
    parent = os.getppid()
    for runtime in list(_OPEN):
        runtime._forked_from = parent  # its store is left to the parent (storage.store)
    _OPEN.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_disown_after_fork)


@dataclass(slots=True)
class _Pending:
    """Messages between `_start` and `_finish`: their receipts, and either their outbox
    entries already made (a host transaction, BEST_EFFORT) or the future of the durable
    write that makes them."""

    envelopes: list[Envelope]
    txn: Txn | None
    spans: list[Any] | None
    receipts: list[Receipt] = field(default_factory=list)
    entries: list[OutboxEntry] = field(default_factory=list)
    durable: Future[list[OutboxEntry]] | None = None


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """A snapshot of the runtime: counters since `open`, gauges now."""

    accepted: int
    delivered: int
    retried: int
    dead_lettered: int
    duplicates: int
    refused: int
    replayed: int
    in_flight: int
    """Accepted (or recovered) messages that have not ended yet."""
    outbox_pending: int
    retry_pending: int
    """Messages held until a retry time (or until their breaker lets a call through)."""
    dead_letters: int
    """Dead letters with status `dead`."""
    pressure: str
    breakers: Mapping[str, str]
    calls_in_flight: Mapping[str, int]
    """Transport calls running now, per transport (at most its concurrency)."""
    received: int = 0
    """Inbound messages taken from sources (`consume`) since open."""
    relayed: int = 0
    """Rows taken from SQL outbox tables (`relay`) since open."""
    abandoned: int = 0
    """Transport calls given up at their ack timeout that are still running now (a
    plain callable's thread cannot be stopped; a coroutine that ignores its cancel);
    their results are ignored. See `health()["engines"]` for which transport."""


class Runtime:
    """An open runtime on a data directory. Open with `Runtime.open`; use as a context
    manager or call `close()`."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        root: SupervisorRef,
        states: list[PartitionState],
        *,
        replays: ReplayState,
        recovery: Recovery,
        consumers: Consumers,
    ):
        self._store = store
        self._recovery = recovery
        self._consumers = consumers
        self._relays = Relays(hub)
        self._replays = replays
        self._hub = hub
        self._root = root
        self._states = states
        self._config = hub.config
        self._transports = hub.transports
        self._lock = threading.Condition()
        self._closing = False
        self._closed = False
        self._active = 0
        self._round_robin = itertools.count()
        self._txns: dict[int, list[OutboxEntry]] = {}
        self._txn_threads: set[int] = set()
        """Threads inside `transaction()`: a send there without `txn=` would wait for
        the write lock that very thread holds."""
        self._turns: dict[asyncio.AbstractEventLoop, _Turn] = {}
        self._turn_lock = threading.Lock()
        """`asend`s of the current turn of each event loop sending (see `_Turn`)."""
        self._gather: Gather[tuple[_Checked, Any, Future[Receipt]]] = Gather(self._write_threads)
        """Threads' `send`s, one group per outbox write (see `surelay.ingress.gather`)."""
        self._dead_letters = DeadLetters(store, hub, replays)
        self._forked_from: int | None = None
        """The parent's pid once this process was forked from the one that opened it."""
        rate = self._config.pressure.rate_per_key
        self._key_rates = None if rate is None else KeyRates(*rate)

    # -- life cycle ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        transports: Mapping[str, Transport],
        config: RuntimeConfig | None = None,
    ) -> Runtime:
        """Open (creating, mode 0o700) the data directory at `path`, take a free slot
        of it, start the tree and dispatch again everything an earlier run of that slot
        left in the outbox, in order per key.

        Other processes may open the same `path` at once: each runtime takes a slot of
        its own, and adopts the outbox of any slot whose runtime died.

        Raises `ValueError`/`TypeError` for bad transports or config (a per-transport
        setting naming a transport not in `transports` included), `StorageError`
        for a directory that is not surelay's (or is already open in this process).
        """
        config = RuntimeConfig() if config is None else config
        if not isinstance(config, RuntimeConfig):
            raise TypeError(f"config must be a RuntimeConfig, got {type(config).__name__}")
        table = _check_transports(transports)  # rt.consume adds to it
        _check_per_transport(config, table)
        store = Store.open(path, map_size=config.map_size, clock=config.clock, claim=True)
        telemetry = Telemetry()  # observes the runtime's gauges once it exists
        engines: Engines | None = None
        try:
            breakers = Breakers(config.breaker, table)
            engines = Engines(table, config, breakers, telemetry)
            hub = Hub(
                store=store,
                config=config,
                transports=MappingProxyType(table),
                tracker=Tracker(),
                counters=Counters(telemetry),
                telemetry=telemetry,
                breakers=breakers,
                backlog=RetryBacklog(),
                engines=engines,
            )
            limits = limits_for(config.partitions, config.pressure.capacity)
            states = [PartitionState(i, limits) for i in range(config.partitions)]
            replays = ReplayState()
            recovery = Recovery(hub)
            snapshot: list[Snapshot] = []
            root = Supervisor.start(
                tree(hub, states, replays, snapshot, recovery),
                name="surelay",
                intensity=10,
                period=5.0,
            )
        except BaseException:
            if engines is not None:
                engines.stop(1.0)
            telemetry.close()
            store.close()
            raise
        senders = root.child("senders")
        replay = root.child("replay")
        sources = root.child("sources")
        assert isinstance(senders, SupervisorRef) and isinstance(replay, SupervisorRef)
        assert isinstance(sources, SupervisorRef)
        runtime = cls(
            store,
            hub,
            root,
            states,
            replays=replays,
            recovery=recovery,
            consumers=Consumers(hub, table, recovery, sources),
        )
        hub.governor = root.child("governor")
        hub.scheduler = root.child("retry")
        hub.sink = root.child("dead_letters")
        hub.senders = tuple(senders.child(f"sender-{i}") for i in range(config.partitions))
        hub.replay_coordinator = replay.child("coordinator")
        replays.workers = tuple(
            replay.child(f"replay-{i}") for i in range(config.replay_partitions)
        )
        telemetry.gauges = runtime._gauges
        snapshot.append(runtime._status)
        try:
            recovery.recover()
            hub.recovered = True
        except BaseException:
            runtime.close(timeout=1.0)
            raise
        _OPEN.add(runtime)
        # Exit handlers run last-registered first: registered again now, the close at
        # exit runs before those of what the host set up earlier (an OpenTelemetry SDK
        # shuts down at exit), so that its spans are still exported.
        atexit.unregister(_close_at_exit)
        atexit.register(_close_at_exit)
        return runtime

    def close(self, timeout: float = 10.0) -> None:
        """Stop admitting, let in-flight work finish for up to `timeout` seconds, stop
        the tree (reverse start order) and close the store. Idempotent.

        Returns within `timeout` plus `CLOSE_GRACE` (the tree's stop and the store's last
        commit, each bounded), and raises nothing of its own parts' (a part that does
        not stop in time is logged). No transport call starts after it returns; calls
        still running then are abandoned (logged, with their message ids). Messages not
        delivered (waiting for a retry, or in an abandoned call) stay in the outbox and
        are dispatched again by the next `open`; with BEST_EFFORT they are lost.

        A close still waiting for messages after `SLOW_CLOSE` seconds says so (a
        warning: how many, and how long it still waits); a `KeyboardInterrupt` while it
        waits (ctrl-C again) stops the wait, closes what it must, and is raised on.
        """
        if self._forked_from is not None:
            return  # nothing of it is this process's to close (the parent owns it)
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closing:  # another caller closes it: wait for that, bounded too
                self._lock.wait_for(lambda: self._closed, timeout + CLOSE_GRACE)
                return
            self._write_turns()
            self._gather.flush()  # threads' sends already called are under way too
            self._closing = True
            # sends under way end first (their writes are durable either way)
            self._lock.wait_for(lambda: not self._active, max(0.0, deadline - time.monotonic()))
        try:
            self._drain(deadline)
        except KeyboardInterrupt:  # interrupted again: stop waiting, stop the tree, go
            logger.warning(
                "close interrupted: not waiting any longer; what was not delivered stays "
                "in the outbox for the next open"
            )
            self._hub.engines.halt()
            with contextlib.suppress(Exception):
                self._root.stop(timeout=CLOSE_GRACE)
            raise
        finally:
            self._release(deadline)

    def _drain(self, deadline: float) -> None:
        """Let the work in hand end, until `deadline`; then stop the tree."""
        try:
            # take nothing new from sources (what they hold stays with them)
            self._consumers.pause(max(0.1, min(2.0, deadline - time.monotonic())))
            self._relays.pause()  # what the tables hold stays there
            slow_at = time.monotonic() + SLOW_CLOSE
            while self._busy() and time.monotonic() < deadline:
                if slow_at and time.monotonic() >= slow_at:
                    slow_at = 0.0
                    self._say_close_waits(deadline)
                self._hub.tracker.wait_change(min(0.02, max(0.0, deadline - time.monotonic())))
            # from here no call starts (a retry coming due now stays in the outbox, its
            # attempt unspent), and the calls running end and are settled first
            self._hub.engines.halt()
            while not self._settled() and time.monotonic() < deadline:
                self._hub.tracker.wait_change(min(0.02, max(0.0, deadline - time.monotonic())))
            self._log_abandoned()
            self._stop_relays(deadline)
            self._publish_final_status(max(0.2, min(0.5, deadline - time.monotonic())))
            self._root.stop(timeout=max(0.5, deadline - time.monotonic()))
        except Exception as error:  # a part that will not stop: logged, not raised
            logger.warning("the runtime did not stop cleanly: %r", error)

    def _stop_relays(self, deadline: float) -> None:
        """Once every outcome is durable and told (the writer commits in order: a write
        that ends after all the others), each row whose message ended is deleted; the
        leases are given back at once, before the last status says what is held."""
        if not self._relays.any():
            return
        try:
            self._store.write(lambda _txn: None).result(max(0.1, deadline - time.monotonic()))
        except Exception:  # a store that fails: the rows are relayed again, at least once
            logger.warning("the last outcomes of relayed rows may not be deleted", exc_info=True)
        self._relays.stop(deadline)

    def _say_close_waits(self, deadline: float) -> None:
        """A close (a ctrl-C) that takes a while says why, and how to cut it short; one
        that ends within `SLOW_CLOSE` says nothing."""
        logger.warning(
            "closing with %d message(s) not yet delivered: waiting up to %.3gs more for the "
            "calls under way (interrupt again to stop waiting); whatever is not delivered "
            "by then stays in the outbox for the next open",
            self._hub.tracker.pending,
            max(0.0, deadline - time.monotonic()),
        )

    def _release(self, deadline: float) -> None:
        """Let go of the engines, the store and the directory, whatever fails."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("relays", lambda: self._relays.stop(deadline)),  # (stopped already, unless cut short)
            ("engines", lambda: self._hub.engines.stop(max(0.2, deadline - time.monotonic()))),
            ("telemetry", self._hub.telemetry.close),
            # the store gives the slot back once its last write is durable
            ("store", lambda: self._store.close(timeout=max(1.0, deadline - time.monotonic()))),
        ]
        try:
            for name, step in steps:
                try:
                    step()
                except Exception:
                    logger.exception("closing the %s failed", name)
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            _OPEN.discard(self)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _busy(self) -> bool:
        """True while a sender has work it can do now (not counting held messages)."""
        for state, ref in zip(self._states, self._hub.senders, strict=True):
            if state.queue.ready_count or state.in_flight or state.results or ref.queued():
                return True
        sink = self._hub.sink
        return sink is not None and sink.queued() > 0

    def _refuse_if_forked(self) -> None:
        if self._forked_from is not None:
            raise RuntimeClosed(
                f"this runtime was opened in process {self._forked_from} before a fork, and "
                "its storage and threads do not survive one; open the runtime after the "
                "fork, in each process (e.g. in the web framework's startup hook: a FastAPI "
                "lifespan, gunicorn's post_fork, or at import time only without --preload)"
            )

    def _settled(self) -> bool:
        """True once no transport call runs and every result has been settled."""
        if any(self._hub.engines.in_flight().values()):
            return False
        return all(not state.results for state in self._states)

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
    ) -> Receipt:
        """Accept one message for `transport` and return its receipt.

        With AT_LEAST_ONCE it returns once the message is durable in the outbox; with
        `txn` (from `transaction()`) it is written in that transaction and dispatched
        after it commits. Raises `UnknownTransport`, `InvalidMessage`, `Overloaded`,
        `RuntimeClosed`, and `RuntimeError` without `txn` inside `transaction()` on the
        same thread; nothing is accepted when it raises, except when an interrupt
        (`KeyboardInterrupt`) reaches it while it waits for the write: the message is
        then accepted and delivered all the same. Sends from many threads at once share
        outbox writes (see `surelay.ingress.gather`).
        """
        checked = self._check(transport, payload, key, idempotency_key, priority, headers)
        if txn is not None or not self._hub.durable:
            return self._accept([checked], txn)[0]
        self._refuse_inside_transaction()
        delay = self._admission([checked])
        if delay > 0:
            time.sleep(delay)  # the throttle: bounded, LOW only, while elevated
        answer: Future[Receipt] = Future()
        self._gather.join((checked, self._send_span(transport, key), answer))
        return answer.result()

    def send_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """Accept several messages at once, all or none: each mapping holds `send`'s
        arguments by name. Every message is validated first; `InvalidMessage` (or
        `UnknownTransport`) names the index of the first bad one. At most
        `config.max_batch` messages; one durable write for all of them.
        """
        checked, txn = self._check_batch(messages)
        return self._accept(checked, txn) if checked else []

    # -- asyncio twins: the same, without blocking the event loop -------------------------

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
    ) -> Receipt:
        """`send` for a coroutine: returns once the message is durable, never blocking
        the event loop (coroutines sending at once share one fsync, as threads do). The
        same arguments and errors; the `surelay.send` span is a child of the caller's
        current span. Cancelled while waiting for the write, the message stays accepted
        and is delivered."""
        checked = self._check(transport, payload, key, idempotency_key, priority, headers)
        if txn is not None:
            return (await self._aaccept([checked], txn))[0]
        self._refuse_inside_transaction()
        delay = self._admission([checked])
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        span = self._send_span(transport, key)
        answer: asyncio.Future[Receipt] = loop.create_future()
        with self._turn_lock:  # close() may take the turn from another thread
            turn = self._turns.get(loop)
            if turn is None:
                turn = self._turns[loop] = _Turn()
                loop.call_soon(self._write_turn, loop)
            turn.add(checked, span, answer)
        # cancelled here, the caller stops waiting; the message is accepted all the same
        return await answer

    def _write_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write one turn's `asend`s (see `_Turn`). A turn taken here just before a
        `close()` began is refused by it (`RuntimeClosed`: nothing accepted)."""
        with self._turn_lock:
            turn = self._turns.pop(loop, None)
        if turn is not None:
            self._write_turn_now(loop, turn)

    def _write_turns(self) -> None:
        """Write every loop's pending turn now (close() does, before it refuses sends:
        an `asend` already called is a send under way)."""
        with self._turn_lock:
            turns = list(self._turns.items())
            self._turns.clear()
        for loop, turn in turns:
            self._write_turn_now(loop, turn)

    def _write_turn_now(self, loop: asyncio.AbstractEventLoop, turn: _Turn) -> None:
        """Write one event loop's turn; its callers are answered on their loop."""

        def settle(
            answers: list[Any], receipts: list[Receipt], error: BaseException | None
        ) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_answer_each, answers, receipts, error)

        self._write_gathered(turn, settle)

    def _write_threads(self, group: list[tuple[_Checked, Any, Future[Receipt]]]) -> list[Any]:
        """Write one group of `send`s from threads (see `surelay.ingress.gather`). An
        exception out of the writing itself (an interrupt) becomes the answer of every
        caller not answered yet, then is raised on: no caller waits for ever."""
        turn = _Turn()
        for checked, span, answer in group:
            turn.add(checked, span, answer)
        try:
            return self._write_gathered(turn, _settle_each)
        except BaseException as error:
            _settle_each(turn.answers, [], error)
            raise

    def _write_gathered(self, turn: _Turn, settle: _Settle) -> list[Future[list[OutboxEntry]]]:
        """Each run of consecutive calls of one priority is written as one group, in
        call order (each priority has its own bound on messages in flight); the futures
        of the writes started."""
        count = len(turn.checked)
        start = 0
        written: list[Future[list[OutboxEntry]]] = []
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
            durable = self._write_run(settle, priority, *run)
            if durable is not None:
                written.append(durable)
            start = end
        return written

    def _write_run(
        self,
        settle: _Settle,
        priority: Priority,
        checked: list[_Checked],
        spans: list[Any] | None,
        answers: list[Any],
    ) -> Future[list[OutboxEntry]] | None:
        """Write what fits under the priority's bound on messages in flight; refuse the
        rest (`Overloaded`), as separate sends would have been."""
        bound = hard_bound(priority, self._config.pressure)
        room = bound - self._hub.tracker.pending
        if len(checked) <= room:
            return self._write_group(settle, checked, spans, answers)
        fits = max(0, room)
        try:
            self._refuse(
                [transport for transport, _, _, _, _, _ in checked[fits:]],
                (priority,),
                "capacity",
                self._hub.pressure.retry_after,
                f"{self._hub.tracker.pending} messages are in flight, at the bound of {bound}",
            )
        except Overloaded as refused:
            _end_spans(None if spans is None else spans[fits:], refused)
            settle(answers[fits:], [], refused)
        if not fits:
            return None
        return self._write_group(
            settle, checked[:fits], None if spans is None else spans[:fits], answers[:fits]
        )

    def _write_group(
        self,
        settle: _Settle,
        checked: list[_Checked],
        spans: list[Any] | None,
        answers: list[Any],
    ) -> Future[list[OutboxEntry]] | None:
        try:
            pending = self._start(checked, None, spans=spans)
        except Exception as error:
            settle(answers, [], error)
            return None
        durable = pending.durable
        if durable is None:  # BEST_EFFORT: nothing to wait for
            try:
                settle(answers, self._finish(pending, pending.entries), None)
            except Exception as error:
                settle(answers, [], error)
            return None

        def ended(done: Future[list[OutboxEntry]]) -> None:  # on the writer thread
            error = self._end_later(pending, done)
            settle(answers, pending.receipts, error)

        durable.add_done_callback(ended)
        return durable

    async def asend_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """`send_batch` for a coroutine (see `asend`)."""
        checked, txn = self._check_batch(messages)
        return await self._aaccept(checked, txn) if checked else []

    async def aflush(self, timeout: float | None = None) -> bool:
        """`flush` for a coroutine: True once nothing accepted is still waiting for
        delivery, retry or dead-lettering; False if `timeout` seconds pass first."""
        self._refuse_if_forked()
        _check_timeout(timeout)
        loop = asyncio.get_running_loop()
        self._write_turn(loop)  # asends already called count as accepted here
        empty: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve_empty, empty)

        forget = self._hub.tracker.when_empty(done)
        try:
            async with asyncio.timeout(timeout):
                await empty
        except TimeoutError:
            return False
        finally:
            forget()  # a waiter that gave up leaves nothing behind
        return True

    async def aclose(self, timeout: float = 10.0) -> None:
        """`close` for a coroutine: the closing runs on a thread of its own, so the event
        loop goes on meanwhile."""
        await asyncio.to_thread(self.close, timeout)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_batch(self, messages: object) -> tuple[list[_Checked], Txn | None]:
        """A batch's messages checked, and their common transaction (see `send_batch`)."""
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
            raise InvalidMessage(
                f"messages must be a sequence of mappings, got {type(messages).__name__}"
            )
        if len(messages) > self._config.max_batch:
            raise InvalidMessage(
                f"batch of {len(messages)} messages is over max_batch={self._config.max_batch}"
            )
        checked = []
        txn: Txn | None = None
        for index, message in enumerate(messages):
            try:
                arguments, message_txn = self._from_mapping(message)
            except UnknownTransport as error:
                raise UnknownTransport(f"messages[{index}]: {error.args[0]}") from None
            except InvalidMessage as error:
                raise InvalidMessage(f"messages[{index}]: {error}") from None
            if index and message_txn is not txn:
                raise InvalidMessage(
                    f"messages[{index}]: every message of a batch needs the same txn"
                )
            txn = message_txn
            checked.append(arguments)
        return checked, txn

    def _from_mapping(self, message: object) -> tuple[_Checked, Txn | None]:
        if not isinstance(message, Mapping):
            raise InvalidMessage(
                f"expected a mapping of send() arguments, got {type(message).__name__}"
            )
        if not _SEND_ARGS.issuperset(message):
            unknown = set(message) - _SEND_ARGS
            raise InvalidMessage(f"unknown send() argument(s) {sorted(map(str, unknown))}")
        for required in ("transport", "payload"):
            if required not in message:
                raise InvalidMessage(f"missing {required!r}")
        checked = self._check(
            message["transport"],
            message["payload"],
            message.get("key"),
            message.get("idempotency_key"),
            message.get("priority", Priority.NORMAL),
            message.get("headers"),
        )
        return checked, message.get("txn")

    def _check(  # noqa: PLR0917  # send()'s arguments, checked in one place
        self,
        transport: object,
        payload: object,
        key: object,
        idempotency_key: object,
        priority: object,
        headers: object,
    ) -> _Checked:
        if not isinstance(transport, str) or transport not in self._transports:
            known = ", ".join(sorted(self._transports)) or "none"
            raise UnknownTransport(f"unknown transport {transport!r}; this runtime has: {known}")
        return check_send(
            transport,
            payload,
            key,
            idempotency_key,
            priority,
            headers,
            max_payload_bytes=self._config.max_payload_bytes,
        )

    @staticmethod
    def _envelopes(
        checked: list[_Checked], ids: list[str], now: float, spans: list[Any] | None
    ) -> list[Envelope]:
        """Envelopes for checked arguments, with `spans` (one per message) each carrying
        its send span's `traceparent` (built once: a copy per message would cost more)."""
        if spans is None:
            return [
                checked_envelope(
                    m, transport, data, key, idempotency or m, priority, headers, 1, now
                )
                for m, (transport, data, key, idempotency, priority, headers) in zip(
                    ids, checked, strict=True
                )
            ]
        envelopes = []
        for m, span, (transport, data, key, idempotency, priority, given) in zip(
            ids, spans, checked, strict=True
        ):
            traceparent = None if span is None else traceparent_of(span)
            headers = (
                given
                if traceparent is None
                else MappingProxyType({**given, TRACEPARENT: traceparent})
            )
            envelopes.append(
                checked_envelope(
                    m, transport, data, key, idempotency or m, priority, headers, 1, now
                )
            )
        return envelopes

    def _refuse_inside_transaction(self, what: str = "send without txn=") -> None:
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

    def _accept(self, checked: list[_Checked], txn: Txn | None) -> list[Receipt]:
        if txn is None:
            self._refuse_inside_transaction()
        delay = self._admission(checked)
        if delay > 0:
            time.sleep(delay)  # the throttle: bounded, LOW only, while elevated
        pending = self._start(checked, txn)
        try:
            entries = pending.entries if pending.durable is None else pending.durable.result()
        except BaseException as error:
            self._abort(pending, error)
            raise
        return self._finish(pending, entries)

    async def _aaccept(self, checked: list[_Checked], txn: Txn | None) -> list[Receipt]:
        """`_accept` without blocking the event loop. Once the write is submitted, what
        follows it (dispatch, or forgetting a failed write) is done by the writer thread
        as the write ends, whatever becomes of the caller's coroutine or its loop; the
        coroutine only awaits the outcome, bridged into its loop (no thread per call)."""
        if txn is None:
            self._refuse_inside_transaction()
        delay = self._admission(checked)
        if delay > 0:
            await asyncio.sleep(delay)
        pending = self._start(checked, txn)
        durable = pending.durable
        if durable is None:
            return self._finish(pending, pending.entries)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Receipt]] = loop.create_future()

        def ended(done: Future[list[OutboxEntry]]) -> None:  # on the writer thread
            error = self._end_later(pending, done)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_answer, answer, pending.receipts, error)

        durable.add_done_callback(ended)
        # cancelled here, the caller stops waiting; the message is accepted all the same
        return await answer

    def _admission(self, checked: list[_Checked]) -> float:
        """Refuse a closed runtime or an overloaded one; the throttle delay to wait."""
        self._refuse_if_forked()
        if self._closing:
            raise RuntimeClosed("the runtime is closed (or closing); nothing was accepted")
        return self._check_pressure(checked)

    def _start(
        self,
        checked: list[_Checked],
        txn: Txn | None,
        *,
        spans: list[Any] | None = None,
    ) -> _Pending:
        """Make the envelopes and receipts and start the outbox write (see `_Pending`).
        The send spans are started here unless given (started by `asend` in its caller's
        context; None for a message sent while tracing was off)."""
        hub = self._hub
        try:
            with self._lock:
                if self._closing:
                    raise RuntimeClosed("the runtime is closed (or closing); nothing was accepted")
                self._active += 1
        except BaseException as error:
            _end_spans(spans, error)
            raise
        try:
            now = self._config.clock()  # one reading, ids in acceptance order
            ids = new_id.many(len(checked), now)
            if spans is not None:
                for span, message_id in zip(spans, ids, strict=True):
                    if span is not None:
                        span.set_attribute(ATTR_MESSAGE_ID, message_id)
            elif hub.telemetry.tracing:
                spans = self._start_send_spans(ids, checked)
            pending = _Pending(self._envelopes(checked, ids, now, spans), txn, spans)
        except BaseException as error:
            _end_spans(spans, error)
            self._leave()
            raise
        try:
            self._admit(pending)
        except BaseException as error:
            self._abort(pending, error)
            raise
        return pending

    def _finish(self, pending: _Pending, entries: list[OutboxEntry]) -> list[Receipt]:
        """The write is durable: count, dispatch, end the send spans. A runtime closed
        meanwhile keeps the messages in its outbox for the next open."""
        try:
            self._hub.counters.add_each("accepted", [e.transport for e in pending.envelopes])
            if pending.txn is not None:
                self._txns[id(pending.txn)].extend(entries)
            else:
                try:
                    deliver(self._hub.senders, entries)
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

    def _abort(self, pending: _Pending, error: BaseException) -> None:
        """The write failed: nothing was accepted."""
        self._hub.tracker.forget(e.message_id for e in pending.envelopes)
        _end_spans(pending.spans, error)
        self._leave()

    def _end_later(
        self, pending: _Pending, done: Future[list[OutboxEntry]]
    ) -> BaseException | None:
        """Finish or abort `pending` as its write ended; the write's error, if any."""
        error: BaseException | None = (
            StorageError("the outbox write was cancelled") if done.cancelled() else done.exception()
        )
        try:
            if error is None:
                self._finish(pending, done.result())
            else:
                self._abort(pending, error)
        except Exception as failed:  # on the writer thread: say it, do not kill it
            logger.exception("finishing an accepted message failed")
            return failed
        return error

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            if not self._active:
                self._lock.notify_all()

    def _check_pressure(self, checked: list[_Checked]) -> float:
        """Refuse (`Overloaded`) a send by the published pressure level and the per-key
        rates, or return how long to slow it down; a batch is admitted or refused
        whole."""
        hub = self._hub
        state = hub.pressure
        level = state.level
        if level == "normal" and self._key_rates is None:
            return 0.0  # every priority is admitted at once
        policy = self._config.pressure
        delay = 0.0
        priorities = {priority for _, _, _, _, priority, _ in checked}
        for priority in priorities:
            decision = admission(level, priority, state.ratio, policy)
            if not decision.admit:
                self._refuse(
                    [transport for transport, _, _, _, _, _ in checked],
                    priorities,
                    decision.reason,
                    state.retry_after,
                    f"pressure is {level}: {priority.name} sends are shed",
                )
            delay = max(delay, decision.delay)
        rates = self._key_rates
        if rates is not None:
            keys = [key for _, _, key, _, _, _ in checked if key is not None]
            wait = rates.take(keys, self._config.clock()) if keys else 0.0
            if wait == float("inf"):
                raise InvalidMessage(
                    f"the batch holds more messages for one key than rate_per_key allows "
                    f"at once ({policy.rate_per_key}); split it"
                )
            if wait > 0:
                self._refuse(
                    [transport for transport, _, _, _, _, _ in checked],
                    priorities,
                    "rate_per_key",
                    wait,
                    f"a key is over its rate {policy.rate_per_key} (count, per_seconds)",
                )
        return delay

    def _refuse(
        self,
        transports: list[str],
        priorities: Iterable[Priority],
        reason: str,
        after: float,
        why: str,
    ) -> NoReturn:
        """Count the refusal (by the batch's lowest priority) and raise `Overloaded`."""
        priority = max(priorities, key=lambda p: p.rank).name
        self._hub.counters.refused(transports, priority, reason)
        raise Overloaded(
            f"{why}; nothing was accepted, retry after {after:.3g}s", retry_after=after
        )

    def _admit(self, pending: _Pending) -> None:
        """Track the messages (bounded by pressure) and start their outbox write."""
        hub = self._hub
        envelopes, txn = pending.envelopes, pending.txn
        partitions = self._config.partitions
        by_key: dict[str, int] = {}  # a batch often repeats its keys
        routed = []
        for e in envelopes:
            key = e.key
            if key is None:
                partition = next(self._round_robin) % partitions
            else:
                partition = by_key.get(key, -1)
                if partition < 0:
                    partition = by_key[key] = partition_for(key, partitions)
            routed.append((e, partition))
        ids = [e.message_id for e in envelopes]
        policy = self._config.pressure
        priorities = {e.priority for e in envelopes}
        limit = min(hard_bound(p, policy) for p in priorities)
        try:
            pending.receipts = hub.tracker.add(ids, limit=limit)
        except OverLimit as full:
            self._refuse(
                [e.transport for e in envelopes],
                priorities,
                "capacity",
                hub.pressure.retry_after,
                f"{full.pending} messages are in flight, at the bound of {limit}",
            )
        tracked = hub.tracker.pending
        if (
            tracked >= policy.elevated_at * policy.capacity
            or (hub.pressure.level != "normal" and tracked < policy.recover_at * policy.capacity)
        ) and not hub.pressure.sample_asked:
            hub.pressure.sample_asked = True  # a threshold crossed between two samples
            if hub.governor is not None:
                hub.governor.tell(Sample())
        if txn is not None:
            if id(txn) not in self._txns:
                raise InvalidMessage("txn must be the transaction of rt.transaction(), still open")
            now = self._config.clock()
            pending.entries = self._store.outbox.enqueue_many(txn, routed, due_at=now)
        elif hub.durable:
            pending.durable = self._store.enqueue(routed)
        else:
            now = self._config.clock()
            pending.entries = [outbox_entry(0, e, now, p) for e, p in routed]

    def _send_span(self, transport: str, key: str | None) -> Any:
        """A send's span, started in its caller's context (a child of the caller's
        current span; its message id is set once given), or None without tracing."""
        if not self._hub.telemetry.tracing:
            return None
        return self._hub.telemetry.tracer.start_span(
            SPAN_SEND,
            attributes={ATTR_TRANSPORT: transport, ATTR_KEY: key if key is not None else ""},
        )

    def _start_send_spans(self, ids: list[str], checked: list[_Checked]) -> list[Any]:
        tracer = self._hub.telemetry.tracer
        return [
            tracer.start_span(
                SPAN_SEND,
                attributes={
                    ATTR_MESSAGE_ID: message_id,
                    ATTR_TRANSPORT: transport,
                    ATTR_KEY: key if key is not None else "",
                },
            )
            for message_id, (transport, _, key, _, _, _) in zip(ids, checked, strict=True)
        ]

    # -- the transactional outbox --------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        """A write transaction on the runtime's LMDB environment, for the host's own
        tables (`rt.table(name)`), committed when the block ends, aborted if it raises.

        `rt.send(..., txn=txn)` inside it writes the message to the outbox in the same
        transaction: it is dispatched only after the commit, never if the block aborts.
        If the map had to grow, `RetryTransaction` is raised and nothing was written:
        run the block again. While the block runs it holds the directory's write lock:
        every writer of every process on the directory waits for it, so keep it short;
        a send on the same thread must pass `txn=` (without, `RuntimeError`).
        """
        self._refuse_if_forked()
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is closed (or closing)")
        pending: list[OutboxEntry] = []
        try:
            with self._store.transaction() as txn:
                self._txns[id(txn)] = pending
                thread = threading.get_ident()
                self._txn_threads.add(thread)
                try:
                    yield txn
                finally:
                    self._txn_threads.discard(thread)
                    del self._txns[id(txn)]
        except BaseException:
            self._hub.tracker.forget(e.envelope.message_id for e in pending)
            raise
        if pending:
            deliver(self._hub.senders, pending)

    def consume(
        self,
        source: Any,
        handler: Callable[..., Any],
        *,
        name: str,
        key: Callable[[Envelope], str | None] | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> None:
        """Take messages from `source` (a `surelay.sources.JetStreamSource`) and deliver
        each to `handler` (a transport-shaped callable, sync or async) with all of
        surelay's delivery machinery, as transport `name`: retries, breaker, per-key order
        by `key(envelope)`, dead letters, replay and telemetry.

        A message is acknowledged to its source only once it is durable in the outbox;
        the inbox, keyed by (`name`, the source's message id), drops a redelivery seen
        within `dedup_ttl` (counted in `stats().duplicates`). Pulling stops while the
        pressure level would refuse a send of `priority`. Returns at once; a source that
        cannot be reached is tried again (`health()["sources"]`). Raises `ValueError`
        or `TypeError` for bad arguments (a `name` already taken among others),
        `RuntimeClosed` once closed.
        """
        self._refuse_if_forked()
        if self._closing:
            raise RuntimeClosed("the runtime is closed (or closing); nothing was consumed")
        self._consumers.add(source, handler, name=name, key=key, priority=priority)

    def relay(
        self,
        outbox: SqlOutbox,
        *,
        batch: int = 500,
        poll_interval: float = 1.0,
        lease: float = 10.0,
    ) -> None:
        """Relay the committed rows of `outbox` (a `surelay.sql.SqlOutbox`) through this
        runtime: in id order, with all of its delivery (per-key order, concurrency,
        retries, breaker, dead letters, telemetry). A row is deleted only once its
        message is delivered or dead-lettered, so the table stays the source of truth
        until the message has left.

        Runtimes on any number of machines may relay one table: each holds a lease on
        some of its `outbox.partitions` (rows are split by key) and relays only those,
        so a key's rows pass through one relay at a time. A relay that stops renewing
        for `lease` seconds loses its partitions to the others, which relay its rows
        again (at least once). Rows are taken `batch` at a time; PostgreSQL wakes the
        relay with NOTIFY at commit, and every `poll_interval` seconds it looks anyway.

        Returns at once; a database that cannot be reached is retried with back-off
        (`health()["relays"]`). Raises `TypeError`/`ValueError` for bad arguments or an
        outbox this runtime relays already, `RuntimeClosed` once closed.
        """
        self._refuse_if_forked()
        if not isinstance(outbox, SqlOutbox):
            raise TypeError(f"outbox must be a surelay.sql.SqlOutbox, got {outbox!r}")
        settings = RelaySettings(batch, poll_interval, lease)
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is closed (or closing); nothing is relayed")
            self._relays.add(outbox, settings)

    def table(self, name: str) -> Any:
        """The handle of the host's own named database `name`, for `txn.get/put(...,
        db=handle)` inside `transaction()`. Raises `ValueError` for a bad name."""
        self._refuse_if_forked()
        if not isinstance(name, str) or not name:
            raise ValueError(f"table name must be a non-empty str, got {name!r}")
        if self._closing:
            raise RuntimeClosed("the runtime is closed (or closing)")
        return self._store.host_table(name)

    # -- waiting and looking -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing accepted is still waiting for delivery, retry or
        dead-lettering; False if `timeout` seconds pass first. Raises `ValueError` for a
        timeout that is not seconds >= 0 or None, and `RuntimeError` inside
        `transaction()` on the same thread (what it waits for needs that block's lock)."""
        self._refuse_if_forked()
        _check_timeout(timeout)
        self._refuse_inside_transaction("flush()")
        self._write_turns()  # asends already called count as accepted here
        return self._hub.tracker.wait_empty(timeout)

    def stats(self) -> RuntimeStats:
        self._refuse_if_forked()
        hub = self._hub
        counters = hub.counters.snapshot()
        store_stats = self._store.stats() if not self._store.env.closed else None
        return RuntimeStats(
            **counters,
            in_flight=hub.tracker.pending,
            outbox_pending=store_stats.outbox_pending if store_stats else 0,
            retry_pending=len(hub.backlog),
            dead_letters=store_stats.dead_letters.get("dead", 0) if store_stats else 0,
            pressure=hub.pressure.level,
            breakers=MappingProxyType(hub.breakers.states(self._config.clock())),
            calls_in_flight=MappingProxyType(hub.engines.in_flight()),
            abandoned=hub.engines.abandoned(),
        )

    def health(self) -> Mapping[str, Any]:
        """`{"ok": bool, "actors": ..., "storage": ..., "breakers": ...}`: `ok` is False
        when an actor is not running, the store is closed or nearly full, a breaker is
        open, or a transport is wedged (`engines[name]`: every call slot held by a call
        past its ack timeout; its `problem` says so). Each part has its own `ok`.
        Bounded: a supervisor that does not answer within `HEALTH_TIMEOUT` shows as
        `unresponsive`."""
        self._refuse_if_forked()
        return self._health(HEALTH_TIMEOUT)

    def _health(self, timeout: float) -> Mapping[str, Any]:
        deadline = time.monotonic() + timeout
        actors = _actor_health(self._root, "", deadline) if self._root.is_alive() else {}
        storage: dict[str, Any]
        if self._store.env.closed:
            storage = {"ok": False, "error": "closed"}
        else:
            size, used = self._store.env.usage()
            storage = {
                "ok": used < 0.9 * self._store.env.max_map_size and not self._store.full,
                "full": self._store.full,
                "path": str(self._store.path),
                "slot": self._store.slot,
                "map_size": size,
                "map_used": used,
                "quarantined": self._store.stats().quarantined,
            }
        breakers = {
            name: {"ok": state != "open", "state": state}
            for name, state in self._hub.breakers.states(self._config.clock()).items()
        }
        ok = (
            self._root.is_alive()
            and all(a["ok"] for a in actors.values())
            and storage["ok"]
            and all(b["ok"] for b in breakers.values())
        )
        engines = self._hub.engines.health()
        relays = self._relays.health()
        ok = ok and all(e["ok"] for e in engines.values()) and all(r["ok"] for r in relays.values())
        return {
            "ok": ok,
            "closed": self._closing,
            "actors": actors,
            "storage": storage,
            "breakers": breakers,
            "engines": engines,
            "orphaned": self._recovery.orphans,
            "sources": self._consumers.health(),
            "relays": relays,
        }

    @property
    def supervisor(self) -> SupervisorRef:
        """The root supervisor."""
        self._refuse_if_forked()
        return self._root

    @property
    def dead_letters(self) -> DeadLetters:
        """Operations on dead letters: list, get, replay, archive, purge."""
        self._refuse_if_forked()
        return self._dead_letters

    @property
    def config(self) -> RuntimeConfig:
        return self._config

    @property
    def path(self) -> str:
        return str(self._store.path)

    @property
    def slot(self) -> int:
        """The slot of the data directory this runtime holds (0 when it is alone on it):
        its part of the outbox; see "Several processes" in docs/architecture.md."""
        return self._store.slot

    def _log_abandoned(self) -> None:
        """Say which calls close() leaves running (their messages stay in the outbox)."""
        for name, engine in self._hub.engines.items():
            running = engine.running_ids()
            if running:
                logger.warning(
                    "closing with %d call(s) of transport %r still running: abandoned, "
                    "their messages stay in the outbox for the next open: %s",
                    len(running),
                    name,
                    ", ".join(running[:20]) + (" ..." if len(running) > 20 else ""),
                )

    def _publish_final_status(self, timeout: float) -> None:
        """What `surelay stats` shows once this runtime is gone: its last counters."""
        try:
            status = {**self._status(timeout), "pid": os.getpid(), "at": self._config.clock()}
            store = self._store
            store.write(lambda txn: store.status.put(txn, status)).result(timeout=timeout)
        except Exception:
            logger.warning("could not publish the final status", exc_info=True)

    def _status(self, timeout: float = 1.0) -> Mapping[str, Any]:
        """What the StatusReporter publishes for `surelay stats` in other processes."""
        stats = self.stats()
        health = self._health(timeout)
        out: dict[str, Any] = {name: getattr(stats, name) for name in RuntimeStats.__slots__}
        out["breakers"] = dict(stats.breakers)
        out["calls_in_flight"] = dict(stats.calls_in_flight)
        out["ok"] = health["ok"]
        out["unhealthy_actors"] = sorted(n for n, a in health["actors"].items() if not a["ok"])
        out["transports"] = sorted(self._transports)  # what replay requests may ask of it
        out["wedged"] = sorted(name for name, e in health["engines"].items() if e["wedged"])
        out["relays"] = health["relays"]
        return out

    def _gauges(self) -> Mapping[str, float | Mapping[str, float]]:
        if self._store.env.closed:
            return {}
        stats = self.stats()
        return {
            "surelay.outbox.pending": stats.outbox_pending,
            "surelay.retry.pending": stats.retry_pending,
            "surelay.dead_letters": stats.dead_letters,
            "surelay.pressure.level": LEVELS.index(self._hub.pressure.level),
            "surelay.breaker.state": {t: STATE_GAUGE[s] for t, s in stats.breakers.items()},
            "surelay.calls.in_flight": dict(stats.calls_in_flight),
        }


def _check_timeout(timeout: object) -> None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not timeout >= 0  # NaN too
    ):
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")


def _check_transports(transports: object) -> dict[str, Transport]:
    if not isinstance(transports, Mapping):
        raise ValueError(
            "transports must be a mapping of name to callable ({} for a runtime that only "
            f"consumes), got {type(transports).__name__}"
        )
    checked: dict[str, Transport] = {}
    for name, transport in transports.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"transport names must be non-empty str, got {name!r}")
        if not callable(transport):
            raise TypeError(f"transport {name!r} must be callable (Envelope) -> None")
        checked[name] = transport
    return checked


def _check_per_transport(config: RuntimeConfig, transports: Mapping[str, Transport]) -> None:
    """A per-transport setting for a transport not given to `open` would be ignored
    without a word (a typo, a renamed transport): refuse it."""
    for setting in (
        "retry_per_transport",
        "ack_timeout_per_transport",
        "concurrency_per_transport",
    ):
        unknown = sorted(set(getattr(config, setting)) - set(transports))
        if unknown:
            known = ", ".join(sorted(transports)) or "none"
            raise ValueError(
                f"RuntimeConfig.{setting} names transport(s) {', '.join(map(repr, unknown))} "
                f"that this runtime does not have (it has: {known}); a consumer's handler "
                "takes its own ack_timeout attribute instead"
            )


def _actor_health(
    supervisor: SupervisorRef, prefix: str, deadline: float
) -> dict[str, dict[str, Any]]:
    try:
        children = supervisor.which_children(timeout=max(0.01, deadline - time.monotonic()))
    except pykka.Timeout:
        return {prefix or "surelay": {"ok": False, "status": "unresponsive", "restarts": 0}}
    out: dict[str, dict[str, Any]] = {}
    for info in children:
        name = prefix + info.id
        out[name] = {
            "ok": info.status == "running",
            "status": info.status,
            "restarts": info.restarts,
        }
        if isinstance(info.ref, SupervisorRef) and info.status == "running":
            out.update(_actor_health(info.ref, name + "/", deadline))
    return out
