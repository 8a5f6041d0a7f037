"""What a transport receives: the `Envelope`, and message `Priority`."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from surelay.errors import InvalidMessage

__all__ = [
    "SEND_ARGS",
    "Envelope",
    "Priority",
    "check_headers",
    "check_payload",
    "check_send",
    "check_text",
    "check_timing",
    "checked_envelope",
    "header_problem",
    "is_framing_header",
]


class Priority(enum.Enum):
    """Delivery priority within a partition; `HIGH` is shed last under pressure."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for HIGH, 1 for NORMAL, 2 for LOW: sort ascending to serve HIGH first."""
        return _RANKS[self]


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as the transport sees it.

    `attempt` is 1-based: the transport's n-th try at this message. `idempotency_key`
    defaults to `message_id`, so the receiving side can deduplicate too. `created_at` is
    the acceptance time in epoch seconds; `type` the message type given to `send`
    (None if none was).
    """

    message_id: str
    transport: str
    payload: bytes
    key: str | None = None
    idempotency_key: str = ""
    priority: Priority = Priority.NORMAL
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    attempt: int = 1
    created_at: float = 0.0
    type: str | None = None
    """The message type named at `send` (selects per-type policies), or None."""

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            object.__setattr__(self, "idempotency_key", self.message_id)
        if not isinstance(self.headers, MappingProxyType):
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


_new = object.__new__
(
    _set_message_id,
    _set_transport,
    _set_payload,
    _set_key,
    _set_idempotency_key,
    _set_priority,
    _set_headers,
    _set_attempt,
    _set_created_at,
    _set_type,
) = (Envelope.__dict__[name].__set__ for name in Envelope.__match_args__)


def checked_envelope(  # noqa: PLR0917  # Envelope's fields, in order
    message_id: str,
    transport: str,
    payload: bytes,
    key: str | None,
    idempotency_key: str,
    priority: Priority,
    headers: MappingProxyType[str, str],
    attempt: int,
    created_at: float,
    type_: str | None = None,
) -> Envelope:
    """`Envelope(...)` for values already checked, with `idempotency_key` filled in and
    `headers` already a `MappingProxyType`: the same object for half the cost, because
    it sets each slot directly instead of through the frozen class's `object.__setattr__`
    and skips `__post_init__`. One is made for every accepted message."""
    e = _new(Envelope)
    _set_message_id(e, message_id)
    _set_transport(e, transport)
    _set_payload(e, payload)
    _set_key(e, key)
    _set_idempotency_key(e, idempotency_key)
    _set_priority(e, priority)
    _set_headers(e, headers)
    _set_attempt(e, attempt)
    _set_created_at(e, created_at)
    _set_type(e, type_)
    return e


# -- validation ------------------------------------------------------------------------

MAX_KEY_CHARS = 1024
"""Longest `key` or `idempotency_key` accepted (characters)."""
MAX_HEADERS = 64
"""Most headers one message may carry."""
MAX_HEADER_BYTES = 16_384
"""Most UTF-8 bytes all of one message's header names and values may take together."""

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

FRAMING_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
    }
)
"""Header names (lower case) that decide an HTTP request's framing or routing, or are
hop-by-hop: an HTTP transport sets them itself, and a message may not carry them (nor
any `Proxy-*`), since a forwarded one could smuggle a second request (`Expect` would
make the client wait for an interim answer before sending the body)."""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""Control characters (C0 but HTAB, DEL, C1): CR, LF and NUL would break a request line."""
_SURROGATE = re.compile(r"[\ud800-\udfff]")
"""A lone surrogate: a str Python can hold but no UTF-8 text can carry."""


def is_framing_header(name: str) -> bool:
    """True for a framing, routing or hop-by-hop header name (any case): `Host`,
    `Content-Length`, `Transfer-Encoding`, `Connection`, `Keep-Alive`, `Upgrade`, `TE`,
    `Trailer`, `Expect` and `Proxy-*`."""
    lowered = name.lower()
    return lowered in FRAMING_HEADERS or lowered.startswith("proxy-")


def header_problem(name: object, value: object) -> str | None:
    """Why `name: value` cannot go out as a header field, or None if it can: the name
    must be an RFC 9110 token, the value a str with no control character (HTAB aside)
    and no lone surrogate. The one rule `send`, `rt.consume` and both HTTP transports
    apply, so they refuse the same characters. Framing names are `is_framing_header`'s."""
    if not isinstance(name, str) or not name or not _TOKEN.issuperset(name):
        return f"header name {name!r} must be a non-empty str of HTTP token characters"
    if not isinstance(value, str):
        return f"header {name!r} must be a str, got {type(value).__name__}"
    if not value.isascii() and _SURROGATE.search(value):
        return f"header {name!r} holds a lone surrogate, which is not text"
    control = _CONTROL.search(value)
    if control is not None:
        return (
            f"header {name!r} holds a control character ({control.group()!r}: "
            "CR, LF, NUL and other control characters are refused)"
        )
    return None


def check_payload(payload: object, max_bytes: int) -> bytes:
    """`payload` as bytes, or `InvalidMessage` saying why it cannot be sent."""
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, bytearray | memoryview):
        data = bytes(payload)
    else:
        raise InvalidMessage(
            f"payload must be bytes, got {type(payload).__name__} "
            "(encode text or JSON yourself, e.g. json.dumps(obj).encode())"
        )
    if len(data) > max_bytes:
        raise InvalidMessage(f"payload is {len(data)} bytes, over max_payload_bytes={max_bytes}")
    return data


def check_text(name: str, value: object, *, optional: bool) -> str | None:
    """A `key` or `idempotency_key`: None (if `optional`) or a non-empty str of text
    (no lone surrogate)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{name} must be a non-empty str or None, got {value!r}")
    if len(value) > MAX_KEY_CHARS:
        raise InvalidMessage(f"{name} is {len(value)} characters, over {MAX_KEY_CHARS}")
    if not value.isascii() and _SURROGATE.search(value):
        raise InvalidMessage(f"{name} holds a lone surrogate, which is not text: {value[:40]!r}")
    return value


def check_headers(headers: object) -> MappingProxyType[str, str]:
    """Headers as an immutable mapping of HTTP-token names to single-line str values,
    none of them a framing or hop-by-hop header (`is_framing_header`)."""
    if headers is None:
        return _NO_HEADERS
    if not isinstance(headers, Mapping):
        raise InvalidMessage(
            f"headers must be a mapping of str to str, got {type(headers).__name__}"
        )
    if len(headers) > MAX_HEADERS:
        raise InvalidMessage(f"headers has {len(headers)} entries, over {MAX_HEADERS}")
    size = 0
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise InvalidMessage(problem)
        if is_framing_header(name):
            raise InvalidMessage(
                f"header {name!r} is refused: it would change the HTTP request's framing "
                "or routing, which the transport sets itself"
            )
        size += len(name) + len(value.encode("utf-8"))
    if size > MAX_HEADER_BYTES:
        raise InvalidMessage(f"headers take {size} bytes, over {MAX_HEADER_BYTES}")
    return MappingProxyType(dict(headers))


_NO_HEADERS: MappingProxyType[str, str] = MappingProxyType({})


def check_send(  # noqa: PLR0917  # send()'s arguments, checked in one place
    transport: object,
    payload: object,
    key: object,
    idempotency_key: object,
    priority: object,
    headers: object,
    *,
    max_payload_bytes: int,
) -> tuple[str, bytes, str | None, str | None, Priority, MappingProxyType[str, str]]:
    """The arguments of one send, checked (`InvalidMessage` saying what is wrong): the
    one check of `rt.send` and `SqlOutbox.send` (the runtime also checks that it has
    the transport)."""
    if not isinstance(transport, str) or not transport:
        raise InvalidMessage(f"transport must be a non-empty str, got {transport!r}")
    data = check_payload(payload, max_payload_bytes)
    checked_key = check_text("key", key, optional=True)
    checked_idempotency = check_text("idempotency_key", idempotency_key, optional=True)
    if not isinstance(priority, Priority):
        raise InvalidMessage(f"priority must be a surelay.Priority, got {priority!r}")
    return transport, data, checked_key, checked_idempotency, priority, check_headers(headers)


SEND_ARGS = frozenset(
    {
        "transport",
        "payload",
        "key",
        "idempotency_key",
        "priority",
        "headers",
        "delay",
        "not_before",
        "type",
    }
)
"""The arguments of a send, by name (a batch's mappings hold these): `rt.send`'s and
`SqlOutbox.send`'s (`rt.send` also takes `txn`)."""

MAX_TYPE_CHARS = 256
"""Longest message `type` accepted (characters)."""

MAX_DELAY = 10 * 366 * 86_400.0
"""Furthest ahead a message may be scheduled (about ten years, in seconds): a due time
past it is a unit mistake (milliseconds for seconds), not a plan."""


def check_timing(
    delay: object, not_before: object, type_: object, *, now: float
) -> tuple[float | None, str | None]:
    """A send's `delay` (seconds from `now`) or `not_before` (epoch seconds, or an aware
    `datetime`), as its due time in epoch seconds (None: due at once; a time already
    past is due at once), and its `type` (a non-empty str, or None). Both `delay` and
    `not_before` at once is refused: which one was meant cannot be told."""
    checked_type = None if type_ is None else check_text("type", type_, optional=False)
    if checked_type is not None and len(checked_type) > MAX_TYPE_CHARS:
        raise InvalidMessage(f"type is {len(checked_type)} characters, over {MAX_TYPE_CHARS}")
    if delay is None and not_before is None:
        return None, checked_type
    if delay is not None and not_before is not None:
        raise InvalidMessage("give delay or not_before, not both")
    if delay is not None:
        seconds = _seconds("delay", delay)
        if seconds < 0:
            raise InvalidMessage(f"delay must be seconds >= 0, got {delay!r}")
        due = now + seconds
    elif isinstance(not_before, datetime):
        if not_before.tzinfo is None or not_before.utcoffset() is None:
            raise InvalidMessage(
                f"not_before must be an aware datetime (with a tzinfo), got {not_before!r}"
            )
        due = not_before.timestamp()
    else:
        due = _seconds("not_before", not_before)
    if due - now > MAX_DELAY:
        raise InvalidMessage(
            f"the due time is {due - now:.0f}s ahead, over {MAX_DELAY:.0f}s "
            "(delay and not_before are seconds, not milliseconds)"
        )
    return (due if due > now else None), checked_type


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)
