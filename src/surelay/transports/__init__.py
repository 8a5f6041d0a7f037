"""Transports: how a message leaves surelay.

A transport is any callable `(Envelope) -> None`, or one whose call returns a coroutine
(awaited on the runtime's event loop): returning means delivered; raising
`PermanentError` dead-letters at once; raising `TransientError` (or anything else) is
retried by the retry policy, after at least its `retry_after` when it has one.

Built in: `HttpTransport` (blocking, one keep-alive connection per sender thread) and
`AsyncHttpTransport` (aiohttp, the `http` extra), with the same rules, both able to sign
each request as Standard Webhooks specify (`surelay.transports.webhooks`); and
`JetStreamTransport` (nats-py, the `nats` extra), which publishes to a NATS JetStream
stream with server-side dedup.
"""

from surelay.transports.async_http import AsyncHttpTransport
from surelay.transports.http import HttpTransport
from surelay.transports.jetstream import JetStreamTransport, subject_by_key

__all__ = ["AsyncHttpTransport", "HttpTransport", "JetStreamTransport", "subject_by_key"]
