"""`ThreadEngine`: plain callables on a bounded pool of threads, one call per thread.

Threads are made on demand, up to the transport's concurrency: one for the first call,
then, while calls wait and no thread is idle, as many as the waiting calls need, but only
once calls prove slow (the last `SAMPLES` calls each `SLOW_CALL`, or one call running
`STUCK_CALL`): a transport that returns in microseconds is served best by one thread,
not by 64 taking turns at the GIL (measured: 64 threads cut a no-op transport's
throughput to a fifth). A transport answering in well under a millisecond therefore
runs on one thread. A thread idle for `IDLE_RETIRE` seconds ends.

Ack timeouts: a watcher thread wakes at the earliest deadline of the running calls. A
call past its deadline gets a TIMEOUT attempt at once (retried like any transient
failure). Threads cannot be killed, so its thread is *abandoned*: its slot is given back
and a new thread may take it; whatever the call returns later is ignored. At most
`limit` abandoned threads of one transport may be alive at once: past that bound a hung
call keeps its slot until it returns, so a downstream that hangs every call costs at
most 2 x `limit` threads and slows only its own transport. Once every slot is held so,
the transport is wedged (see `surelay.delivery.engine`): the watcher says so, and hands
back the waiting runs past their ttl every `WEDGED_POLL` seconds.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections import deque
from typing import Any

from opentelemetry.trace import Span

from surelay.delivery.attempt import OK, Run, Sink
from surelay.delivery.engine import WEDGED_POLL, Engine, calling, not_awaited

__all__ = ["IDLE_RETIRE", "SAMPLES", "SLOW_CALL", "STUCK_CALL", "ThreadEngine"]

logger = logging.getLogger("surelay.delivery")

IDLE_RETIRE = 30.0
"""Seconds an idle pool thread waits for work before it ends."""

SLOW_CALL = 0.001
"""Calls that all took this long (seconds), the last `SAMPLES` of them, make the pool grow
while calls wait. All of them, not on average: a quick call that waited a while for the
GIL looks slow, but only now and then."""

SAMPLES = 8

STUCK_CALL = 0.1
"""A call running this long makes the pool grow while calls wait: a call that hangs
never returns to say it is slow. Well past the waits for the GIL a busy process sees."""


class _Worker:
    """One pool thread and the run it is on (guarded by the engine's lock)."""

    __slots__ = (
        "abandoned",
        "deadline",
        "index",
        "run",
        "sink",
        "span",
        "started",
        "ticket",
        "timed_out",
    )

    def __init__(self) -> None:
        self.run: Run | None = None
        self.index = 0  # the message of `run` being called
        self.sink: Sink | None = None
        self.started = math.inf  # time.monotonic() at the call's start; inf between calls
        self.deadline = math.inf  # when the call is cut off (its ack timeout after `started`)
        self.ticket: float | None = None
        self.span: Span | None = None
        self.timed_out = False
        self.abandoned = False


class ThreadEngine(Engine):
    kind = "threads"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition(self._lock)
        self._workers: set[_Worker] = set()
        self._idle = 0
        self._abandoned = 0
        self._recent: deque[float] = deque(maxlen=SAMPLES)  # seconds the last calls took
        self._watcher: threading.Thread | None = None
        self._wake_watcher = threading.Event()
        self._closed = False
        self._serial = 0

    # -- growing and shrinking -----------------------------------------------------------

    def _queued(self, added: int) -> None:
        if self._idle:
            self._cond.notify(min(added, self._idle))
        wanted = self._wanted()
        self._spawn(wanted)
        if not wanted and self._idle < len(self._lanes) and len(self._workers) < self.limit:
            self._wake_watcher.set()  # it grows the pool if the running calls turn out slow

    def _wanted(self, *, slow: bool = False) -> int:
        """Threads to add now (lock held): calls wait, no thread is idle to take them,
        and calls are slow (the last `SAMPLES` took `SLOW_CALL` each, or `slow` says one
        running has been going `STUCK_CALL`)."""
        room = self.limit - len(self._workers)
        waiting = len(self._lanes) - self._idle
        if room <= 0 or waiting <= 0:
            return 0
        if not self._workers:
            return 1
        slow = slow or (len(self._recent) == SAMPLES and min(self._recent) >= SLOW_CALL)
        return min(room, waiting) if slow else 0

    def _spawn(self, count: int) -> None:
        """Start `count` threads (lock held; they block on it until it is released). A
        thread the system will not start is logged and left out: the runs wait for the
        threads there are."""
        for _ in range(count):
            worker = _Worker()
            self._serial += 1
            thread = threading.Thread(
                target=self._work,
                args=(worker,),
                name=f"surelay-call-{self.name}-{self._serial}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:
                logger.exception("could not start a call thread for transport %r", self.name)
                break
            self._workers.add(worker)
        if self._workers and self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name=f"surelay-deadlines-{self.name}", daemon=True
            )
            self._watcher.start()

    def halt(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # idle threads end

    def stop(self, timeout: float) -> None:
        self.halt()
        self._closed = True  # the watcher ends too: nothing is timed out any more
        self._wake_watcher.set()

    def running_ids(self) -> list[str]:
        with self._lock:
            return [
                w.run[w.index].envelope.message_id
                for w in self._workers
                if w.run is not None and w.started != math.inf
            ]

    @property
    def abandoned(self) -> int:
        with self._lock:
            return self._abandoned + self._held_past_deadline()

    def _held_past_deadline(self) -> int:
        """(lock held) Slots held by a call past its ack timeout."""
        return sum(1 for w in self._workers if w.run is not None and w.timed_out)

    def health(self) -> dict[str, Any]:
        out = super().health()
        out.update(threads=len(self._workers))
        return out

    # -- a pool thread -------------------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._lanes and not self._stopping:
                    self._idle += 1
                    woken = cond.wait(IDLE_RETIRE)
                    self._idle -= 1
                    if not woken and not self._lanes:
                        self._workers.discard(worker)  # retire
                        return
                if self._stopping:
                    self._workers.discard(worker)
                    return
                run, sink = self._lanes.pop()
                self._running += 1
                worker.run, worker.sink, worker.timed_out = run, sink, False
                worker.index, worker.ticket = 0, None
            try:
                alive = self._call_run(worker, run, sink)
            except BaseException as error:  # a bug around the call, not the transport's
                logger.error(
                    "a call thread of transport %r failed outside the transport",
                    self.name,
                    exc_info=error,
                )
                alive = not worker.abandoned
                if alive and not worker.timed_out:
                    self.lost(run, worker.index, sink, error, worker.ticket)
            if not alive:
                return  # abandoned: the slot is someone else's now
            with cond:
                worker.run = None
                self._running -= 1
                if self._lanes and not self._idle:
                    self._spawn(self._wanted())
            if self.wedged:
                self._wake_watcher.set()  # a slot is free again: the watcher says so now

    def _call_run(self, worker: _Worker, run: Run, sink: Sink) -> bool:
        """Call `run`'s messages in order until one is not delivered; False if this
        thread was abandoned meanwhile (it must end)."""
        lock = self._lock  # the condition's own lock: entered in C, no Python frame
        for index, call in enumerate(run):
            worker.index, worker.ticket = index, None
            if index and self._stopping:  # halted: the rest of the run is not started
                self.skip(run, index, sink)
                return True
            held, ticket, span = self.begin(call)
            if held is not None:
                sink(held)
                self.skip(run, index + 1, sink)
                return True
            timeout = self.timeout_of(call.envelope)
            with lock:
                worker.ticket, worker.span = ticket, span
                worker.started = time.monotonic()
                worker.deadline = worker.started + timeout
            if timeout < self.ack_timeout:  # (a type's shorter timeout: the watcher
                self._wake_watcher.set()  # sleeps up to the engine's, so it looks again)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                with calling(span):
                    returned = self.transport(call.envelope)
                if inspect.isawaitable(returned):
                    if inspect.iscoroutine(returned):
                        returned.close()  # never run: say so instead of warning later
                    error = not_awaited(self.name)
            except BaseException as raised:  # every outcome is reported
                error = raised
            took = time.perf_counter() - started
            with lock:
                if worker.abandoned:
                    self._abandoned -= 1
                    return False
                worker.started = worker.deadline = math.inf
                self._recent.append(took)
                if worker.timed_out:  # reported by the watcher, with the rest skipped
                    return True
            attempt = self.end(call, ticket, span, started, error)
            sink(attempt)
            if attempt.kind != OK:
                self.skip(run, index + 1, sink)
                return True
        return True

    # -- deadlines -----------------------------------------------------------------------

    def _grow_if_slow(self, now: float) -> float:
        """(lock held) Add threads if calls wait and a running one has taken
        `STUCK_CALL`; when to look again (inf: nothing waits)."""
        if self._idle >= len(self._lanes) or len(self._workers) >= self.limit:
            return math.inf
        oldest = min((w.started for w in self._workers), default=math.inf)
        wanted = self._wanted(slow=now - oldest >= STUCK_CALL)
        if wanted:
            self._spawn(wanted)
            return math.inf
        return min(oldest + STUCK_CALL, now + STUCK_CALL)

    def _watch(self) -> None:
        """Time out calls past their deadline; sleep until the earliest one. A call that
        starts later has a later deadline, unless its type has a shorter ack timeout
        (then it wakes this watch), so sleeping until the earliest running call's
        deadline, or one ack timeout, misses none. While
        calls wait for a thread, also grow the pool once a running call proves slow (a
        call that hangs never returns to say so itself)."""
        while not self._closed:
            self._wake_watcher.clear()
            expired: list[tuple[Run, int, Sink, float | None, Span | None, float]] = []
            now = time.monotonic()
            earliest = now + self.ack_timeout
            with self._cond:
                earliest = min(earliest, self._grow_if_slow(now))
                for worker in list(self._workers):
                    if worker.run is None or worker.timed_out:
                        continue
                    deadline = worker.deadline
                    if deadline > now:
                        earliest = min(earliest, deadline)
                        continue
                    assert worker.sink is not None
                    worker.timed_out = True
                    expired.append(
                        (
                            worker.run,
                            worker.index,
                            worker.sink,
                            worker.ticket,
                            worker.span,
                            worker.started,
                        )
                    )
                    if self._abandoned < self.limit:
                        worker.abandoned = True
                        self._abandoned += 1
                        self._workers.discard(worker)
                        self._running -= 1
                        self._spawn(self._wanted())
                wedged = self._held_past_deadline() >= self.limit
                waiting = bool(self._lanes)
            self._set_wedged(wedged)  # before the reports: whoever sees them sees it
            for run, index, sink, ticket, span, started in expired:
                self._timed_out(run, index, sink=sink, ticket=ticket, span=span, started=started)
            if wedged and waiting and self.message_ttl is not None:
                self.expire_waiting()
                earliest = min(earliest, time.monotonic() + WEDGED_POLL)
            self._wake_watcher.wait(max(0.001, earliest - time.monotonic()))

    def _timed_out(
        self,
        run: Run,
        index: int,
        *,
        sink: Sink,
        ticket: float | None,
        span: Span | None,
        started: float,
    ) -> None:
        """Report a call past its deadline TIMEOUT and the rest of its run SKIPPED (a
        failure to report is logged: the watcher must live on)."""
        call = run[index]
        logger.warning(
            "transport %r did not answer for message %s within ack_timeout=%ss; "
            "the call is abandoned and the message retried",
            self.name,
            call.envelope.message_id,
            self.timeout_of(call.envelope),
        )
        try:
            perf_started = time.perf_counter() - (time.monotonic() - started)
            sink(self.end(call, ticket, span, perf_started, None, timed_out=True))
            self.skip(run, index + 1, sink)
        except BaseException as error:
            self.lost(run, index, sink, error, None)
