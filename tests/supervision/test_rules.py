"""The pure OTP rules, as properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surelay.supervision._rules import (
    backoff_delay,
    record_restart,
    restart_group,
    should_restart,
)

from .workers import RESTART_TYPES


@pytest.mark.parametrize(("restart", "kind", "expected"), RESTART_TYPES)
def test_should_restart_follows_otp(restart: str, kind: str, expected: bool) -> None:
    assert should_restart(restart, kind) is expected  # type: ignore[arg-type]


@given(
    gaps=st.lists(st.floats(0, 20, allow_nan=False), max_size=30),
    intensity=st.integers(0, 5),
    period=st.floats(0.1, 15, allow_nan=False),
)
def test_window_gives_up_exactly_when_more_than_intensity_fall_in_period(
    gaps: list[float], intensity: int, period: float
) -> None:
    now, history, times = 0.0, (), []
    for gap in gaps:
        now += gap
        times.append(now)
        history, exceeded = record_restart(history, now, intensity, period)
        recent = [t for t in times if t >= now - period]
        assert exceeded == (len(recent) > intensity)
        assert list(history) == recent
        if exceeded:
            break


@given(intensity=st.integers(0, 5), period=st.floats(0.1, 10))
def test_restarts_spaced_beyond_the_period_never_exceed(intensity: int, period: float) -> None:
    history: tuple[float, ...] = ()
    for n in range(50):
        history, exceeded = record_restart(history, n * (period * 1.01 + 0.01), intensity, period)
        assert exceeded == (intensity == 0)
        if exceeded:
            break


@given(
    order=st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=8, unique=True),
    data=st.data(),
)
def test_restart_groups(order: list[str], data: st.DataObject) -> None:
    crashed = data.draw(st.sampled_from(order))
    assert restart_group("one_for_one", order, crashed) == [crashed]
    assert restart_group("one_for_all", order, crashed) == order
    rest = restart_group("rest_for_one", order, crashed)
    assert rest[0] == crashed
    assert rest == order[order.index(crashed) :]


@given(
    n=st.integers(1, 2000),
    low=st.floats(0.001, 10),
    span=st.floats(1, 100),
    u=st.floats(0, 1, exclude_max=True),
)
def test_backoff_delay_bounds(n: int, low: float, span: float, u: float) -> None:
    high = low * span
    base = min(high, low * 2 ** min(n - 1, 1000))
    delay = backoff_delay(n, low, high, u)
    assert base <= delay <= base * 1.2 + 1e-12
    assert low <= delay <= high * 1.2 + 1e-9


def test_backoff_delay_rejects_n_below_one() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        backoff_delay(0, 1, 2, 0.5)
