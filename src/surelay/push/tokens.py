"""Connection tokens: who a WebSocket (or SSE, or long-poll) client is, signed by the
host's secret, so the recipient comes only from the token, never from what the client
says.

A token is `v1.<payload>.<mac>`: the payload is base64url JSON `{"r": recipient, "d":
device or null, "e": expiry in epoch seconds}`, the MAC an HMAC-SHA256 of `v1.<payload>`
with the secret. Pure functions: the clock is the caller's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import unicodedata
from dataclasses import dataclass

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_TOKEN_CHARS",
    "Grant",
    "InvalidToken",
    "check_name",
    "issue",
    "verify",
]

MAX_NAME_BYTES = 250
"""A recipient's or a device's name, UTF-8: both together (each with its length) key a
device's cursor, within LMDB's 511-byte keys."""

MAX_TOKEN_CHARS = 2048
"""Anything longer is refused before it is decoded (inbound frames are bounded)."""

_VERSION = "v1"


class InvalidToken(ValueError):
    """A token that is malformed, forged or expired; `reason` says which (close 4001)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows: `recipient`'s messages, on `device` (None: any device
    the client names), until `expires_at` (epoch seconds)."""

    recipient: str
    device: str | None
    expires_at: float


def check_name(what: str, value: object) -> str:
    """`value` as a recipient or device name, or `ValueError` naming `what`: a non-empty
    str of at most `MAX_NAME_BYTES` UTF-8 bytes without control characters (a name is
    logged and shown in the console)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty str, got {value!r}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode text, got {value!r}") from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} must be at most {MAX_NAME_BYTES} UTF-8 bytes, got {size}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise ValueError(f"{what} must not hold control characters, got {value!r}")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()


def issue(key: bytes, recipient: str, device: str | None, expires_at: float) -> str:
    """A token for `recipient` (and only `device`, unless None) valid until
    `expires_at`."""
    check_name("recipient", recipient)
    if device is not None:
        check_name("device", device)
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise ValueError(f"expires_at must be epoch seconds, got {expires_at!r}")
    if not math.isfinite(expires_at):
        raise ValueError(f"expires_at must be finite, got {expires_at!r}")
    payload = json.dumps(
        {"r": recipient, "d": device, "e": math.ceil(expires_at)},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    signed = f"{_VERSION}.{_b64(payload)}"
    token = f"{signed}.{_b64(_mac(key, signed))}"
    if len(token) > MAX_TOKEN_CHARS:  # not reachable with names within MAX_NAME_BYTES
        raise ValueError(f"the token would be {len(token)} characters, over {MAX_TOKEN_CHARS}")
    return token


def verify(key: bytes, token: object, now: float) -> Grant:
    """The grant of a token signed with `key` and not expired at `now`, or
    `InvalidToken` saying what is wrong with it (never which part of a MAC matched)."""
    if not isinstance(token, str):
        raise InvalidToken("the token must be a string")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"the token is over {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _VERSION:
        raise InvalidToken("the token is not a surelay push token (v1.<payload>.<mac>)")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        given = _unb64(parts[2])
        expected = _mac(key, signed)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidToken("the token's signature is not valid") from None
    # only the canonical encoding: no two strings are the same token
    if not hmac.compare_digest(given, expected) or _b64(given) != parts[2]:
        raise InvalidToken("the token's signature is not valid")
    try:  # signed by us: well formed unless the secret leaked or the format changed
        payload = _unb64(parts[1])
        if _b64(payload) != parts[1]:
            raise ValueError("not canonical")
        fields = json.loads(payload)
        recipient, device, expires_at = fields["r"], fields["d"], fields["e"]
        check_name("recipient", recipient)
        if device is not None:
            check_name("device", device)
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise ValueError("expiry")
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("the token's payload is not valid") from None
    if expires_at <= now:
        raise InvalidToken("the token has expired")
    return Grant(recipient, device, float(expires_at))
