"""Connection tokens: what is issued verifies to the same grant until it expires; any
change to a token, or another secret, is refused; hostile names never get in."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.push.tokens import (
    MAX_NAME_BYTES,
    MAX_TOKEN_CHARS,
    Grant,
    InvalidToken,
    check_name,
    issue,
    verify,
)

KEY = b"k" * 32
names = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=64
)


@given(recipient=names, device=st.none() | names, expires=st.integers(1, 2**40))
def test_an_issued_token_verifies_to_its_grant_until_it_expires(
    recipient: str, device: str | None, expires: int
) -> None:
    token = issue(KEY, recipient, device, expires)
    assert verify(KEY, token, now=expires - 0.5) == Grant(recipient, device, float(expires))
    with pytest.raises(InvalidToken, match="expired"):
        verify(KEY, token, now=expires)


@given(recipient=names, position=st.integers(0, 10_000), char=st.sampled_from("AZaz09-_.="))
def test_a_token_changed_anywhere_is_refused(recipient: str, position: int, char: str) -> None:
    token = issue(KEY, recipient, "phone", 10**9)
    at = position % len(token)
    forged = token[:at] + char + token[at + 1 :]
    if forged == token:
        return
    with pytest.raises(InvalidToken):  # (also one that decodes to the same bytes)
        verify(KEY, forged, now=0)


def test_another_secret_or_a_forged_payload_is_refused() -> None:
    token = issue(KEY, "user-42", "ios", 10**9)
    with pytest.raises(InvalidToken, match="signature"):
        verify(b"x" * 32, token, now=0)
    version, _, mac = token.split(".")
    payload = base64.urlsafe_b64encode(b'{"r":"admin","d":null,"e":9999999999}').decode()
    with pytest.raises(InvalidToken, match="signature"):
        verify(KEY, f"{version}.{payload.rstrip('=')}.{mac}", now=0)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "must be a string"),
        (b"v1.a.b", "must be a string"),
        ("x" * (MAX_TOKEN_CHARS + 1), "over"),
        ("v2.a.b", "not a surelay push token"),
        ("v1.a", "not a surelay push token"),
        ("v1.a.b.c", "not a surelay push token"),
        ("v1.a.!!", "signature"),
        ("v1.a.é", "signature"),
    ],
)
def test_a_malformed_token_is_refused_saying_why(token: object, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        verify(KEY, token, now=0)


def test_a_signed_payload_of_the_wrong_shape_is_refused() -> None:
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    for payload in (
        b"[]",
        b'{"r":"u","d":null}',
        b'{"r":"","d":null,"e":5}',
        b'{"r":"u","d":1,"e":5}',
        b'{"r":"u","d":null,"e":true}',
    ):
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        signed = f"v1.{body}"
        mac = hmac.new(KEY, signed.encode(), hashlib.sha256).digest()
        token = f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        with pytest.raises(InvalidToken, match="payload"):
            verify(KEY, token, now=0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "non-empty"),
        (7, "non-empty str"),
        ("a\x1b[31m", "control characters"),
        ("a\nb", "control characters"),
        ("a\u202eb", "control characters"),
        ("\ud800", "valid Unicode"),
        ("é" * (MAX_NAME_BYTES // 2 + 1), "at most"),
    ],
)
def test_a_hostile_name_is_refused_naming_the_field(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"recipient must .*{message}|{message}"):
        check_name("recipient", value)
    with pytest.raises(ValueError, match=message):
        issue(KEY, "user", value, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("expires", [float("inf"), float("nan"), True, "soon"])
def test_an_expiry_must_be_finite_epoch_seconds(expires: object) -> None:
    with pytest.raises(ValueError, match="expires_at must be"):
        issue(KEY, "user", None, expires)  # type: ignore[arg-type]
