"""Standard Webhooks signing (https://www.standardwebhooks.com), as pure functions.

The receiver can check with any Standard Webhooks library that a request came from the
holder of the secret and was not altered: each request carries `webhook-id`,
`webhook-timestamp` (epoch seconds) and `webhook-signature`, which is `v1,` followed by
base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")). A secret is written
`whsec_` + base64 of the key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

__all__ = ["SECRET_PREFIX", "parse_secret", "sign", "signature_headers"]

SECRET_PREFIX = "whsec_"
"""How a Standard Webhooks secret starts; base64 of the key bytes follows."""


def parse_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_...` secret.

    Raises `ValueError` naming what is wrong (without echoing the secret): no `whsec_`
    prefix, not base64 after it, or an empty key. Padding (`=`) may be left off, as
    Standard Webhooks libraries accept."""
    if not isinstance(secret, str):
        raise TypeError(f"signing_secret must be a str, got {type(secret).__name__}")
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(
            "signing_secret must start with 'whsec_' (a Standard Webhooks secret: "
            "'whsec_' followed by the key in base64)"
        )
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"signing_secret is not valid base64 after 'whsec_' ({error})") from None
    if not key:
        raise ValueError("signing_secret holds an empty key: put the key's base64 after 'whsec_'")
    return key


def sign(secret_key_bytes: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64(HMAC-SHA256 of
    `{msg_id}.{timestamp}.{body}` under the key)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key_bytes, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    secret_key_bytes: bytes, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` for one request;
    `timestamp` (epoch seconds) defaults to now."""
    when = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(when),
        "webhook-signature": sign(secret_key_bytes, msg_id, when, body),
    }
