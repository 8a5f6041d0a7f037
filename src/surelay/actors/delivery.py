"""One transport attempt: the breaker check, the call under a deadline, the verdict.

A sender hands a batch of ready messages to its `Caller`, a thread that calls the
transport for each in turn while the sender watches the clock. A call that outlives its
transport's `ack_timeout` is cut off: the sender stops waiting, records a timeout for
that message (retried like any transient failure), takes back the messages not yet
tried, and gets a fresh thread; the hung one is abandoned and whatever it returns later
is ignored. One thread hand-off per batch keeps this cheap on the hot path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surelay.actors.queues import line_of
from surelay.errors import InvalidMessage, PermanentError, TransientError
from surelay.storage.records import OutboxEntry
from surelay.supervision import Actor
from surelay.telemetry import (
    ATTR_ATTEMPT,
    ATTR_KEY,
    ATTR_MESSAGE_ID,
    ATTR_OUTCOME,
    ATTR_TRANSPORT,
    SPAN_DELIVER,
    context_from,
    record_error,
)

if TYPE_CHECKING:
    from surelay.actors.hub import Hub

__all__ = ["VERDICTS", "Attempt", "Caller", "CallerOwner", "classify"]

logger = logging.getLogger("surelay.actors")

VERDICTS = ("transient", "permanent", "invalid")


def classify(error: BaseException, transport: object) -> str:
    """`transient`, `permanent` or `invalid` for an exception a transport raised.

    surelay's own exceptions say what they are (`InvalidMessage`: the transport rejected
    the envelope as malformed). Anything else goes to the transport's `classify(exc)`
    if it has one, and is otherwise transient, since an unknown failure is retried.
    """
    if isinstance(error, InvalidMessage):
        return "invalid"
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, TransientError):
        return "transient"
    classifier = getattr(transport, "classify", None)
    if callable(classifier):
        try:
            verdict = classifier(error)
        except Exception:
            logger.exception("classify() of transport %r failed; treating as transient", transport)
            return "transient"
        if verdict in VERDICTS:
            return str(verdict)
        logger.warning(
            "classify() returned %r, not one of %s; treating as transient", verdict, VERDICTS
        )
    return "transient"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What happened to one message of a batch.

    `kind`: `ok` (delivered), `failed` (raised `error`), `held` (its breaker is open:
    no call made, retry in `wait` seconds), `timeout` (cut off after the ack timeout),
    `crash` (raised a BaseException that is not an Exception: the sender crashes),
    `skipped` (not called: an earlier message of its key in the batch was not delivered,
    and a key's messages go in order).
    """

    entry: OutboxEntry
    kind: str
    error: BaseException | None = None
    wait: float = 0.0


class _Job:
    __slots__ = ("abandoned", "batch", "done", "index", "lock", "results", "started")

    def __init__(self, batch: list[OutboxEntry]) -> None:
        self.batch = batch
        self.results: list[Attempt] = []
        self.index = 0
        self.started = time.monotonic()
        self.done = threading.Event()
        self.abandoned = False
        self.lock = threading.Lock()


class Caller:
    """The thread that makes one sender's transport calls (see the module docstring)."""

    def __init__(self, hub: Hub, name: str) -> None:
        self._hub = hub
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = self._spawn()

    def _spawn(self) -> threading.Thread:
        jobs = self._jobs
        thread = threading.Thread(target=self._work, args=(jobs,), name=self._name, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._jobs.put(None)

    def run(self, batch: list[OutboxEntry]) -> tuple[list[Attempt], list[OutboxEntry]]:
        """Attempt each message of `batch` in order, except those behind a message of
        their key that was not delivered (`skipped`); returns the attempts, in order, and
        the messages not reached (after a timeout or a crash)."""
        if not batch:
            return [], []
        job = _Job(batch)
        self._jobs.put(job)
        ack_timeout = self._hub.ack_timeout
        while True:
            current = batch[min(job.index, len(batch) - 1)]
            remaining = job.started + ack_timeout(current.envelope.transport) - time.monotonic()
            if job.done.wait(max(remaining, 0.0) + 0.001):
                break
            with job.lock:
                if job.done.is_set():
                    break
                i = len(job.results)
                overdue = job.index == i and time.monotonic() - job.started >= ack_timeout(
                    batch[i].envelope.transport
                )
                if overdue:
                    job.abandoned = True
                    hung = batch[i]
                    logger.warning(
                        "transport %r did not answer for message %s within its ack timeout; "
                        "abandoning the call",
                        hung.envelope.transport,
                        hung.envelope.message_id,
                    )
                    self._jobs = queue.SimpleQueue()
                    self._thread = self._spawn()
                    return [*job.results, Attempt(hung, "timeout")], batch[i + 1 :]
        made = job.results
        return made, batch[len(made) :]

    def _work(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            tracing = self._hub.telemetry.tracing
            stopped: set[str] = set()  # lines with a message not delivered in this batch
            for i, entry in enumerate(job.batch):
                with job.lock:
                    if job.abandoned:
                        return
                    job.index = i
                    job.started = time.monotonic()
                line = line_of(entry)
                if line in stopped:
                    attempt = Attempt(entry, "skipped")
                else:
                    attempt = self._attempt(entry, tracing)
                    if attempt.kind != "ok":
                        stopped.add(line)
                with job.lock:
                    if job.abandoned:
                        return  # cut off: the sender has moved on without this result
                    job.results.append(attempt)
                if attempt.kind == "crash":
                    break
            job.done.set()

    def _attempt(self, entry: OutboxEntry, tracing: bool) -> Attempt:
        hub = self._hub
        envelope = entry.envelope
        transport_name = envelope.transport
        wait = hub.breakers.allow(transport_name, hub.config.clock())
        if wait:
            return Attempt(entry, "held", wait=wait)
        transport = hub.transports[transport_name]
        span = None
        if tracing:
            span = hub.telemetry.tracer.start_span(
                SPAN_DELIVER,
                context=context_from(envelope.headers),
                attributes=_attributes(
                    envelope.message_id, transport_name, envelope.key, envelope.attempt
                ),
            )
        started = time.perf_counter()
        try:
            transport(envelope)
        except Exception as error:
            hub.telemetry.duration.record(
                time.perf_counter() - started, _transport_attr(transport_name)
            )
            verdict = classify(error, transport)
            hub.breakers.record(transport_name, hub.config.clock(), failed=verdict == "transient")
            if span is not None:
                span.set_attribute(ATTR_OUTCOME, verdict)
                record_error(span, error)
                span.end()
            return Attempt(entry, "failed", error)
        except BaseException as error:  # not a delivery failure: it crashes the sender
            if span is not None:
                span.set_attribute(ATTR_OUTCOME, "crash")
                record_error(span, error)
                span.end()
            return Attempt(entry, "crash", error)
        hub.telemetry.duration.record(
            time.perf_counter() - started, _transport_attr(transport_name)
        )
        hub.breakers.record(transport_name, hub.config.clock(), failed=False)
        if span is not None:
            span.set_attribute(ATTR_OUTCOME, "delivered")
            span.end()
        return Attempt(entry, "ok")


class CallerOwner(Actor):
    """An actor with one `Caller` thread per incarnation, made in `on_start` and stopped
    when the incarnation stops or crashes (a hung call's thread is abandoned, not joined)."""

    _caller: Caller | None = None
    _caller_name = "surelay-caller"

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def on_start(self) -> None:
        self._caller = Caller(self._hub, self._caller_name)

    def on_stop(self) -> None:
        self._stop_caller()

    def on_failure(self, *_exc_info: Any) -> None:
        self._stop_caller()

    def _stop_caller(self) -> None:
        if self._caller is not None:
            self._caller.stop()
            self._caller = None


_ATTRS: dict[str, Mapping[str, Any]] = {}


def _transport_attr(name: str) -> Mapping[str, Any]:
    attrs = _ATTRS.get(name)
    if attrs is None:
        attrs = _ATTRS[name] = {ATTR_TRANSPORT: name}
    return attrs


def _attributes(message_id: str, transport: str, key: str | None, attempt: int) -> dict[str, Any]:
    return {
        ATTR_MESSAGE_ID: message_id,
        ATTR_TRANSPORT: transport,
        ATTR_KEY: key if key is not None else "",
        ATTR_ATTEMPT: attempt,
    }
