"""PushConfig: every bad value is refused naming its field; the secret never shows."""

from __future__ import annotations

import pytest

from surelay import Rate
from surelay.push import PushConfig

SECRET = "s" * 32


def test_defaults_are_the_documented_ones() -> None:
    config = PushConfig(SECRET)
    assert (config.retention, config.max_pending, config.rate_per_recipient) == (
        7 * 86400,
        1000,
        None,
    )
    assert (config.window, config.ack_timeout, config.max_deliveries, config.heartbeat) == (
        64,
        10.0,
        10,
        25.0,
    )
    assert config.key == SECRET.encode()
    assert PushConfig(b"\x00" * 16).key == b"\x00" * 16


def test_the_secret_is_never_shown() -> None:
    config = PushConfig("top-secret-value-0123456789")
    assert "top-secret" not in repr(config)
    assert "<27 bytes>" in repr(config)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"secret": 5}, "secret must be str or bytes"),
        ({"secret": "short"}, "secret must be at least 16 bytes"),
        ({"retention": 0}, "retention must be finite seconds"),
        ({"retention": float("inf")}, "retention must be finite seconds"),
        ({"retention": True}, "retention must be finite seconds"),
        ({"max_pending": 0}, "max_pending must be an int >= 1"),
        ({"max_pending": 1.5}, "max_pending must be an int >= 1"),
        ({"rate_per_recipient": (100, 60)}, "rate_per_recipient must be a Rate"),
        ({"rate_per_recipient": Rate(1, 1.0, by="t")}, "rate_per_recipient is per recipient"),
        ({"window": 0}, "window must be an int >= 1"),
        ({"ack_timeout": -1}, "ack_timeout must be finite seconds"),
        ({"max_deliveries": False}, "max_deliveries must be an int >= 1"),
        ({"heartbeat": float("nan")}, "heartbeat must be finite seconds"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(fields: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"secret": SECRET, **fields}
    with pytest.raises(ValueError, match=f"PushConfig.{message}"):
        PushConfig(**settings)  # type: ignore[arg-type]


def test_a_rate_per_recipient_is_kept() -> None:
    assert PushConfig(SECRET, rate_per_recipient=Rate(100, 60.0)).rate_per_recipient == Rate(
        100, 60.0
    )
