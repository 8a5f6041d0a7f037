"""Retry delays: the formula, immediate retries, and each jitter kind's bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.config import RetryPolicy
from surelay.policy.retry import can_retry, retry_delay

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 20),
    base_delay=st.floats(0, 10),
    max_delay=st.floats(10, 1000),
    multiplier=st.floats(1, 5),
    jitter=st.sampled_from(["none", "full", "equal", "decorrelated"]),
    immediate_retries=st.integers(0, 3),
)


def plain(policy: RetryPolicy, n: int) -> float:
    if policy.base_delay == 0:
        return 0.0
    try:
        return min(policy.base_delay * policy.multiplier ** (n - 1), policy.max_delay)
    except OverflowError:
        return policy.max_delay


def test_the_contract_formula_without_jitter() -> None:
    policy = RetryPolicy(base_delay=5, max_delay=300, multiplier=2, jitter="none")
    rng = random.Random(0)
    assert [retry_delay(policy, r, rng) for r in range(1, 9)] == [
        5,
        10,
        20,
        40,
        80,
        160,
        300,
        300,
    ]


def test_immediate_retries_come_first() -> None:
    policy = RetryPolicy(base_delay=1, jitter="none", immediate_retries=2)
    rng = random.Random(0)
    assert [retry_delay(policy, r, rng) for r in range(1, 5)] == [0, 0, 1, 2]


@given(policy=policies, retry=st.integers(1, 3000), seed=st.integers(0, 2**32))
def test_each_jitter_stays_within_its_bounds(policy: RetryPolicy, retry: int, seed: int) -> None:
    delay = retry_delay(policy, retry, random.Random(seed))
    n = retry - policy.immediate_retries
    if n < 1:
        assert delay == 0
        return
    cap = plain(policy, n)
    assert 0 <= delay <= policy.max_delay
    if policy.jitter == "none":
        assert delay == pytest.approx(cap)
    elif policy.jitter == "full":
        assert delay <= cap + 1e-9
    elif policy.jitter == "equal":
        assert cap / 2 - 1e-9 <= delay <= cap + 1e-9
    else:
        assert policy.base_delay - 1e-9 <= delay or delay == policy.max_delay


@given(policy=policies, previous=st.floats(0, 2000), seed=st.integers(0, 2**32))
def test_decorrelated_grows_from_the_previous_delay(
    policy: RetryPolicy, previous: float, seed: int
) -> None:
    decorrelated = RetryPolicy(
        base_delay=policy.base_delay, max_delay=policy.max_delay, jitter="decorrelated"
    )
    delay = retry_delay(decorrelated, 2, random.Random(seed), previous)
    upper = min(decorrelated.max_delay, 3 * max(previous, decorrelated.base_delay))
    assert min(decorrelated.base_delay, upper) - 1e-9 <= delay <= upper + 1e-9


def test_huge_retry_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=60, multiplier=5, jitter="none")
    assert retry_delay(policy, 10**6, random.Random(0)) == 60


@given(policy=policies, made=st.integers(0, 30))
def test_can_retry_counts_every_attempt(policy: RetryPolicy, made: int) -> None:
    assert can_retry(policy, made) == (made < policy.max_attempts)


def test_retry_number_starts_at_one() -> None:
    with pytest.raises(ValueError, match="retry must be >= 1"):
        retry_delay(RetryPolicy(), 0, random.Random(0))
