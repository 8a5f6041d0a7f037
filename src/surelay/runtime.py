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
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from surelay.closing import Closing
from surelay.config import RuntimeConfig
from surelay.envelope import (
    Envelope,
    Priority,
)
from surelay.errors import (
    RuntimeClosed,
)
from surelay.ingress.answers import resolve_empty
from surelay.ingress.checks import check_per_transport, check_timeout, check_transports
from surelay.operations.dead_letters import DeadLetters
from surelay.operations.health import RuntimeStats, stats
from surelay.operations.message_status import MessageStatus, message_status
from surelay.push.config import PushConfig
from surelay.push.gateway import Gateway
from surelay.receipts import Receipt
from surelay.sql.outbox import SqlOutbox
from surelay.sql.relay import RelaySettings
from surelay.storage.environment import Txn
from surelay.storage.store import Store
from surelay.supervision import SupervisorRef
from surelay.transports.protocol import Transport
from surelay.wiring import Tree, start

__all__ = ["Runtime", "RuntimeStats"]

logger = logging.getLogger("surelay.runtime")

CLOSE_GRACE = 3.0
"""Seconds `close` may take beyond its timeout, at most: the last status, the tree's stop
and the store's last commit, each bounded."""

HEALTH_TIMEOUT = 1.0
"""Seconds `health()` waits for the supervision tree's answers."""

EXIT_TIMEOUT = 1.0
"""Seconds an open runtime gets to close at interpreter exit (what it has not delivered
by then stays in the outbox for the next open)."""

_OPEN: weakref.WeakSet[Runtime] = weakref.WeakSet()
"""The runtimes open in this process: closed at exit, disowned after a fork."""


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
        runtime._in.forked_from = parent  # its store is left to the parent (storage.store)
    _OPEN.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_disown_after_fork)


class Runtime:
    """An open runtime on a data directory. Open with `Runtime.open`; use as a context
    manager or call `close()`."""

    def __init__(self, store: Store, config: RuntimeConfig, parts: Tree):
        self._store = store
        self._config = config
        self._parts = parts
        self._push: Gateway | None = None
        self._root = parts.root
        self._in = parts.way_in
        self._closer = Closing(
            store,
            root=parts.root,
            peers=parts.peers,
            states=parts.states,
            engines=parts.engines,
            tracker=parts.tracker,
            telemetry=parts.telemetry,
            consumers=parts.consumers,
            relays=parts.relays,
            status=parts.vitals.status,
            ended=self._ended,
        )

    # -- life cycle ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        transports: Mapping[str, Transport],
        config: RuntimeConfig | None = None,
        push: PushConfig | None = None,
    ) -> Runtime:
        """Open (creating, mode 0o700) the data directory at `path`, take a free slot
        of it, start the tree and dispatch again everything an earlier run of that slot
        left in the outbox, in order per key.

        Other processes may open the same `path` at once: each runtime takes a slot of
        its own, and adopts the outbox of any slot whose runtime died.

        Raises `ValueError`/`TypeError` for bad transports or config (a per-transport
        setting naming a transport not in `transports` included), `StorageError`
        for a directory that is not surelay's (or is already open in this process).

        With `push`, `rt.push` accepts messages into recipients' mailboxes on this
        directory (see `surelay.push`), and the built-in transport `push` takes
        `rt.send("push", payload, key=recipient)` there through the outbox.
        """
        config = RuntimeConfig() if config is None else config
        if not isinstance(config, RuntimeConfig):
            raise TypeError(f"config must be a RuntimeConfig, got {type(config).__name__}")
        if push is not None and not isinstance(push, PushConfig):
            raise TypeError(f"push must be a PushConfig, got {type(push).__name__}")
        table = check_transports(transports)  # rt.consume adds to it
        if push is not None and "push" in table:
            raise ValueError(
                "transport 'push' is built in when Runtime.open is given push=: name yours "
                "otherwise"
            )
        check_per_transport(config, table if push is None else {**table, "push": print})
        store = Store.open(path, map_size=config.map_size, clock=config.clock, claim=True)
        try:
            gateway = None if push is None else Gateway(store, push, config.clock)
            if gateway is not None:
                table["push"] = gateway.transport
            parts = start(store, config, table, push=gateway)
        except BaseException:
            store.close()
            raise
        recovery = parts.recovery
        runtime = cls(store, config, parts)
        runtime._push = gateway
        try:
            recovery.recover()
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

        A close still waiting for messages after a second (`SLOW_CLOSE`) says so (a
        warning: how many, and how long it still waits); a `KeyboardInterrupt` while it
        waits (ctrl-C again) stops the wait, closes what it must, and is raised on.
        """
        if self._in.forked_from is not None:
            return  # nothing of it is this process's to close (the parent owns it)
        deadline = time.monotonic() + timeout
        if not self._in.begin_close(deadline):  # another caller closes it: wait for that
            self._in.wait_closed(timeout + CLOSE_GRACE)
            return

        try:
            self._closer.drain(deadline)
        except KeyboardInterrupt:  # interrupted again: stop waiting, stop the tree, go
            logger.warning(
                "close interrupted: not waiting any longer; what was not delivered stays "
                "in the outbox for the next open"
            )
            self._parts.engines.halt()
            with contextlib.suppress(Exception):
                self._root.stop(timeout=CLOSE_GRACE)
            raise
        finally:
            self._closer.release(deadline)

    def _ended(self) -> None:
        self._in.end_close()
        _OPEN.discard(self)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _refuse_if_forked(self) -> None:
        self._in.refuse_if_forked()

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
        """Accept one message for `transport` and return its receipt.

        With AT_LEAST_ONCE it returns once the message is durable in the outbox; with
        `txn` (from `transaction()`) it is written in that transaction and dispatched
        after it commits. Raises `UnknownTransport`, `InvalidMessage`, `Overloaded`,
        `RuntimeClosed`, and `RuntimeError` without `txn` inside `transaction()` on the
        same thread; nothing is accepted when it raises, except when an interrupt
        (`KeyboardInterrupt`) reaches it while it waits for the write: the message is
        then accepted and delivered all the same. Sends from many threads at once share
        outbox writes (see `surelay.storage.joining`).

        `delay` (seconds) or `not_before` (epoch seconds, or an aware `datetime`) makes
        the message due later: the due time is durable (it survives a kill, a restart
        and the adoption of this runtime's slot) and fires once. A key's messages are
        delivered in acceptance order, so a delayed message holds back the messages of
        its key accepted after it, never those before. `type` names the message type:
        it is kept in the envelope and any dead letter, and selects
        `RuntimeConfig.retry_per_type` and `ack_timeout_per_type`.
        """
        return self._in.send(
            transport,
            payload,
            key=key,
            idempotency_key=idempotency_key,
            priority=priority,
            headers=headers,
            txn=txn,
            delay=delay,
            not_before=not_before,
            type=type,
        )

    def send_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """Accept several messages at once, all or none: each mapping holds `send`'s
        arguments by name. Every message is validated first; `InvalidMessage` (or
        `UnknownTransport`) names the index of the first bad one. At most
        `config.max_batch` messages; one durable write for all of them.
        """
        return self._in.send_batch(messages)

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
        delay: float | None = None,
        not_before: float | datetime | None = None,
        type: str | None = None,  # (shadows the builtin: the contract names it)
    ) -> Receipt:
        """`send` for a coroutine: returns once the message is durable, never blocking
        the event loop (coroutines sending at once share one fsync, as threads do). The
        same arguments and errors; the `surelay.send` span is a child of the caller's
        current span. Cancelled while waiting for the write, the message stays accepted
        and is delivered."""
        return await self._in.asend(
            transport,
            payload,
            key=key,
            idempotency_key=idempotency_key,
            priority=priority,
            headers=headers,
            txn=txn,
            delay=delay,
            not_before=not_before,
            type=type,
        )

    async def asend_batch(self, messages: Sequence[Mapping[str, Any]]) -> list[Receipt]:
        """`send_batch` for a coroutine (see `asend`)."""
        return await self._in.asend_batch(messages)

    async def aflush(self, timeout: float | None = None) -> bool:
        """`flush` for a coroutine: True once nothing accepted is still waiting for
        delivery, retry or dead-lettering; False if `timeout` seconds pass first."""
        self._refuse_if_forked()
        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        self._in.write_turn(loop)  # asends already called count as accepted here
        empty: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(resolve_empty, empty)

        forget = self._parts.tracker.when_empty(done)
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
        with self._in.transaction() as txn:
            yield txn

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
        if self._in.closing:  # (not under the gate's lock: adding may wait for a recovery)
            raise RuntimeClosed("the runtime is closed (or closing); nothing was consumed")
        self._parts.consumers.add(source, handler, name=name, key=key, priority=priority)

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
        again (at least once). Rows are taken `batch` at a time; a relay that found rows
        lately reads again within milliseconds, an idle one every `poll_interval` seconds
        or, on PostgreSQL, as soon as a NOTIFY says a transaction committed rows.

        Returns at once; a database that cannot be reached is retried with back-off
        (`health()["relays"]`). Raises `TypeError`/`ValueError` for bad arguments or an
        outbox this runtime relays already, `RuntimeClosed` once closed.
        """
        self._refuse_if_forked()
        if not isinstance(outbox, SqlOutbox):
            raise TypeError(f"outbox must be a surelay.sql.SqlOutbox, got {outbox!r}")
        settings = RelaySettings(batch, poll_interval, lease)
        with self._in.open_gate("nothing is relayed"):
            self._parts.relays.add(outbox, settings)

    def table(self, name: str) -> Any:
        """The handle of the host's own named database `name`, for `txn.get/put(...,
        db=handle)` inside `transaction()`. Raises `ValueError` for a bad name."""
        self._refuse_if_forked()
        if not isinstance(name, str) or not name:
            raise ValueError(f"table name must be a non-empty str, got {name!r}")
        if self._in.closing:
            raise RuntimeClosed("the runtime is closed (or closing)")
        return self._store.host_table(name)

    # -- waiting and looking -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing accepted is still waiting for delivery, retry or
        dead-lettering; False if `timeout` seconds pass first. Raises `ValueError` for a
        timeout that is not seconds >= 0 or None, and `RuntimeError` inside
        `transaction()` on the same thread (what it waits for needs that block's lock)."""
        self._refuse_if_forked()
        check_timeout(timeout)
        self._in.refuse_inside_transaction("flush()")
        self._in.write_turns()  # asends already called count as accepted here
        return self._parts.tracker.wait_empty(timeout)

    def stats(self) -> RuntimeStats:
        self._refuse_if_forked()
        return stats(self._parts.readings)

    def status(
        self, message_id: str | None = None, *, idempotency_key: str | None = None
    ) -> MessageStatus | None:
        """What became of one message (give its id, or the idempotency key it was sent
        with): its `state` (scheduled, pending, in_flight, delivered, duplicate, dead,
        replayed), attempts, next attempt, last error and when it last changed. Read
        from the data directory, so it answers for messages of any process on it and
        after restarts, for `dedup_ttl` after they ended; None for a message it does
        not know. Only this process knows its calls in flight: to another process such
        a message is `pending`. By idempotency key, it is the latest message sent with
        that key."""
        self._refuse_if_forked()
        states = self._parts.states

        def in_flight(message_id: str) -> bool:
            return any(message_id in state.in_flight for state in states)

        return message_status(
            self._store,
            message_id,
            idempotency_key,
            now=self._config.clock(),
            in_flight=in_flight,
        )

    def health(self) -> Mapping[str, Any]:
        """`{"ok": bool, "actors": ..., "storage": ..., "breakers": ...}`: `ok` is False
        when an actor is not running, the store is closed or nearly full, a breaker is
        open, or a transport is wedged (`engines[name]`: every call slot held by a call
        past its ack timeout; its `problem` says so). Each part has its own `ok`.
        Bounded: a supervisor that does not answer within `HEALTH_TIMEOUT` shows as
        `unresponsive`."""
        self._refuse_if_forked()
        return self._parts.vitals.health(HEALTH_TIMEOUT)

    @property
    def supervisor(self) -> SupervisorRef:
        """The root supervisor."""
        self._refuse_if_forked()
        return self._root

    @property
    def dead_letters(self) -> DeadLetters:
        """Operations on dead letters: list, get, replay, archive, purge."""
        self._refuse_if_forked()
        return self._parts.dead_letters

    @property
    def config(self) -> RuntimeConfig:
        return self._config

    @property
    def push(self) -> Gateway:
        """The push gateway: `send` into a recipient's mailbox, `status`,
        `issue_token`. Only with `Runtime.open(..., push=PushConfig(...))`."""
        self._refuse_if_forked()
        if self._push is None:
            raise RuntimeError(
                "push is not configured: open the runtime with "
                "Runtime.open(..., push=PushConfig(secret=...))"
            )
        return self._push

    @property
    def path(self) -> str:
        return str(self._store.path)

    @property
    def slot(self) -> int:
        """The slot of the data directory this runtime holds (0 when it is alone on it):
        its part of the outbox; see "Several processes" in docs/architecture.md."""
        return self._store.slot
