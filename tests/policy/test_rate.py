"""GCRA turns: never more calls than the rate (plus the burst) in any span of time, and
no turn reserved past the horizon."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surelay.policy.rate import pause, take_turn


@given(
    count=st.integers(1, 50),
    per=st.floats(0.1, 10),
    burst=st.integers(1, 10),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_no_span_holds_more_calls_than_the_rate_allows(
    count: int, per: float, burst: int, gaps: list[float]
) -> None:
    interval = per / count
    horizon = max(1.0, 16 * interval)
    tat, now = 0.0, 100.0
    calls: list[float] = []
    waiting: list[float] = []  # asks that come back later
    for gap in gaps:
        now += gap
        asks = [now, *sorted(t for t in waiting if t <= now)]
        waiting = [t for t in waiting if t > now]
        for at in asks:
            turn = take_turn(
                tat, at, interval=interval, tolerance=(burst - 1) * interval, horizon=horizon
            )
            assert turn.wait >= 0
            if turn.reserved:
                assert turn.wait <= horizon
                calls.append(at + turn.wait)
            else:
                assert turn.tat == tat  # nothing reserved
                waiting.append(at + turn.wait)
            tat = turn.tat
    calls.sort()
    for i, start in enumerate(calls):
        within = [c for c in calls[i:] if c < start + per]
        assert len(within) <= count + burst, (len(within), count, burst)


def test_a_call_after_an_idle_spell_goes_at_once_and_the_next_waits_one_interval() -> None:
    first = take_turn(0.0, 100.0, interval=0.5, tolerance=0.0, horizon=1.0)
    assert (first.wait, first.reserved, first.tat) == (0.0, True, 100.5)
    second = take_turn(first.tat, 100.0, interval=0.5, tolerance=0.0, horizon=1.0)
    assert (second.wait, second.reserved, second.tat) == (0.5, True, 101.0)
    far = take_turn(110.0, 100.0, interval=0.5, tolerance=0.0, horizon=1.0)
    assert (far.wait, far.reserved, far.tat) == (9.0, False, 110.0)  # back when within reach


def test_a_pause_moves_the_next_turn_and_never_back() -> None:
    assert pause(100.0, 130.0) == 130.0
    assert pause(140.0, 130.0) == 140.0
