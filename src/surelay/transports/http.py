"""`HttpTransport`: POST each message to a URL, from the runtime's call threads.

2xx is delivered; 408, 429, 5xx, timeouts and connection errors are transient (with the
server's `Retry-After` carried on the `TransientError`); any other status (3xx included:
redirects are not followed, as a redirected POST may change method or target) is
permanent; a header that cannot be sent is `InvalidMessage`. Each thread keeps one
persistent (keep-alive) connection, re-opened after any failure, so a transport with
`concurrency` N holds at most N connections (plus those of calls abandoned at their ack
timeout, until they end). A kept connection the server has closed meanwhile is noticed
when the request fails before any response; that request is sent once more on a fresh
connection rather than spending an attempt. With a `signing_secret`, every request is
signed as Standard Webhooks specify (see `surelay.transports.webhooks`).
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Mapping

from surelay.envelope import Envelope
from surelay.transports._http_common import (
    BODY_EXCERPT_BYTES,
    HttpTransportBase,
    parse_retry_after,
)

__all__ = ["HttpTransport", "parse_retry_after"]

_DRAIN_CHUNK = 65_536


class HttpTransport(HttpTransportBase):
    """A blocking transport that POSTs `envelope.payload` to `url`.

    Request headers: the envelope's own headers (so `traceparent` travels; framing and
    hop-by-hop ones never: `Host` is the URL's, `Content-Length` the payload's), then
    `Content-Type: application/octet-stream`, `Idempotency-Key`, `X-Surelay-Message-Id`,
    `X-Surelay-Attempt`, then `headers` given here (which win, whatever their case).

    `timeout` (seconds, finite and > 0) bounds connecting and each read; `headers` with a
    framing name or a control character are a `ValueError` here. `signing_secret` (`whsec_` +
    base64 of the key) adds `webhook-id` (the idempotency key, so a retry keeps it),
    `webhook-timestamp` (the attempt's time) and `webhook-signature`; a malformed secret
    is a `ValueError` here, not at the first send. Safe to call from many threads.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        signing_secret: str | None = None,
    ) -> None:
        super().__init__(url, timeout=timeout, headers=headers, signing_secret=signing_secret)
        parts = self._parts
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        # percent-encoded as aiohttp sends it: http.client would refuse a non-ASCII target
        self._target = urllib.parse.urlunsplit(
            ("", "", _quote(parts.path or "/"), _quote(parts.query), "")
        )
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            factory = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = factory(self._host or "", self._port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __call__(self, envelope: Envelope) -> None:
        """Deliver `envelope`, or raise `TransientError`/`PermanentError`."""
        headers = self._request_headers(envelope)
        reused = getattr(self._local, "connection", None) is not None
        try:
            try:
                status, body, retry_after = self._post(envelope.payload, headers)
            except _STALE:
                if not reused:
                    raise
                self._drop()  # the server closed the kept connection: once more, fresh
                status, body, retry_after = self._post(envelope.payload, headers)
        except ValueError as error:  # http.client refuses the request itself (bad header)
            self._drop()
            raise self._refused(error) from error
        except (OSError, http.client.HTTPException) as error:
            self._drop()
            raise self._transient(error) from error
        except BaseException:
            self._drop()  # interrupted mid-request: the connection's state is unknown
            raise
        self._check_status(status, body, retry_after)

    def _post(self, payload: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, str | None]:
        connection = self._connection()
        # UTF-8, as aiohttp sends them (http.client would send latin-1 or refuse)
        encoded = {name: value.encode() for name, value in headers.items()}
        connection.request("POST", self._target, body=payload, headers=encoded)
        response = connection.getresponse()
        body = response.read(BODY_EXCERPT_BYTES)
        while response.read(_DRAIN_CHUNK):  # drain, so the connection can be reused
            pass
        if response.will_close:
            self._drop()
        return response.status, body, response.getheader("Retry-After")


def _quote(text: str) -> str:
    """`text` with anything but ASCII (and `%`-escapes already there) percent-encoded."""
    return urllib.parse.quote(text, safe="".join(map(chr, range(0x21, 0x7F))))


_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
"""How a kept-alive connection the server closed fails before any response."""
