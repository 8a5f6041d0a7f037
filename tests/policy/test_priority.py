"""The one priority picker senders and engines share: 6:3:1 per round, LOW never
starved, and no turn wasted on an empty lane."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from surelay.policy.priority import PATTERN, Picker


def test_a_round_with_every_lane_full_serves_six_three_one() -> None:
    picker = Picker()
    full = [[1], [1], [1]]
    served = Counter(picker.pick(full) for _ in range(len(PATTERN) * 5))
    assert served == {0: 30, 1: 15, 2: 5}


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1))
def test_a_pick_is_always_a_lane_with_work(states: list[tuple[bool, bool, bool]]) -> None:
    picker = Picker()
    for state in states:
        lanes = [[1] if has else [] for has in state]
        if not any(state):
            continue
        rank = picker.pick(lanes)
        assert lanes[rank], (state, rank)
        if not lanes[PATTERN[(picker._turn - 1) % len(PATTERN)]]:
            assert rank == state.index(True)  # fell through to the first with work
