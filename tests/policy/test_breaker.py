"""The circuit breaker's transitions, and properties over random outcome sequences."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from surelay.config import BreakerPolicy
from surelay.policy.breaker import BreakerState, allow, record, retry_in

POLICY = BreakerPolicy(window=4, failure_ratio=0.5, min_calls=4, open_for=30.0, half_open_calls=2)


def run(outcomes: list[bool], state: BreakerState | None = None, now: float = 0.0) -> BreakerState:
    s = state or BreakerState()
    for failed in outcomes:
        ok, ticket, s = allow(s, POLICY, now)
        assert ok
        s = record(s, POLICY, now, failed, ticket)
    return s


def test_opens_at_the_failure_ratio_once_min_calls_were_made() -> None:
    assert run([True, True, True]).state == "closed"  # 3 < min_calls
    assert run([True, True, False, False]).state == "open"  # 2 of 4 failed: 0.5
    assert run([True, False, False, False]).state == "closed"


def test_open_blocks_for_open_for_then_half_open_probes_decide() -> None:
    opened = run([True] * 4, now=100.0)
    assert allow(opened, POLICY, 129.9)[0] is False
    assert retry_in(opened, POLICY, 110.0) == 20.0
    ok, ticket, probing = allow(opened, POLICY, 130.0)
    assert ok and probing.state == "half_open" and ticket == 100.0
    ok, ticket, probing = allow(probing, POLICY, 130.0)
    assert ok
    assert allow(probing, POLICY, 130.0)[0] is False  # both probes are out
    after_one = record(probing, POLICY, 131.0, failed=False, ticket=ticket)
    assert after_one.state == "half_open"
    assert record(after_one, POLICY, 131.0, failed=False, ticket=ticket) == BreakerState()
    reopened = record(after_one, POLICY, 132.0, failed=True, ticket=ticket)
    assert reopened.state == "open" and reopened.opened_at == 132.0


def test_a_late_outcome_while_open_changes_nothing() -> None:
    opened = run([True] * 4)
    assert record(opened, POLICY, 1.0, failed=False) == opened


@given(st.lists(st.booleans(), max_size=60))
def test_closed_breaker_opens_exactly_when_the_window_says_so(outcomes: list[bool]) -> None:
    s = BreakerState()
    window: list[bool] = []
    for failed in outcomes:
        ok, ticket, s = allow(s, POLICY, 0.0)
        if not ok:
            return  # opened: covered below
        s = record(s, POLICY, 0.0, failed, ticket)
        window = [*window, failed][-POLICY.window :]
        streak = len(window) - next(
            (i + 1 for i in reversed(range(len(window))) if not window[i]), 0
        )
        should_open = streak >= POLICY.min_calls or (
            len(window) >= POLICY.min_calls and sum(window) / len(window) >= 0.5
        )
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
        ok, ticket, s = allow(s, POLICY, now)
        if ok and s.state == "half_open":
            passed_while_half_open = s.probes
            assert s.probes <= POLICY.half_open_calls
        if ok:
            s = record(s, POLICY, now, failed, ticket)
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
    streak = 0
    for failed in outcomes:
        state = record(state, policy, 0.0, failed)
        window = [*window, failed][-8:]
        streak = streak + 1 if failed else 0
        tripped = streak >= 6 or (len(window) >= 6 and sum(window) / len(window) >= 0.5)
        if tripped:
            assert state.state == "open"
            break
        assert state.state == "closed" and state.failures == sum(window)
        assert list(state.outcomes) == window


def test_outcomes_of_calls_from_before_the_breaker_opened_decide_nothing() -> None:
    """Calls run concurrently: a call allowed while closed that ends during half-open is
    not a probe, and a probe of an earlier half-open period is not one of this one's."""
    opened = run([True] * 4, now=0.0)
    _, first_probe, probing = allow(opened, POLICY, 30.0)
    assert record(probing, POLICY, 30.5, failed=False) == probing  # a straggler from closed
    assert record(probing, POLICY, 30.5, failed=True) == probing
    reopened = record(probing, POLICY, 31.0, failed=True, ticket=first_probe)
    _, second_probe, again = allow(reopened, POLICY, 61.0)
    assert second_probe == 31.0
    assert record(again, POLICY, 61.5, failed=True, ticket=first_probe) == again
    closed = record(
        record(again, POLICY, 62.0, failed=False, ticket=second_probe),
        POLICY,
        62.0,
        failed=False,
        ticket=second_probe,
    )
    assert closed == BreakerState()
    assert record(closed, POLICY, 63.0, failed=True, ticket=first_probe) == closed


def _drive(policy: BreakerPolicy, failures: list[bool]) -> tuple[int, int | None]:
    """Feed outcomes one call at a time (each allowed first); returns how many calls
    were refused and the index of the call that opened the breaker (None if it never
    opened)."""
    state = BreakerState()
    opened_at_call = None
    refused = 0
    for i, failed in enumerate(failures):
        ok, ticket, state = allow(state, policy, float(i))
        if not ok:
            refused += 1
            continue
        state = record(state, policy, float(i), failed, ticket)
        if state.state == "open" and opened_at_call is None:
            opened_at_call = i
    return refused, opened_at_call


def test_the_default_breaker_rides_out_ten_percent_random_failures() -> None:
    """A real downstream with 10% random 503s must never open the default breaker:
    20,000 calls, several seeds."""
    policy = BreakerPolicy()
    for seed in range(5):
        rng = random.Random(seed)
        refused, opened = _drive(policy, [rng.random() < 0.10 for _ in range(20_000)])
        assert (refused, opened) == (0, None), f"seed {seed}"


def test_the_default_breaker_opens_within_min_calls_of_a_full_outage() -> None:
    policy = BreakerPolicy()
    assert (policy.window, policy.min_calls) == (100, 20)
    _, opened = _drive(policy, [True] * 200)
    assert opened is not None and opened + 1 <= policy.min_calls
    # after a long healthy run too: min_calls failures in a row open it
    _, opened = _drive(policy, [False] * 1000 + [True] * 200)
    assert opened is not None and opened - 1000 + 1 <= policy.min_calls


def test_probes_that_never_report_make_way_for_new_ones() -> None:
    """A probe whose outcome never comes (its call was lost) cannot keep the breaker
    half-open for ever: after 2 x open_for a new half-open period lets probes through,
    and the lost probes' late outcomes decide nothing."""
    opened = run([True] * 4, now=0.0)
    _, first, probing = allow(opened, POLICY, 30.0)
    _, _, probing = allow(probing, POLICY, 30.0)
    assert allow(probing, POLICY, 89.9)[0] is False  # both probes out, not yet given up
    ok, second, renewed = allow(probing, POLICY, 90.0)
    assert ok and renewed.state == "half_open" and second == 90.0 != first
    assert record(renewed, POLICY, 91.0, failed=True, ticket=first) == renewed
