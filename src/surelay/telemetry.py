"""Telemetry names (a public contract: dashboards are built on them; the README lists
them) and the few helpers that use them.

Library code imports `opentelemetry-api` only; the host installs the SDK. With no tracer
provider installed, `Telemetry.tracing` is False and the runtime skips span work
altogether, so an uninstrumented host pays one attribute read per batch.

A message's trace context travels in its envelope's W3C `traceparent` header, set from
the `surelay.send` span; delivery attempts, retries and dead-lettering are its children.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    ProxyTracerProvider,
    Span,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_DEAD_LETTER_ID",
    "ATTR_KEY",
    "ATTR_MESSAGE_ID",
    "ATTR_OUTCOME",
    "ATTR_PRESSURE_LEVEL",
    "ATTR_PRIORITY",
    "ATTR_REASON",
    "ATTR_REASON_CLASS",
    "ATTR_SOURCE_MESSAGE_ID",
    "ATTR_TRANSPORT",
    "NAME",
    "SPAN_DEAD_LETTER",
    "SPAN_DELIVER",
    "SPAN_PRESSURE",
    "SPAN_RECEIVE",
    "SPAN_REPLAY",
    "SPAN_RETRY",
    "SPAN_SEND",
    "TRACEPARENT",
    "Telemetry",
    "context_from",
    "links_from",
    "message_attributes",
    "message_span",
    "record_error",
    "trace_id_of",
    "traceparent_of",
]

NAME = "surelay"
"""Tracer and meter name."""

SPAN_SEND = "surelay.send"
SPAN_DELIVER = "surelay.deliver"
SPAN_RETRY = "surelay.retry"
SPAN_DEAD_LETTER = "surelay.dead_letter"
SPAN_REPLAY = "surelay.replay"
SPAN_PRESSURE = "surelay.pressure"
SPAN_RECEIVE = "surelay.receive"
"""One inbound message taken from a source (`rt.consume`), child of the producer's
span when the message carries a `traceparent`."""

ATTR_MESSAGE_ID = "surelay.message_id"
ATTR_TRANSPORT = "surelay.transport"
ATTR_KEY = "surelay.key"
ATTR_ATTEMPT = "surelay.attempt"
ATTR_OUTCOME = "surelay.outcome"
ATTR_REASON_CLASS = "surelay.reason_class"
ATTR_DEAD_LETTER_ID = "surelay.dead_letter_id"
ATTR_PRESSURE_LEVEL = "surelay.pressure.level"
ATTR_PRIORITY = "surelay.priority"
ATTR_REASON = "surelay.reason"
"""Why a send was refused: `critical`, `capacity`, `rate_per_key`."""

ATTR_SOURCE_MESSAGE_ID = "surelay.source.message_id"
"""The inbound message's id at its source (the inbox key)."""

TRACEPARENT = "traceparent"

COUNTERS = (
    "accepted",
    "delivered",
    "retried",
    "dead_lettered",
    "duplicates",
    "refused",
    "replayed",
    "received",
    "relayed",
)
"""`surelay.messages.<name>` counters, each with a `surelay.transport` attribute."""

GAUGES = (
    "surelay.outbox.pending",
    "surelay.scheduled",
    "surelay.retry.pending",
    "surelay.dead_letters",
    "surelay.pressure.level",
    "surelay.breaker.state",
    "surelay.calls.in_flight",
)
"""Observable gauges; `surelay.breaker.state` and `surelay.calls.in_flight` (transport
calls running now) have one observation per transport."""

DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
)
"""Advisory bucket boundaries (seconds) of `surelay.delivery.duration`: a transport call
takes milliseconds to tens of seconds, so the SDK's default boundaries (0, 5, 10, 25, ...)
would put every call in their first buckets."""

Gauges = Callable[[], Mapping[str, float | Mapping[str, float]]]
"""Reads the gauges: name -> value, or name -> {transport: value} for per-transport ones."""


class Telemetry:
    """The runtime's tracer and instruments.

    Instruments are made once per process (an SDK keeps the first instrument of a
    name), and the gauges' callbacks observe every open runtime's `Gauges`.
    """

    def __init__(self, gauges: Gauges = dict) -> None:
        self.tracer = trace.get_tracer(NAME)
        instruments = _instruments()
        self.counters = instruments.counters
        self.duration = instruments.duration
        self.gauges = gauges
        self._tracing = False
        _LIVE.add(self)

    def close(self) -> None:
        """Stop observing this runtime's gauges."""
        _LIVE.discard(self)

    @property
    def tracing(self) -> bool:
        """Whether a tracer provider is installed (span work is skipped otherwise),
        whether the host set it before or after importing surelay.

        The API sets its global provider once, so a True answer is kept; until then each
        call looks again (ask once per batch, not per message).
        """
        if not self._tracing:
            self._tracing = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
        return self._tracing

    def count(self, name: str, transport: str, amount: int = 1) -> None:
        if amount:
            self.counters[name].add(amount, {ATTR_TRANSPORT: transport})

    def count_many(self, name: str, transports: Iterable[str]) -> None:
        """Add one per transport occurrence, one instrument call per distinct transport."""
        tally: dict[str, int] = {}
        for transport in transports:
            tally[transport] = tally.get(transport, 0) + 1
        for transport, amount in tally.items():
            self.counters[name].add(amount, {ATTR_TRANSPORT: transport})

    def count_refused(self, transports: Iterable[str], priority: str, reason: str) -> None:
        tally: dict[str, int] = {}
        for transport in transports:
            tally[transport] = tally.get(transport, 0) + 1
        for transport, amount in tally.items():
            self.counters["refused"].add(
                amount,
                {ATTR_TRANSPORT: transport, ATTR_PRIORITY: priority, ATTR_REASON: reason},
            )


_LIVE: weakref.WeakSet[Telemetry] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class _Instruments:
    counters: Mapping[str, Counter]
    duration: Histogram


@functools.cache
def _instruments() -> _Instruments:
    meter = metrics.get_meter(NAME)
    counters = {
        name: meter.create_counter(f"surelay.messages.{name}", unit="{message}")
        for name in COUNTERS
    }
    duration = meter.create_histogram(
        "surelay.delivery.duration",
        unit="s",
        description="One transport attempt",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )
    for name in GAUGES:
        meter.create_observable_gauge(name, callbacks=[_observer(name)])
    return _Instruments(counters, duration)


def _observer(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        for telemetry in list(_LIVE):
            value = telemetry.gauges().get(name)
            if isinstance(value, Mapping):
                out.extend(Observation(v, {ATTR_TRANSPORT: t}) for t, v in value.items())
            elif value is not None:
                out.append(Observation(value))
        return out

    return observe


def message_attributes(
    message_id: str | None,
    transport: str,
    key: str | None,
    attempt: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The attributes every span about one message carries (its id once it has one,
    the attempt if given, and any `more`)."""
    attributes: dict[str, Any] = {ATTR_TRANSPORT: transport, ATTR_KEY: key or ""}
    if message_id is not None:
        attributes[ATTR_MESSAGE_ID] = message_id
    if attempt is not None:
        attributes[ATTR_ATTEMPT] = attempt
    attributes.update(more)
    return attributes


def message_span(  # noqa: PLR0917  # a span's name, then its message's fields
    tracer: Tracer,
    name: str,
    message_id: str | None,
    transport: str,
    key: str | None,
    attempt: int | None = None,
    *,
    parent: Mapping[str, str] | None = None,
    link: bool = False,
    more: Mapping[str, Any] | None = None,
) -> Span:
    """A span about one message, started now, with `message_attributes`: a child of
    the trace whose `traceparent` is in the headers `parent` (or, with `link`, a new
    trace linked to it), or of the caller's current span without `parent`. Every span
    surelay makes about a message is made here; `more` are further attributes."""
    attributes = message_attributes(message_id, transport, key, attempt, **(more or {}))
    if parent is None:
        return tracer.start_span(name, attributes=attributes)
    if link:
        return tracer.start_span(name, links=links_from(parent), attributes=attributes)
    return tracer.start_span(name, context=context_from(parent), attributes=attributes)


def traceparent_of(span: Span) -> str | None:
    """The W3C `traceparent` value of `span`, or None for an invalid context."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> dict[str, str]:
    """`{"traceparent": ...}` of the current span (during a transport call made by the
    runtime: that attempt's `surelay.deliver` span), or {} if there is no valid one."""
    traceparent = traceparent_of(trace.get_current_span())
    return {} if traceparent is None else {TRACEPARENT: traceparent}


def _parse(headers: Mapping[str, str]) -> SpanContext | None:
    value = headers.get(TRACEPARENT)
    if value is None or len(value) != 55 or value[2] != "-" or value[35] != "-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def context_from(headers: Mapping[str, str]) -> Context | None:
    """The parent context carried in `headers` (None: start a new trace)."""
    parsed = _parse(headers)
    if parsed is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(parsed))


def links_from(headers: Mapping[str, str]) -> list[Link]:
    """A link to the span context carried in `headers` (none if there is none): how a
    replay points back at the trace of the message's first life."""
    parsed = _parse(headers)
    return [] if parsed is None else [Link(parsed)]


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    """The 32-hex-digit trace id carried in `headers`, if any."""
    parsed = _parse(headers)
    return None if parsed is None else f"{parsed.trace_id:032x}"


def record_error(span: Span, error: BaseException) -> None:
    """Mark `span` failed by `error`, as every surelay span does (status ERROR + the exception)."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
