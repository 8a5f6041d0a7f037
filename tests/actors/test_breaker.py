"""The circuit breaker's transitions, and properties over random outcome sequences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surelay.actors.breaker import BreakerState, allow, record, retry_in
from surelay.config import BreakerPolicy

POLICY = BreakerPolicy(window=4, failure_ratio=0.5, min_calls=4, open_for=30.0, half_open_calls=2)


def run(outcomes: list[bool], state: BreakerState | None = None, now: float = 0.0) -> BreakerState:
    s = state or BreakerState()
    for failed in outcomes:
        ok, s = allow(s, POLICY, now)
        assert ok
        s = record(s, POLICY, now, failed)
    return s


def test_opens_at_the_failure_ratio_once_min_calls_were_made() -> None:
    assert run([True, True, True]).state == "closed"  # 3 < min_calls
    assert run([True, True, False, False]).state == "open"  # 2 of 4 failed: 0.5
    assert run([True, False, False, False]).state == "closed"


def test_open_blocks_for_open_for_then_half_open_probes_decide() -> None:
    opened = run([True] * 4, now=100.0)
    assert allow(opened, POLICY, 129.9)[0] is False
    assert retry_in(opened, POLICY, 110.0) == 20.0
    ok, probing = allow(opened, POLICY, 130.0)
    assert ok and probing.state == "half_open"
    ok, probing = allow(probing, POLICY, 130.0)
    assert ok
    assert allow(probing, POLICY, 130.0)[0] is False  # both probes are out
    after_one = record(probing, POLICY, 131.0, failed=False)
    assert after_one.state == "half_open"
    assert record(after_one, POLICY, 131.0, failed=False) == BreakerState()  # closed, fresh
    reopened = record(after_one, POLICY, 132.0, failed=True)
    assert reopened.state == "open" and reopened.opened_at == 132.0


def test_a_late_outcome_while_open_changes_nothing() -> None:
    opened = run([True] * 4)
    assert record(opened, POLICY, 1.0, failed=False) == opened


@given(st.lists(st.booleans(), max_size=60))
def test_closed_breaker_opens_exactly_when_the_window_says_so(outcomes: list[bool]) -> None:
    s = BreakerState()
    window: list[bool] = []
    for failed in outcomes:
        ok, s = allow(s, POLICY, 0.0)
        if not ok:
            return  # opened: covered below
        s = record(s, POLICY, 0.0, failed)
        window = [*window, failed][-POLICY.window :]
        should_open = len(window) >= POLICY.min_calls and sum(window) / len(window) >= 0.5
        assert (s.state == "open") == should_open
        if should_open:
            window = []
        assert len(s.outcomes) <= POLICY.window


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 40)), max_size=80))
def test_half_open_never_lets_more_than_its_probes_through(steps: list[tuple[bool, float]]) -> None:
    s, now, passed_while_half_open = BreakerState(), 0.0, 0
    for failed, gap in steps:
        now += gap
        before = s
        ok, s = allow(s, POLICY, now)
        if ok and s.state == "half_open":
            passed_while_half_open = s.probes
            assert s.probes <= POLICY.half_open_calls
        if ok:
            s = record(s, POLICY, now, failed)
        assert retry_in(s, POLICY, now) >= 0
        assert before.state != "open" or now - before.opened_at < POLICY.open_for or ok
    assert passed_while_half_open <= POLICY.half_open_calls


@given(st.lists(st.booleans(), max_size=40))
def test_closed_state_counts_the_failures_of_its_window(outcomes: list[bool]) -> None:
    """The kept failure count (which lets a run of successes skip the window copy) is
    always the failures in the window, and the state is what the window says."""
    policy = BreakerPolicy(window=8, failure_ratio=0.5, min_calls=6, open_for=30.0)
    state = BreakerState()
    window: list[bool] = []
    for failed in outcomes:
        state = record(state, policy, 0.0, failed)
        window = [*window, failed][-8:]
        tripped = len(window) >= 6 and sum(window) / len(window) >= 0.5
        if tripped:
            assert state.state == "open"
            break
        assert state.state == "closed" and state.failures == sum(window)
        assert list(state.outcomes) == window
