"""Push's spans and metrics (OpenTelemetry), beside the runtime's.

Spans: `surelay.push.append` (a message into a mailbox), `surelay.push.deliver` (frames
sent on one connection at once), `surelay.push.ack`, `surelay.push.read`,
`surelay.push.failed`. Counters `surelay.push.<name>` for each; gauges
`surelay.push.connections` (this process's) and `surelay.push.pending` (undelivered
messages in every mailbox of the directory).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Counter, Observation
from opentelemetry.trace import Span

from surelay.telemetry import NAME

__all__ = [
    "ATTR_DEVICE",
    "ATTR_RECIPIENT",
    "ATTR_SEQ",
    "COUNTERS",
    "PushTelemetry",
]

ATTR_RECIPIENT = "surelay.push.recipient"
ATTR_DEVICE = "surelay.push.device"
ATTR_SEQ = "surelay.push.seq"
ATTR_MSG_ID = "surelay.message_id"
ATTR_REASON = "surelay.reason"

COUNTERS = ("appended", "frames", "acks", "reads", "failed")
"""`surelay.push.<name>`: messages appended, frames sent, acks and reads taken, messages
failed (with `surelay.reason`)."""


@dataclass(frozen=True, slots=True)
class _Instruments:
    counters: dict[str, Counter]


_LIVE: weakref.WeakSet[PushTelemetry] = weakref.WeakSet()


@functools.cache
def _instruments() -> _Instruments:
    meter = metrics.get_meter(NAME)
    counters = {
        name: meter.create_counter(f"surelay.push.{name}", unit="{message}") for name in COUNTERS
    }
    meter.create_observable_gauge("surelay.push.connections", callbacks=[_observe("connections")])
    meter.create_observable_gauge("surelay.push.pending", callbacks=[_observe("pending")])
    return _Instruments(counters)


def _observe(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for telemetry in list(_LIVE):
            try:
                out.append(Observation(telemetry.gauges[name]()))
            except Exception:  # a closed store: nothing to observe
                continue
        return out

    return observe


class PushTelemetry:
    """The tracer and instruments of one gateway; `gauges` read its connections and
    pending count when a metric reader collects."""

    def __init__(self, connections: Callable[[], int], pending: Callable[[], int]) -> None:
        self.tracer = trace.get_tracer(NAME)
        self.counters = _instruments().counters
        self.gauges = {"connections": connections, "pending": pending}
        _LIVE.add(self)

    def count(self, name: str, amount: int = 1, **attributes: str) -> None:
        if amount:
            self.counters[name].add(amount, attributes or None)

    @contextmanager
    def span(
        self, name: str, recipient: str, attributes: Mapping[str, str | int] | None = None
    ) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            f"surelay.push.{name}", attributes={ATTR_RECIPIENT: recipient, **(attributes or {})}
        ) as span:
            yield span
