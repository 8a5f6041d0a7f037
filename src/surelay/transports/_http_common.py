"""What `HttpTransport` and `AsyncHttpTransport` share, so both behave the same: argument
checks, request headers (with Standard Webhooks signing), status classification, error
messages and `Retry-After` parsing. Only the sending differs between them.

Framing is the HTTP client's alone: `Host` comes from the URL and `Content-Length` from
the payload. A message's framing or hop-by-hop headers (`send` refuses them; one stored
before that rule, or replayed, may still hold them) are never forwarded, and every header
that does go out passes `surelay.envelope.header_problem`, so both transports refuse the
same characters and send the same bytes (UTF-8)."""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType

from surelay.envelope import Envelope, header_problem, is_framing_header
from surelay.errors import InvalidMessage, PermanentError, TransientError
from surelay.telemetry import current_traceparent
from surelay.transports._checks import check_timeout
from surelay.transports.webhooks import parse_secret, signature_headers

__all__ = [
    "BODY_EXCERPT_BYTES",
    "RETRY_AFTER_CEILING",
    "HttpTransportBase",
    "check_timeout",
    "parse_retry_after",
]

BODY_EXCERPT_BYTES = 512
"""How much of a response body is kept for the error message (which shows 200 chars)."""

RETRY_AFTER_CEILING = 366 * 86_400.0
"""The most seconds `parse_retry_after` returns (a year): a larger value means no more to
surelay, whose `RetryPolicy.max_retry_after` caps the wait far lower anyway, and keeps
every time computed from it a plain finite float."""

_TRANSIENT_STATUSES = frozenset({408, 429})
_DELTA_SECONDS = re.compile(r"[0-9]+")
_CEILING_DIGITS = len(str(int(RETRY_AFTER_CEILING)))
_URL_REFUSED = re.compile(r"[\x00-\x20\x7f-\x9f]")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds (ASCII digits, any
    number of them) or an HTTP date; None if absent or unreadable ("1e300", "inf",
    "-3", garbage). Never raises; always in [0, `RETRY_AFTER_CEILING`]."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        if len(value.lstrip("0")) > _CEILING_DIGITS:  # int() of it could be refused
            return RETRY_AFTER_CEILING
        return min(float(int(value)), RETRY_AFTER_CEILING)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
            when = when.replace(tzinfo=datetime.UTC)
        wait = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if math.isnan(wait):
        return None
    return min(max(0.0, wait), RETRY_AFTER_CEILING)


def _own_headers(headers: object) -> dict[str, str]:
    """A transport's own `headers`, checked at once (`ValueError` naming the header)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise ValueError(problem)
        if is_framing_header(name):
            raise ValueError(
                f"header {name!r} is refused: the transport sets framing and routing "
                "headers itself (Host from the URL, Content-Length from the payload)"
            )
    return dict(headers)


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
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        if _URL_REFUSED.search(url):
            raise ValueError(f"url must not hold spaces or control characters, got {url!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        self.url = url
        self.timeout = check_timeout(timeout)
        self.headers: Mapping[str, str] = MappingProxyType(_own_headers(headers))
        self._parts = parts
        self._signing_key = None if signing_secret is None else parse_secret(signing_secret)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _request_headers(self, envelope: Envelope) -> dict[str, str]:
        """The envelope's headers (but framing ones), then surelay's, then this
        transport's, each layer replacing a header of the same name (in any case) set by
        the one before; the signature headers come last, so nothing can break them.

        `traceparent` is that of the span current during the call when there is one
        (a call made inside its attempt's `surelay.deliver` span sends that span's
        context, so the receiver's spans are children of the attempt); else the
        envelope's.
        `InvalidMessage` if a header cannot be sent (`header_problem`)."""
        layers: list[Mapping[str, str]] = [
            {k: v for k, v in envelope.headers.items() if not is_framing_header(k)},
            current_traceparent(),
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
        for name, value in merged.values():
            problem = header_problem(name, value)
            if problem is not None:
                raise InvalidMessage(f"POST {self.url}: {problem}")
        return dict(merged.values())

    def _check_status(self, status: int, body: bytes, retry_after: str | None) -> None:
        """Return on 2xx; raise `TransientError` (with `Retry-After`) on 408, 429 and
        5xx, `PermanentError` on anything else. A 3xx is permanent too: a redirect is
        not followed, since a redirected POST may change its method or target."""
        if 200 <= status < 300:
            return
        text = body.decode("utf-8", "replace").strip()
        message = f"POST {self.url}: HTTP {status}" + (f": {text[:200]}" if text else "")
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise TransientError(message, retry_after=parse_retry_after(retry_after))
        if 300 <= status < 400:
            message += " (redirects are not followed)"
        raise PermanentError(message)

    def _transient(self, error: BaseException) -> TransientError:
        """The error for a failure to connect, send or receive."""
        cause = getattr(error, "os_error", None)  # aiohttp's connector errors wrap one
        kind = type(error).__name__ + (f" ({type(cause).__name__})" if cause else "")
        return TransientError(f"POST {self.url}: {kind}: {error}")

    def _refused(self, error: BaseException) -> PermanentError:
        """The error for a request the HTTP client itself refuses (e.g. a bad header)."""
        return PermanentError(f"POST {self.url}: invalid request: {error}")
