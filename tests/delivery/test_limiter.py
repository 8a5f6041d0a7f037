"""The Limiter over a real rate state: turns per group, reservations, a Retry-After that
moves reserved turns, and a state that fails holding calls instead of failing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from surelay import Envelope, Rate
from surelay.delivery.limiter import ERROR_WAIT, Limiter
from surelay.storage.rate_state import RateState
from tests.helpers import Clock


def envelope(message_id: str, tenant: str = "a") -> Envelope:
    return Envelope(message_id, "t", b"", headers={"Tenant": tenant})


@pytest.fixture
def state(tmp_path: Path) -> RateState:
    return RateState(tmp_path / "rates")


def test_groups_take_their_own_turns_and_reserved_ones_go_at_their_time(
    state: RateState,
) -> None:
    clock = Clock()
    limiter = Limiter({"t": Rate(2, 1.0, by="tenant")}, state, clock)  # (any case)
    plans = limiter.plan([envelope(f"a{i}") for i in range(3)] + [envelope("b0", "b")])
    assert plans == [(0.0, True), (0.5, True), (1.0, True), (0.0, True)]
    assert limiter.ask(envelope("a0")) == (0.0, True)  # the engine takes the turn planned
    assert limiter.ask(envelope("a1")) == (0.5, True)  # not yet
    clock.advance(0.5)
    assert limiter.ask(envelope("a1")) == (0.0, True)
    assert limiter.ask(envelope("other")) == (1.0, True)  # behind a2's turn
    assert limiter.ask(Envelope("x", "unlimited", b"")) == (0.0, True)
    state.close()


def test_a_retry_after_moves_the_groups_reserved_turns_past_it(state: RateState) -> None:
    clock = Clock()
    limiter = Limiter({"t": Rate(10, 1.0)}, state, clock)
    assert [w for w, _ in limiter.plan([envelope(f"m{i}") for i in range(3)])] == [
        0.0,
        pytest.approx(0.1),
        pytest.approx(0.2),
    ]
    limiter.slow(envelope("m0"), 30.0)
    assert limiter.ask(envelope("m2"))[0] == pytest.approx(30.0)  # reserved, but paused
    wait, _ = limiter.ask(envelope("new"))
    assert wait >= 30.0 - 5.0  # a new ask sees the pause in the shared state
    limiter.slow(Envelope("x", "unlimited", b""), 30.0)  # no rate: nothing to pause
    assert limiter.ask(Envelope("x", "unlimited", b"")) == (0.0, True)
    state.close()


def test_a_failing_state_holds_calls_without_failing_them(state: RateState) -> None:
    limiter = Limiter({"t": Rate(10, 1.0)}, state, Clock())
    state.close()  # (as a full disk or map would make it fail)
    assert limiter.ask(envelope("m")) == (ERROR_WAIT, True)
    assert limiter.plan([envelope("n"), envelope("o")]) == [(ERROR_WAIT, True)] * 2
    limiter.slow(envelope("m"), 5.0)  # logged, not raised


def test_idle_groups_are_swept(state: RateState) -> None:
    clock = Clock()
    limiter = Limiter({"t": Rate(10, 1.0, by="tenant")}, state, clock)
    limiter.plan([envelope(f"m{i}", tenant=f"t{i}") for i in range(100)])
    assert state.groups() == 100
    assert state.sweep(clock() + 601) == 100
    assert state.groups() == 0
    state.close()
