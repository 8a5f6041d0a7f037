"""How a runtime closes, once its way in is shut (`WayIn.begin_close`): the work in
hand ends (until the deadline), no call starts after that, the calls running end and
are settled, relayed rows whose messages ended are deleted, the last status is
published, the tree stops in reverse start order; then the engines, the telemetry and
the store are let go, whatever fails on the way (logged, never raised)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from surelay.actors.sender import PartitionState
from surelay.consumers import Consumers
from surelay.delivery import Engines
from surelay.peers import Peers
from surelay.receipts import Tracker
from surelay.sql.relay import Relays
from surelay.storage.store import Store
from surelay.supervision import SupervisorRef
from surelay.telemetry import Telemetry

__all__ = ["SLOW_CLOSE", "Closing"]

logger = logging.getLogger("surelay.runtime")

SLOW_CLOSE = 1.0
"""Seconds a close waits for messages under way before it says so (a quick one is quiet)."""


class Closing:
    """The close of one runtime (see the module docstring)."""

    def __init__(  # the runtime's parts
        self,
        store: Store,
        *,
        root: SupervisorRef,
        peers: Peers,
        states: list[PartitionState],
        engines: Engines,
        tracker: Tracker,
        telemetry: Telemetry,
        consumers: Consumers,
        relays: Relays,
        status: Callable[[float], Mapping[str, Any]],
        ended: Callable[[], None],
    ) -> None:
        self._store = store
        self._peers = peers
        self._engines = engines
        self._tracker = tracker
        self._telemetry = telemetry
        self._root = root
        self._states = states
        self._consumers = consumers
        self._relays = relays
        self._status = status
        self._ended = ended
        """Called last, whatever failed: the runtime is closed."""

    def drain(self, deadline: float) -> None:
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
                self._tracker.wait_change(min(0.02, max(0.0, deadline - time.monotonic())))
            # from here no call starts (a retry coming due now stays in the outbox, its
            # attempt unspent), and the calls running end and are settled first
            self._engines.halt()
            while not self._settled() and time.monotonic() < deadline:
                self._tracker.wait_change(min(0.02, max(0.0, deadline - time.monotonic())))
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
            self._tracker.pending,
            max(0.0, deadline - time.monotonic()),
        )

    def release(self, deadline: float) -> None:
        """Let go of the engines, the store and the directory, whatever fails."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("relays", lambda: self._relays.stop(deadline)),  # (stopped already, unless cut short)
            ("engines", lambda: self._engines.stop(max(0.2, deadline - time.monotonic()))),
            ("telemetry", self._telemetry.close),
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
            self._ended()

    def _busy(self) -> bool:
        """True while a sender has work it can do now (not counting held messages)."""
        peers = self._peers
        for state, ref in zip(self._states, peers.senders, strict=True):
            if state.queue.ready_count or state.in_flight or state.results or ref.queued():
                return True
        return peers.dead_letters.queued() > 0

    def _settled(self) -> bool:
        """True once no transport call runs and every result has been settled."""
        if any(self._engines.in_flight().values()):
            return False
        return all(not state.results for state in self._states)

    def _log_abandoned(self) -> None:
        """Say which calls close() leaves running (their messages stay in the outbox)."""
        for name, engine in self._engines.items():
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
            status = {**self._status(timeout), "pid": os.getpid(), "at": self._store.clock()}
            store = self._store
            store.write(lambda txn: store.status.put(txn, status)).result(timeout=timeout)
        except Exception:
            logger.warning("could not publish the final status", exc_info=True)
