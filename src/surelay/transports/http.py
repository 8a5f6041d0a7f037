"""`HttpTransport`: POST each message to a URL.

2xx is delivered; 408, 429, 5xx, timeouts and connection errors are transient (with the
server's `Retry-After` carried on the `TransientError`); any other status is permanent.
Each thread keeps one persistent connection, re-opened after any failure.
"""

from __future__ import annotations

import email.utils
import http.client
import threading
import time
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType

from surelay.envelope import Envelope
from surelay.errors import PermanentError, TransientError

__all__ = ["HttpTransport", "parse_retry_after"]

_TRANSIENT_STATUSES = frozenset({408, 429})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date);
    None if absent or unreadable. Never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpTransport:
    """A transport that POSTs `envelope.payload` to `url`.

    Request headers: the envelope's own headers (so `traceparent` travels), then
    `Idempotency-Key`, `X-Surelay-Message-Id`, `X-Surelay-Attempt`, then `headers` given
    here (which win). `timeout` (seconds) bounds connecting and each read.
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"HttpTransport({self.url!r})"

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = factory(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __call__(self, envelope: Envelope) -> None:
        headers = {
            **envelope.headers,
            "Content-Type": "application/octet-stream",
            "Idempotency-Key": envelope.idempotency_key,
            "X-Surelay-Message-Id": envelope.message_id,
            "X-Surelay-Attempt": str(envelope.attempt),
            **self.headers,
        }
        try:
            connection = self._connection()
            connection.request("POST", self._target, body=envelope.payload, headers=headers)
            response = connection.getresponse()
            body = response.read(512)
            response.read()  # drain, so the connection can be reused
            status = response.status
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            if response.will_close:
                self._drop()
        except ValueError as error:  # http.client refuses the request itself (bad header)
            self._drop()
            raise PermanentError(f"POST {self.url}: invalid request: {error}") from error
        except (OSError, http.client.HTTPException) as error:
            self._drop()
            raise TransientError(f"POST {self.url}: {type(error).__name__}: {error}") from error
        if 200 <= status < 300:
            return
        text = body.decode("utf-8", "replace").strip()
        message = f"POST {self.url}: HTTP {status}" + (f": {text[:200]}" if text else "")
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise TransientError(message, retry_after=retry_after)
        raise PermanentError(message)
