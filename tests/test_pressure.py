"""The pressure rules (levels with hysteresis, admission) and the token buckets."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay import PressurePolicy, Priority
from surelay.pressure import (
    HIGH_ALLOWANCE,
    LEVELS,
    THROTTLE_MAX,
    admission,
    hard_bound,
    next_level,
    retry_after,
)
from surelay.ratelimit import KeyRates, TokenBucket

POLICY = PressurePolicy()


@st.composite
def policies(draw: st.DrawFn) -> PressurePolicy:
    recover, elevated, critical = sorted(
        draw(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3, unique=True))
    )
    return PressurePolicy(
        recover_at=recover, elevated_at=elevated, critical_at=critical, capacity=1000
    )


@given(policies(), st.sampled_from(LEVELS), st.data())
def test_hovering_between_recover_and_elevated_never_flaps(
    policy: PressurePolicy, start: str, data: st.DataObject
) -> None:
    band = st.floats(policy.recover_at, policy.elevated_at, exclude_max=True)
    ratios = data.draw(st.lists(band, min_size=1, max_size=50))
    levels = [start]
    for ratio in ratios:
        levels.append(next_level(levels[-1], ratio, policy))
    changes = sum(a != b for a, b in itertools.pairwise(levels))
    if start == "critical":
        assert levels[1:] == ["elevated"] * len(ratios)  # steps down once, then holds
    else:
        assert changes == 0


@given(policies(), st.sampled_from(LEVELS), st.floats(0, 2))
def test_thresholds(policy: PressurePolicy, current: str, ratio: float) -> None:
    level = next_level(current, ratio, policy)
    if ratio >= policy.critical_at:
        assert level == "critical"
    elif ratio < policy.recover_at:
        assert level == "normal"
    elif current == "normal":
        assert level == ("elevated" if ratio >= policy.elevated_at else "normal")
    else:
        assert level in ("elevated", "critical")


@given(policies(), st.sampled_from(LEVELS), st.floats(0, 2), st.floats(0, 2))
def test_a_higher_ratio_never_gives_a_lower_level(
    policy: PressurePolicy, current: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    assert LEVELS.index(next_level(current, low, policy)) <= LEVELS.index(
        next_level(current, high, policy)
    )


def test_admission_by_level_and_priority() -> None:
    table = {
        (level, p): admission(level, p, ratio, POLICY)
        for level, ratio in (("normal", 0.1), ("elevated", 0.8), ("critical", 0.95))
        for p in Priority
    }
    assert all(table["normal", p].admit and not table["normal", p].delay for p in Priority)
    assert table["elevated", Priority.HIGH].delay == table["elevated", Priority.NORMAL].delay == 0
    assert 0 < table["elevated", Priority.LOW].delay <= THROTTLE_MAX
    assert not table["critical", Priority.LOW].admit
    assert table["critical", Priority.LOW].reason == "critical"
    assert table["critical", Priority.NORMAL].admit and table["critical", Priority.HIGH].admit
    shed_normal = PressurePolicy(shed=(Priority.LOW, Priority.NORMAL))
    assert not admission("critical", Priority.NORMAL, 0.95, shed_normal).admit
    assert hard_bound(Priority.NORMAL, POLICY) == hard_bound(Priority.LOW, POLICY) == 10_000
    assert hard_bound(Priority.HIGH, POLICY) == 10_000 * (1 + HIGH_ALLOWANCE)


@given(st.integers(0, 20_000), st.floats(0, 1e6), st.floats(0, 10))
def test_retry_after_is_bounded(in_flight: int, drain: float, measured_for: float) -> None:
    wait = retry_after(in_flight, POLICY, drain, measured_for)
    assert 0.05 <= wait <= 60.0
    if measured_for < 1.0:  # a rate still ramping up never makes a sender wait long
        assert wait <= 1.0


def test_retry_after_trusts_a_settled_drain_rate() -> None:
    # 4,000 over recover_at, draining 100/s: 40 s once measured for a second, 1 s before
    assert retry_after(10_000, POLICY, 100.0, measured_for=2.0) == 40.0
    assert retry_after(10_000, POLICY, 100.0, measured_for=0.3) == 1.0


@given(
    st.floats(0.1, 1000),
    st.integers(1, 50),
    st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_a_bucket_never_gives_more_than_burst_plus_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            taken += 1
    assert taken <= burst + rate * now + 1e-6


@given(st.floats(0.1, 100), st.integers(1, 10), st.floats(0, 10))
def test_waiting_the_answer_out_is_enough(rate: float, burst: int, start: float) -> None:
    bucket = TokenBucket(rate, burst, now=start)
    for _ in range(burst):
        assert bucket.take(start) == 0.0
    wait = bucket.take(start)
    assert wait > 0
    assert bucket.take(start + wait) == 0.0  # honest: exactly the wait, no more


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0, 1, now=0.0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1, math.nan, now=0.0)


def test_key_rates_are_all_or_nothing_and_forget_idle_keys() -> None:
    rates = KeyRates(2, 1.0, max_keys=100)
    assert rates.take(["a", "a"], now=0.0) == 0.0
    assert rates.take(["b", "a"], now=0.0) == pytest.approx(0.5)  # a is empty: b not taken
    assert rates.take(["b", "b"], now=0.0) == 0.0
    assert rates.take(["c"] * 3, now=0.0) == math.inf  # more than a burst at once
    for i in range(1000):
        rates.take([f"k{i}"], now=10.0 + i)  # each idle again a second later
    assert len(rates) <= 100
