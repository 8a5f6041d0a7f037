"""Retry delays: the formula, immediate retries, and each jitter kind's bounds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.config import RetryPolicy
from surelay.policy.retry import can_retry, honoured_retry_after, retry_delay

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


# -- Retry-After -------------------------------------------------------------------------

retry_afters = st.one_of(
    st.none(),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.booleans(),
)


@given(cap=st.floats(1e-3, 1e9), retry_after=retry_afters)
def test_a_retry_after_is_honoured_up_to_max_retry_after(cap: float, retry_after: object) -> None:
    honoured = honoured_retry_after(retry_after, RetryPolicy(max_retry_after=cap))
    if (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, int | float)
        or (isinstance(retry_after, float) and math.isnan(retry_after))
    ):  # None, text, booleans and NaN
        assert honoured is None
        return
    assert honoured is not None
    assert isinstance(honoured, float)
    assert 0.0 <= honoured <= cap
    assert honoured == min(max(float(max(min(retry_after, 10**10), -1)), 0.0), cap)


def test_huge_retry_afters_are_capped_not_overflowed() -> None:
    policy = RetryPolicy()
    for huge in (10**6, 10**14, 10**5000, 1e300, math.inf):
        assert honoured_retry_after(huge, policy) == 3600.0
    assert honoured_retry_after(-(10**5000), policy) == 0.0
    assert honoured_retry_after(-math.inf, policy) == 0.0
    assert honoured_retry_after(120, policy) == 120.0


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "60"])
def test_max_retry_after_must_be_finite_and_positive(bad: object) -> None:
    with pytest.raises(
        ValueError, match=r"RetryPolicy\.max_retry_after must be a finite number > 0"
    ):
        RetryPolicy(max_retry_after=bad)  # type: ignore[arg-type]
