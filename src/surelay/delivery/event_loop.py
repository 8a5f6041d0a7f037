"""Coroutine transports: one asyncio event loop thread the runtime owns, and the
`LoopEngine` that runs a transport's calls on it.

`EventLoop` runs the loop in a daemon thread and supervises it: if the loop stops
without being asked (a callback raised `SystemExit` or `KeyboardInterrupt`, a transport
stopped it), every call it was running is reported LOST (retried as a crash: attempt
counted, dead-lettered `crash` the second time), the old loop's tasks are cancelled and
its transports' `aclose` awaited there (their clients belong to it), and a new loop
takes over; the restarts are counted in `rt.health()`.

`LoopEngine` keeps up to `limit` runs of its transport going as tasks. A call past its
ack timeout is cancelled (its coroutine sees `CancelledError`) and the message retried;
one timer per engine, at the oldest call's deadline, watches them all (a timer per call
cost a third of the loop's time at 1000 calls in flight). A transport raising a `BaseException` that
is not an `Exception` is reported CRASH, as a thread would; the loop runs on. A call
that ignores its cancellation keeps its slot until it ends; once every slot is held so,
the transport is wedged (see `surelay.delivery.engine`), looked at every `WEDGED_POLL`
seconds until it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from surelay.delivery.attempt import OK, Attempt, Call, Run, Sink
from surelay.delivery.engine import WEDGED_POLL, Engine, calling
from surelay.delivery.spec import is_coroutine_transport

__all__ = ["EventLoop", "LoopEngine", "is_coroutine_transport"]

logger = logging.getLogger("surelay.delivery")

_CLEANUP = 1.0
"""Seconds a dead or stopping loop gets to let its cancelled tasks end."""


class EventLoop:
    """The runtime's event loop thread (see the module docstring)."""

    def __init__(self, name: str = "surelay-event-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[Callable[[], Any]] = []
        self._engines: list[LoopEngine] = []
        self._closers: list[Callable[[], Any]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.last_crash: str | None = None
        self.blamed_at = -math.inf
        """`time.perf_counter()` when a call was last found to have blocked the loop."""

    def attach(self, engine: LoopEngine) -> None:
        self._engines.append(engine)

    def on_close(self, closer: Callable[[], Any]) -> None:
        """Await `closer()` on the loop when it stops (a transport's `aclose`)."""
        self._closers.append(closer)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the loop (thread-safe); kept for the next loop while the
        loop is being replaced."""
        with self._lock:
            loop = self._loop
            if loop is None:
                self._waiting.append(callback)
                return
            loop.call_soon_threadsafe(callback)

    def stop(self, timeout: float) -> None:
        """Stop the loop: running calls are cancelled (their messages stay in the outbox)
        and transports' `aclose` awaited, within about `timeout` seconds."""
        with self._lock:
            self._stopping = True
            loop = self._loop
            if loop is not None:
                loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def is_current(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether `loop` is the one running now (not a dead one being cleaned up)."""
        with self._lock:
            return loop is self._loop

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        return {
            "ok": self.alive or self._stopping,
            "restarts": self.restarts,
            "last_crash": self.last_crash,
        }

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            loop = asyncio.new_event_loop()
            with self._lock:
                self._loop = loop
                waiting, self._waiting = self._waiting, []
                stopping = self._stopping
            for callback in waiting:
                loop.call_soon(callback)
            crash: BaseException | None = None
            if not stopping:
                try:
                    loop.run_forever()
                except BaseException as error:  # the loop died: recover
                    crash = error
            with self._lock:
                self._loop = None
                stopping = self._stopping
            if stopping:
                self._close(loop)
                return
            try:
                self._recover(loop, crash)
            except BaseException:  # the thread must live on: a new loop comes next
                logger.exception("recovering from a dead event loop failed")

    def _recover(self, loop: asyncio.AbstractEventLoop, crash: BaseException | None) -> None:
        self.restarts += 1
        error = crash if crash is not None else RuntimeError("the event loop stopped by itself")
        self.last_crash = f"{type(error).__name__}: {error}"
        logger.error(
            "the event loop of coroutine transports died (%s); its calls are retried and a "
            "new loop takes over (restart %d)",
            self.last_crash,
            self.restarts,
        )
        for engine in self._engines:
            engine.loop_died(error)
        self._close(loop)  # a transport's client made on the dead loop dies with it
        for engine in self._engines:
            self.call_soon(engine.pump)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel what is left on a loop that no longer runs, await the transports'
        `aclose` there (bounded), and close it."""
        _finish(loop)
        for closer in self._closers:
            try:
                loop.run_until_complete(asyncio.wait_for(closer(), _CLEANUP))
            except BaseException:  # closing is best effort
                logger.warning("closing a coroutine transport failed", exc_info=True)
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left on a loop that no longer runs and let them end (bounded)."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    try:
        loop.run_until_complete(asyncio.wait(tasks, timeout=_CLEANUP))
    except BaseException:  # a task that will not end is left behind
        logger.warning("tasks of a stopped event loop did not end", exc_info=True)


class LoopEngine(Engine):
    kind = "event_loop"

    def __init__(self, *args: Any, loop: EventLoop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop = loop
        self._scheduled = False
        self._tasks: dict[asyncio.Task[None], _Running] = {}
        self._calls: OrderedDict[int, _Running] = OrderedDict()
        """Calls in progress, oldest first, for their ack timeouts (the loop's thread)."""
        self._serials = itertools.count(1)
        self._sweeper: asyncio.TimerHandle | None = None
        self._wedge_watch: asyncio.TimerHandle | None = None
        self._warned_blocking = False
        loop.attach(self)

    def _queued(self, added: int) -> None:
        if not self._scheduled and self._running < self.limit:
            self._scheduled = True
            self._loop.call_soon(self.pump)

    def pump(self) -> None:
        """On the loop: start runs while slots are free. On a dead loop being cleaned
        up it only hands itself on to the next one."""
        loop = asyncio.get_running_loop()
        if not self._loop.is_current(loop):
            self._loop.call_soon(self.pump)
            return
        with self._lock:
            self._scheduled = False
            if self._stopping:
                return
            while self._lanes and self._running < self.limit:
                run, sink = self._lanes.pop()
                self._running += 1
                running = _Running(run, sink)
                self._tasks[loop.create_task(self._call_run(running))] = running

    def loop_died(self, error: BaseException) -> None:
        """The loop died: report every running call LOST (the rest of its run SKIPPED)
        and free its slot."""
        with self._lock:
            tasks, self._tasks = self._tasks, {}
            self._running -= len(tasks)
            self._scheduled = False
        self._calls.clear()
        self._sweeper = None  # a timer of the dead loop
        self._wedge_watch = None
        self._set_wedged(False)
        for running in tasks.values():
            self.lost(running.run, running.index, running.sink, error, running.ticket)

    async def _call_run(self, running: _Running) -> None:
        task = asyncio.current_task()
        assert task is not None
        run, sink = running.run, running.sink
        try:
            for index, call in enumerate(run):
                running.index, running.ticket = index, None
                if index and self._stopping:  # halted: the rest of the run is not started
                    self.skip(run, index, sink)
                    break
                attempt = await self._call(task, call, running)
                if task not in self._tasks:
                    return  # reported LOST already
                sink(attempt)
                if attempt.kind != OK:
                    self.skip(run, index + 1, sink)
                    break
        except asyncio.CancelledError:
            if task.cancelling():
                raise  # the loop is stopping or was replaced
            self._failed_around(task, running, RuntimeError("a call was cancelled"))
        except BaseException as error:  # a bug around the call, not the transport's
            self._failed_around(task, running, error)
        self._free(task)

    def _failed_around(
        self, task: asyncio.Task[None], running: _Running, error: BaseException
    ) -> None:
        logger.error(
            "a run of transport %r failed outside the transport", self.name, exc_info=error
        )
        if task in self._tasks:
            self.lost(running.run, running.index, running.sink, error, running.ticket)

    def _free(self, task: asyncio.Task[None]) -> None:
        """The run of `task` ended: free its slot and start what waits."""
        with self._lock:
            if self._tasks.pop(task, None) is None:
                return
            self._running -= 1
            more = bool(self._lanes) and not self._scheduled and not self._stopping
            if more:
                self._scheduled = True
        if self.wedged:
            self._set_wedged(False)  # a slot is free again
        if more:
            asyncio.get_running_loop().call_soon(self.pump)

    async def _call(self, task: asyncio.Task[None], call: Call, running: _Running) -> Attempt:
        held, ticket, span = self.begin(call)
        if held is not None:
            return held
        running.ticket = ticket
        started = time.perf_counter()
        error: BaseException | None = None
        expired = False  # the deadline's cancel came out of the transport
        timeout = self.timeout_of(call.envelope)
        self._track(running, task, timeout)
        try:
            with calling(span):
                await self.transport(call.envelope)
        except asyncio.CancelledError as cancelled:
            if running.timed_out:
                expired = True
            elif task.cancelling():
                raise  # the loop is stopping or was replaced: not this call's outcome
            else:
                error = cancelled  # the transport's own doing: a failure like another
        except BaseException as raised:  # every outcome is reported
            error = raised
        finally:
            self._calls.pop(running.serial, None)
            if running.timed_out:
                task.uncancel()  # the deadline's cancel, answered here
        if not running.timed_out and time.perf_counter() - started > timeout:
            self._outlived_deadline(started)
        # a transport that swallowed the cancel and returned has delivered after all
        return self.end(call, ticket, span, started, error, timed_out=expired)

    def _outlived_deadline(self, started: float) -> None:
        """A call outlived its ack timeout without being cancelled: the deadline could
        not fire, so the loop was blocked meanwhile. The call that blocked it ends in the
        very step that blocked (its coroutine returned without yielding); calls it held
        up end later, after that blame, and are not blamed. The result counts: the
        downstream has the message, so retrying it would send it twice."""
        loop = self._loop
        if loop.blamed_at > started:
            return  # held up by a call blamed already
        loop.blamed_at = time.perf_counter()
        if not self._warned_blocking:
            self._warned_blocking = True
            logger.warning(
                "coroutine transport %r blocks the event loop: a call ran %.3gs, past its "
                "ack_timeout=%ss, without yielding, so it could not be cut off (and every "
                "coroutine transport waited meanwhile); its result counts. Use non-blocking "
                "I/O in it, or make it a plain (non-async) callable to run on threads. "
                "Said once per transport.",
                self.name,
                loop.blamed_at - started,
                self.ack_timeout,
            )

    def _track(self, running: _Running, task: asyncio.Task[None], timeout: float) -> None:
        """Register the call `running` starts now for its ack timeout: one timer per
        engine, at the deadline of the oldest call, rather than one per call."""
        loop = asyncio.get_running_loop()
        running.serial = next(self._serials)
        running.deadline = loop.time() + timeout
        running.task = task
        running.timed_out = False
        self._calls[running.serial] = running
        sweeper = self._sweeper
        if sweeper is None or running.deadline < sweeper.when():  # (a type's shorter one)
            if sweeper is not None:
                sweeper.cancel()
            self._sweeper = loop.call_at(running.deadline, self._sweep)

    def _sweep(self) -> None:
        """Cancel the calls past their deadline (their coroutines see CancelledError);
        look again at the next deadline. Without per-type ack timeouts calls start in
        deadline order, so the oldest calls are the first to come due."""
        loop = asyncio.get_running_loop()
        self._sweeper = None
        calls = self._calls
        now = loop.time()
        if self._per_type:  # deadlines out of start order: look at every call
            expired = [serial for serial, running in calls.items() if running.deadline <= now]
        else:
            expired = list(itertools.takewhile(lambda s: calls[s].deadline <= now, calls))
        for serial in expired:
            running = calls.pop(serial)
            running.timed_out = True
            assert running.task is not None
            running.task.cancel()
            if self._wedge_watch is None:  # a call that ignores the cancel keeps its slot
                self._wedge_watch = loop.call_later(WEDGED_POLL, self._watch_wedge)
        if calls:
            following = min(r.deadline for r in calls.values()) if self._per_type else None
            if following is None:
                following = next(iter(calls.values())).deadline
            self._sweeper = loop.call_at(following, self._sweep)

    def _watch_wedge(self) -> None:
        """A while after a cancel: is every slot still held by a cancelled call? While
        so, hand back the waiting runs past their ttl, and look again."""
        self._wedge_watch = None
        with self._lock:
            held = sum(1 for running in self._tasks.values() if running.timed_out)
        wedged = held >= self.limit
        self._set_wedged(wedged)
        if wedged:
            self.expire_waiting()
        if held:
            loop = asyncio.get_running_loop()
            self._wedge_watch = loop.call_later(WEDGED_POLL, self._watch_wedge)

    @property
    def abandoned(self) -> int:
        with self._lock:
            return sum(1 for running in self._tasks.values() if running.timed_out)

    def running_ids(self) -> list[str]:
        with self._lock:
            runs = list(self._tasks.values())
        return [running.run[running.index].envelope.message_id for running in runs]

    def health(self) -> dict[str, Any]:
        out = super().health()
        loop = self._loop.health()
        out.update(loop, ok=out["ok"] and loop["ok"])
        return out


class _Running:
    """A run on the loop, the message of it being called, and that call's breaker
    ticket, deadline and whether the deadline cancelled it."""

    __slots__ = ("deadline", "index", "run", "serial", "sink", "task", "ticket", "timed_out")

    def __init__(self, run: Run, sink: Sink) -> None:
        self.run = run
        self.sink = sink
        self.index = 0
        self.ticket: float | None = None
        self.serial = 0
        self.deadline = 0.0
        self.task: asyncio.Task[None] | None = None
        self.timed_out = False
