"""Transports: how a message leaves surelay.

A transport is any callable `(Envelope) -> None`, or one whose call returns a coroutine
(awaited on the runtime's event loop): returning means delivered; raising
`PermanentError` dead-letters at once; raising `TransientError` (or anything else) is
retried by the retry policy, after at least its `retry_after` when it has one.

Two are built in, with the same rules: `HttpTransport` (blocking, one keep-alive
connection per sender thread) and `AsyncHttpTransport` (aiohttp, the `http` extra). Both
can sign each request as Standard Webhooks specify (`surelay.transports.webhooks`).
"""

from surelay.transports.async_http import AsyncHttpTransport
from surelay.transports.http import HttpTransport

__all__ = ["AsyncHttpTransport", "HttpTransport"]
