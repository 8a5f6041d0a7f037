"""What `HttpTransport` and `AsyncHttpTransport` share, so both behave the same: argument
checks, request headers (with Standard Webhooks signing), status classification, error
messages and `Retry-After` parsing. Only the sending differs between them."""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType

from surelay.envelope import Envelope
from surelay.errors import PermanentError, TransientError
from surelay.transports.webhooks import parse_secret, signature_headers

__all__ = ["BODY_EXCERPT_BYTES", "HttpTransportBase", "parse_retry_after"]

BODY_EXCERPT_BYTES = 512
"""How much of a response body is kept for the error message (which shows 200 chars)."""

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


class HttpTransportBase:
    """The checked settings and the request/response rules of the HTTP transports."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        signing_secret: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        self._parts = parts
        self._signing_key = None if signing_secret is None else parse_secret(signing_secret)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _request_headers(self, envelope: Envelope) -> dict[str, str]:
        """The envelope's headers, then surelay's, then this transport's, each layer
        replacing a header of the same name (in any case) set by the one before; the
        signature headers come last, so nothing can break them."""
        layers: list[Mapping[str, str]] = [
            envelope.headers,
            {
                "Content-Type": "application/octet-stream",
                "Idempotency-Key": envelope.idempotency_key,
                "X-Surelay-Message-Id": envelope.message_id,
                "X-Surelay-Attempt": str(envelope.attempt),
            },
            self.headers,
        ]
        if self._signing_key is not None:
            # The idempotency key as webhook-id: a retry keeps the id, as the spec asks.
            layers.append(
                signature_headers(self._signing_key, envelope.idempotency_key, envelope.payload)
            )
        merged: dict[str, tuple[str, str]] = {}
        for layer in layers:
            for name, value in layer.items():
                merged[name.lower()] = (name, value)
        return dict(merged.values())

    def _check_status(self, status: int, body: bytes, retry_after: str | None) -> None:
        """Return on 2xx; raise `TransientError` (with `Retry-After`) on 408, 429 and
        5xx, `PermanentError` on anything else."""
        if 200 <= status < 300:
            return
        text = body.decode("utf-8", "replace").strip()
        message = f"POST {self.url}: HTTP {status}" + (f": {text[:200]}" if text else "")
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise TransientError(message, retry_after=parse_retry_after(retry_after))
        raise PermanentError(message)

    def _transient(self, error: BaseException) -> TransientError:
        """The error for a failure to connect, send or receive."""
        cause = getattr(error, "os_error", None)  # aiohttp's connector errors wrap one
        kind = type(error).__name__ + (f" ({type(cause).__name__})" if cause else "")
        return TransientError(f"POST {self.url}: {kind}: {error}")

    def _refused(self, error: BaseException) -> PermanentError:
        """The error for a request the HTTP client itself refuses (e.g. a bad header)."""
        return PermanentError(f"POST {self.url}: invalid request: {error}")
