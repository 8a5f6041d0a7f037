"""Configuration refuses bad values by field name and keeps the documented defaults."""

from __future__ import annotations

from typing import Any

import pytest

from surelay.config import BreakerPolicy, Guarantee, PressurePolicy, RetryPolicy, RuntimeConfig
from surelay.envelope import Priority


def test_defaults_match_the_contract() -> None:
    assert RetryPolicy() == RetryPolicy(5, 5.0, 300.0, 2.0, "full", 0)
    assert BreakerPolicy() == BreakerPolicy(100, 0.5, 20, 30.0, 1)
    p = PressurePolicy()
    assert (p.elevated_at, p.critical_at, p.recover_at, p.capacity) == (0.7, 0.9, 0.6, 10_000)
    assert p.shed == (Priority.LOW,) and p.rate_per_key is None
    c = RuntimeConfig()
    assert c.guarantee is Guarantee.AT_LEAST_ONCE
    assert (c.partitions, c.replay_partitions, c.dedup_ttl) == (4, 4, 86_400.0)
    assert (c.max_payload_bytes, c.max_batch, c.map_size) == (1_048_576, 1000, 1 << 30)
    assert c.dead_letter_ttl is None and c.message_ttl is None
    assert (c.concurrency, dict(c.concurrency_per_transport), c.ack_timeout) == (64, {}, 30.0)
    assert RuntimeConfig(concurrency_per_transport={"sms": 8}).concurrency_for("sms") == 8
    assert RuntimeConfig(concurrency=3).concurrency_for("sms") == 3


@pytest.mark.parametrize(
    ("cls", "fields", "name"),
    [
        (RetryPolicy, {"max_attempts": 0}, "max_attempts"),
        (RetryPolicy, {"base_delay": -1}, "base_delay"),
        (RetryPolicy, {"max_delay": 1, "base_delay": 2}, "max_delay"),
        (RetryPolicy, {"multiplier": 0.5}, "multiplier"),
        (RetryPolicy, {"jitter": "some"}, "jitter"),
        (RetryPolicy, {"immediate_retries": -1}, "immediate_retries"),
        (BreakerPolicy, {"window": 0}, "window"),
        (BreakerPolicy, {"failure_ratio": 0}, "failure_ratio"),
        (BreakerPolicy, {"min_calls": 101}, "min_calls"),
        (BreakerPolicy, {"open_for": 0}, "open_for"),
        (BreakerPolicy, {"half_open_calls": 0}, "half_open_calls"),
        (PressurePolicy, {"recover_at": 0.8}, "recover_at"),
        (PressurePolicy, {"critical_at": 1.5}, "critical_at"),
        (PressurePolicy, {"capacity": 0}, "capacity"),
        (PressurePolicy, {"shed": ("low",)}, "shed"),
        (PressurePolicy, {"rate_per_key": (0, 1.0)}, "rate_per_key"),
        (RuntimeConfig, {"partitions": 0}, "partitions"),
        (RuntimeConfig, {"guarantee": "at_least_once"}, "guarantee"),
        (RuntimeConfig, {"retry_per_transport": {"sms": 3}}, "retry_per_transport"),
        (RuntimeConfig, {"dedup_ttl": 0}, "dedup_ttl"),
        (RuntimeConfig, {"message_ttl": -5}, "message_ttl"),
        (RuntimeConfig, {"max_batch": 0}, "max_batch"),
        (RuntimeConfig, {"clock": 3}, "clock"),
        (RuntimeConfig, {"concurrency": 0}, "concurrency"),
        (RuntimeConfig, {"concurrency_per_transport": {"sms": 0}}, "concurrency_per_transport"),
        (RuntimeConfig, {"retry_per_type": {"otp": 3}}, "retry_per_type"),
        (RuntimeConfig, {"retry_per_type": {"": RetryPolicy()}}, "retry_per_type keys"),
        (RuntimeConfig, {"ack_timeout_per_type": {"otp": 0}}, "ack_timeout_per_type"),
        (RuntimeConfig, {"ack_timeout_per_type": {7: 1.0}}, "ack_timeout_per_type keys"),
        (RuntimeConfig, {"on_dead_letter": 5}, "on_dead_letter"),
    ],
)
def test_bad_values_name_their_field(cls: type[Any], fields: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cls(**fields)


def test_per_transport_retry_policy() -> None:
    sms = RetryPolicy(max_attempts=2)
    config = RuntimeConfig(retry_per_transport={"sms": sms})
    assert config.retry_for("sms") is sms
    assert config.retry_for("mail") is config.retry


def test_a_types_retry_policy_comes_before_its_transports() -> None:
    sms, otp = RetryPolicy(max_attempts=2), RetryPolicy(max_attempts=7)
    config = RuntimeConfig(retry_per_transport={"sms": sms}, retry_per_type={"otp": otp})
    assert config.retry_for("sms", "otp") is otp
    assert config.retry_for("sms", "other") is sms
    assert config.retry_for("sms") is sms
    assert config.retry_for("mail", "otp") is otp
