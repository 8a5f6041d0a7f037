"""Standard Webhooks signing, checked against the `standardwebhooks` reference library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from surelay.transports.webhooks import parse_secret, sign, signature_headers

KEY = b"surelay test key, 32 bytes long!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()

# The example of the Standard Webhooks spec's reference tests.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_the_spec_example() -> None:
    key = parse_secret(SPEC_SECRET)
    assert sign(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signature_headers_verify_with_the_reference_library() -> None:
    body = b'{"event": "paid", "n": 1}'
    headers = signature_headers(parse_secret(SECRET), "idem-42", body)
    assert headers["webhook-id"] == "idem-42"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) <= 2
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == {"event": "paid", "n": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"1", b"2"), headers)
    other = "whsec_" + base64.b64encode(b"another key").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_signature_headers_take_a_given_timestamp() -> None:
    headers = signature_headers(KEY, "m", b"x", timestamp=1_700_000_000)
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == sign(KEY, "m", 1_700_000_000, b"x")


@given(
    key=st.binary(min_size=1, max_size=64),
    msg_id=st.text(min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=4_000_000_000),
    body=st.text(max_size=200),
)
def test_sign_agrees_with_the_reference_library(
    key: bytes, msg_id: str, timestamp: int, body: str
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    expected = Webhook(secret).sign(msg_id, when, body)
    assert sign(parse_secret(secret), msg_id, timestamp, body.encode()) == expected


@given(key=st.binary(min_size=1, max_size=64), body=st.text(max_size=200), flip=st.data())
def test_round_trip_and_tampering(key: bytes, body: str, flip: st.DataObject) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    data = body.encode()
    headers = signature_headers(parse_secret(secret), "msg_1", data)
    Webhook(secret).verify(data, headers, json_parse=False)
    tampered = b"{" + data if flip.draw(st.booleans()) else data + b"!"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers, json_parse=False)


@given(key=st.binary(min_size=1, max_size=64))
def test_parse_secret_round_trips_with_or_without_padding(key: bytes) -> None:
    encoded = base64.b64encode(key).decode()
    assert parse_secret("whsec_" + encoded) == key
    assert parse_secret("whsec_" + encoded.rstrip("=")) == key


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (base64.b64encode(KEY).decode(), "must start with 'whsec_'"),
        ("WHSEC_" + base64.b64encode(KEY).decode(), "must start with 'whsec_'"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_abcde", "not valid base64"),
        ("whsec_é", "not valid base64"),
        ("whsec_", "empty key"),
        ("whsec_==", "not valid base64"),
    ],
)
def test_bad_secrets_are_refused_clearly(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_secret(secret)
    assert "signing_secret" in str(info.value)
    if len(secret) > 10:
        assert secret[6:] not in str(info.value)  # the secret is never echoed


def test_a_secret_must_be_text() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_secret(KEY)  # type: ignore[arg-type]
