"""`Engine`: runs one transport's calls, up to its concurrency at once.

An actor (a Sender, a ReplayWorker) `submit`s runs of messages (one key's, in order)
with a `Sink` and goes on with its mailbox; the engine starts each run when a slot is
free (HIGH : NORMAL : LOW = 6 : 3 : 1 among those waiting), calls its messages one after
another, and leaves an `Attempt` in the sink as each call ends; the first message not
delivered ends the run (the rest come back SKIPPED). The actor decides order (it submits
at most one run per key at a time); the engine only runs calls. Two kinds share what is
done around a call (`begin`, `end`): the breaker check, the `surelay.deliver` span, the
duration metric, one classification of a failure, and the breaker's record of it:

- `ThreadEngine` (`surelay.delivery.threads`) for plain callables;
- `LoopEngine` (`surelay.delivery.event_loop`) for coroutine transports.

A transport is *wedged* when every one of its slots is held by a call past its ack
timeout that has not ended (a plain callable that never returns, once `limit` threads are
abandoned already; a coroutine that ignores its cancellation). Nothing else of it is
called until one ends, so it is made visible and bounded: `health()` is not ok, a warning
is logged once per episode, and runs waiting for a slot whose first message is past
`message_ttl` are handed back (SKIPPED) every `WEDGED_POLL` seconds, so that their sender
dead-letters them `expired` instead of leaving them waiting.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from surelay.delivery.attempt import (
    CRASH,
    FAILED,
    HELD,
    LOST,
    OK,
    SKIPPED,
    THROTTLED,
    TIMEOUT,
    Attempt,
    Call,
    Kind,
    Run,
    Sink,
)
from surelay.delivery.breakers import Breakers
from surelay.delivery.lanes import Lanes
from surelay.delivery.limiter import Limiter
from surelay.delivery.spec import TransportSpec
from surelay.envelope import Envelope
from surelay.errors import PermanentError
from surelay.policy.expiry import past_ttl
from surelay.policy.verdict import Failure, classify
from surelay.telemetry import (
    ATTR_OUTCOME,
    ATTR_TRANSPORT,
    SPAN_DELIVER,
    Telemetry,
    message_span,
    record_error,
)

__all__ = ["WEDGED_POLL", "Engine", "not_awaited"]

logger = logging.getLogger("surelay.delivery")

WEDGED_POLL = 0.25
"""Seconds between looks, while a transport is wedged, for waiting runs past their ttl."""


def not_awaited(transport: str) -> BaseException:
    """What a plain callable that returned an awaitable fails with: nothing was sent, and
    sending again the same way never will be."""
    return PermanentError(
        f"transport {transport!r} returned an awaitable instead of delivering: make it an "
        "`async def` function (or give its class an `async def __call__`) so the runtime "
        "awaits it"
    )


def calling(span: Span | None) -> contextlib.AbstractContextManager[object]:
    """Make an attempt's `surelay.deliver` span current during its call, so what the
    transport sends (the HTTP transports' `traceparent`) and traces continues that
    attempt's trace. Its error is recorded once, by `Engine.end`."""
    if span is None:
        return contextlib.nullcontext()
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


class Engine:
    """The part common to both engines; see the module docstring."""

    kind = "engine"

    def __init__(
        self,
        spec: TransportSpec,
        *,
        breakers: Breakers,
        telemetry: Telemetry,
        clock: Callable[[], float],
        message_ttl: float | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.transport = spec.call
        self.limit = spec.concurrency
        self.ack_timeout = spec.ack_timeout
        self._per_type = spec.ack_timeout_per_type
        self._limiter = limiter
        self.message_ttl = message_ttl
        self.wedged = False
        """Every slot is held by a call past its ack timeout (see the module docstring);
        set by the engine's own watch, so it changes once per episode."""
        self._breakers = breakers
        self._telemetry = telemetry
        self._clock = clock
        self._lock = threading.Lock()
        self._lanes = Lanes()
        self._running = 0
        self._stopping = False
        self._tracing = False
        self._duration_attrs: Mapping[str, Any] = {ATTR_TRANSPORT: spec.name}

    # -- what actors see -----------------------------------------------------------------

    def submit(self, items: Iterable[tuple[Run, Sink]], *, expiring: bool = True) -> None:
        """Queue runs; each message ends as one `Attempt` in its run's sink. Never blocks
        on a call. After `stop` nothing new starts (the messages stay in the outbox).
        `expiring`: while the transport is wedged, a run whose first message is past
        `message_ttl` comes back SKIPPED (False for runs that no ttl applies to)."""
        self._tracing = self._telemetry.tracing  # once per submit, not per call
        with self._lock:
            if self._stopping:
                return
            added = self._lanes.extend(items, expiring=expiring)
            if added:
                self._queued(added)

    @property
    def in_flight(self) -> int:
        """Calls running now (slots taken)."""
        return self._running

    @property
    def waiting(self) -> int:
        """Runs submitted that wait for a free slot."""
        return len(self._lanes)

    def halt(self) -> None:
        """Start no more calls, not even the rest of a run under way (reported SKIPPED);
        calls running now end on their own and are reported as usual."""
        with self._lock:
            self._stopping = True

    def stop(self, timeout: float) -> None:
        """`halt`, and let go of what the engine holds (threads, its loop's calls)."""
        self.halt()

    @property
    def abandoned(self) -> int:
        """Calls given up at their ack timeout that are still running (their results
        will be ignored)."""
        return 0

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": not self.wedged,
            "kind": self.kind,
            "in_flight": self._running,
            "limit": self.limit,
            "abandoned": self.abandoned,
            "wedged": self.wedged,
        }
        if self.wedged:
            out["problem"] = (
                f"all {self.limit} call slots of transport {self.name!r} are held by calls "
                f"past ack_timeout={self.ack_timeout}s that have not returned"
            )
        return out

    def running_ids(self) -> list[str]:
        """The message ids of the calls running now."""
        return []

    # -- a wedged transport ----------------------------------------------------------------

    def _set_wedged(self, wedged: bool) -> None:
        """Record a change of the wedged state, and say so once per change."""
        if wedged == self.wedged:
            return
        self.wedged = wedged
        if wedged:
            meanwhile = (
                "without a message_ttl they wait"
                if self.message_ttl is None
                else f"those past message_ttl={self.message_ttl:g}s are dead-lettered expired"
            )
            logger.warning(
                "transport %r is wedged: all %d of its call slots are held by calls past "
                "ack_timeout=%ss that have not returned, so none of its messages is called "
                "until one returns (%s); rt.health() reports it",
                self.name,
                self.limit,
                self.ack_timeout,
                meanwhile,
            )
        else:
            logger.info("transport %r is no longer wedged: a hung call ended", self.name)

    def expire_waiting(self) -> int:
        """Hand back (SKIPPED) the waiting runs whose first message is past
        `message_ttl`, for their sender to dead-letter; how many runs."""
        ttl = self.message_ttl
        if ttl is None:
            return 0
        now = self._clock()
        with self._lock:
            taken = self._lanes.take(lambda run: past_ttl(run[0].envelope.created_at, now, ttl))
        for run, sink in taken:
            try:
                self.skip(run, 0, sink)
            except BaseException:  # the watch must live on
                logger.exception("could not hand back an expired run of %r", self.name)
        return len(taken)

    # -- for the subclasses --------------------------------------------------------------

    def _queued(self, added: int) -> None:
        """`added` items were queued (called with the lock held): start what may start."""
        raise NotImplementedError

    @staticmethod
    def skip(run: Run, start: int, sink: Sink) -> None:
        """Report the messages of `run` from `start` on as not called."""
        for call in run[start:]:
            sink(Attempt(call, SKIPPED))

    def lost(
        self, run: Run, index: int, sink: Sink, error: BaseException, ticket: float | None
    ) -> None:
        """The call of `run[index]` has no result (its thread failed around it, or the
        event loop died under it): report it LOST (retried as a crash) and the rest of
        the run SKIPPED, so nothing stays in flight for ever; a probe reports back to
        the breaker as a failure."""
        if ticket is not None:
            self._breakers.record(self.name, self._clock(), failed=True, ticket=ticket)
        try:
            sink(Attempt(run[index], LOST, error))
            self.skip(run, index + 1, sink)
        except BaseException:
            logger.exception("could not report a lost call; the outbox keeps its message")

    def timeout_of(self, envelope: Envelope) -> float:
        """The ack timeout of a call of `envelope`: its type's, else the transport's."""
        kind = envelope.type
        if kind is None or not self._per_type:
            return self.ack_timeout
        return self._per_type.get(kind, self.ack_timeout)

    def begin(self, call: Call) -> tuple[Attempt | None, float | None, Span | None]:
        """Before a call: a HELD attempt if its rate or the breaker refuses it (no call
        then: its turn comes after `wait`), else the breaker's ticket and the
        `surelay.deliver` span (None without tracing)."""
        limiter = self._limiter
        if limiter is not None and limiter.limits(self.name):
            wait, reserved = limiter.ask(call.envelope)
            if wait:
                return Attempt(call, HELD if reserved else THROTTLED, wait=wait), None, None
        wait, ticket = self._breakers.allow(self.name, self._clock())
        if wait:
            return Attempt(call, HELD, wait=wait), None, None
        if not self._tracing:
            return None, ticket, None
        envelope = call.envelope
        span = message_span(
            self._telemetry.tracer,
            SPAN_DELIVER,
            envelope.message_id,
            self.name,
            envelope.key,
            envelope.attempt,
            parent=envelope.headers,
        )
        return None, ticket, span

    def end(
        self,
        call: Call,
        ticket: float | None,
        span: Span | None,
        started: float,
        error: BaseException | None,
        *,
        timed_out: bool = False,
    ) -> Attempt:
        """After a call (`started` from `time.perf_counter()`): the attempt, with the
        failure classified once, recorded in the breaker, the metric and the span."""
        self._telemetry.duration.record(time.perf_counter() - started, self._duration_attrs)
        failure: Failure | None = None
        kind: Kind
        if timed_out:
            kind, failure = TIMEOUT, "transient"
            error = TimeoutError(
                f"transport {self.name!r} did not answer within ack_timeout={self.ack_timeout}s"
            )
        elif error is None:
            kind = OK
        elif isinstance(error, Exception):
            kind, failure = FAILED, classify(error, self.spec.classify)
        else:
            kind = CRASH
        # a crash is no verdict on the downstream, but a probe must still report back
        if kind != CRASH or ticket is not None:
            failed = failure == "transient" or kind == CRASH
            self._breakers.record(self.name, self._clock(), failed=failed, ticket=ticket)
        if span is not None:
            span.set_attribute(ATTR_OUTCOME, "delivered" if kind == OK else failure or kind)
            if error is not None:
                record_error(span, error)
            span.end()
        return Attempt(call, kind, error, failure)
