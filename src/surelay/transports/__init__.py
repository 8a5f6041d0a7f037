"""Transports: how a message leaves surelay.

A transport is any callable `(Envelope) -> None`, or one whose call returns a coroutine
(awaited on the runtime's event loop): returning means delivered; raising
`PermanentError` dead-letters at once; raising `TransientError` (or anything else) is
retried by the retry policy, after at least its `retry_after` when it has one. The
`Transport` protocol (`surelay.transports.protocol`) describes it and its optional
members: `ack_timeout`, `prepare(concurrency)`, `aclose()` and `classify(exc)`.

Built in: `HttpTransport` (blocking, one keep-alive connection per sender thread) and
`AsyncHttpTransport` (aiohttp, the `http` extra), with the same rules, both able to sign
each request as Standard Webhooks specify (`surelay.transports.webhooks`); and
`JetStreamTransport` (nats-py, the `nats` extra), which publishes to a NATS JetStream
stream with server-side dedup; and `RabbitMQTransport` (aiormq, the `rabbitmq` extra),
which publishes to a RabbitMQ exchange with publisher confirms.
"""

from typing import TYPE_CHECKING, Any

from surelay.transports.http import HttpTransport
from surelay.transports.protocol import Transport, Verdict

if TYPE_CHECKING:
    from surelay.transports.async_http import AsyncHttpTransport
    from surelay.transports.jetstream import JetStreamTransport, subject_by_key
    from surelay.transports.rabbitmq import RabbitMQTransport

__all__ = [
    "AsyncHttpTransport",
    "HttpTransport",
    "JetStreamTransport",
    "RabbitMQTransport",
    "Transport",
    "Verdict",
    "subject_by_key",
]

_LAZY = {
    "AsyncHttpTransport": "surelay.transports.async_http",
    "JetStreamTransport": "surelay.transports.jetstream",
    "subject_by_key": "surelay.transports.jetstream",
    "RabbitMQTransport": "surelay.transports.rabbitmq",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: aiohttp, nats-py and aiormq (and all they bring, tens of thousands
    # of objects every garbage collection walks) stay out of hosts that do not use them.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(module), name)
